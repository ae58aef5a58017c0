# Finds MLIR/LLVM 22 and rewires its imported targets to link statically.
#
# Debian's MLIR exports link the shared libLLVM ("LLVM" target) and the shared zlib/zstd/z3.
# Every kvarn tool must start on a machine with none of those installed, so the shared libLLVM is
# replaced by its static component archives, and zlib/zstd by their static archives.
find_package(MLIR REQUIRED CONFIG
  HINTS /usr/lib/llvm-22/lib/cmake/mlir ${MLIR_DIR})
message(STATUS "kvarn: MLIR from ${MLIR_DIR}, LLVM ${LLVM_PACKAGE_VERSION}")

list(APPEND CMAKE_MODULE_PATH "${MLIR_CMAKE_DIR}" "${LLVM_CMAKE_DIR}")
set(LLVM_RUNTIME_OUTPUT_INTDIR ${CMAKE_BINARY_DIR}/bin)
set(LLVM_LIBRARY_OUTPUT_INTDIR ${CMAKE_BINARY_DIR}/lib)
set(MLIR_BINARY_DIR ${CMAKE_BINARY_DIR})
include(TableGen)
include(AddLLVM)
include(AddMLIR)
include(HandleLLVMOptions)

find_library(KVARN_STATIC_ZLIB NAMES libz.a REQUIRED)
find_library(KVARN_STATIC_ZSTD NAMES libzstd.a REQUIRED)
set(KVARN_LLVM_STATIC_COMPONENTS LLVMRemarks LLVMBitstreamReader LLVMSupport LLVMDemangle)

get_directory_property(_kvarn_imported IMPORTED_TARGETS)
foreach(_target IN LISTS _kvarn_imported)
  get_target_property(_libs ${_target} INTERFACE_LINK_LIBRARIES)
  if(NOT _libs)
    continue()
  endif()
  set(_rewritten)
  foreach(_lib IN LISTS _libs)
    if(_lib STREQUAL "LLVM" OR _lib STREQUAL "MLIR")
      list(APPEND _rewritten ${KVARN_LLVM_STATIC_COMPONENTS})
    elseif(_lib MATCHES "zstd::libzstd_shared")
      list(APPEND _rewritten ${KVARN_STATIC_ZSTD})
    elseif(_lib STREQUAL "ZLIB::ZLIB")
      list(APPEND _rewritten ${KVARN_STATIC_ZLIB})
    elseif(_lib MATCHES "libz3")
      # Only the SMT solver bridge uses z3; nothing in kvarn does.
    else()
      list(APPEND _rewritten ${_lib})
    endif()
  endforeach()
  set_target_properties(${_target} PROPERTIES INTERFACE_LINK_LIBRARIES "${_rewritten}")
endforeach()

include_directories(SYSTEM ${LLVM_INCLUDE_DIRS} ${MLIR_INCLUDE_DIRS})
link_directories(${LLVM_BUILD_LIBRARY_DIR})
separate_arguments(KVARN_LLVM_DEFINITIONS NATIVE_COMMAND "${LLVM_DEFINITIONS}")
add_definitions(${KVARN_LLVM_DEFINITIONS})
