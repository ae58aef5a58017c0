// The kvarn dialect: declaration and shared enums.
#ifndef KVARN_DIALECT_BASE_TD
#define KVARN_DIALECT_BASE_TD

include "mlir/IR/OpBase.td"
include "mlir/IR/AttrTypeBase.td"
include "mlir/IR/EnumAttr.td"

def Kvarn_Dialect : Dialect {
  let name = "kvarn";
  let summary = "KVarN quantized KV-cache attention: formats, schedules, ops and tile-level IR";
  let description = [{
    The `kvarn` dialect describes the kernels of KVarN attention (4-bit keys, 2/4-bit values per
    tile after a Hadamard rotation and a variance normalization). Operation-level ops (`append`,
    `flush`, `decode`, `extend`, `dequantize`) work on memrefs of the engine memory model; they
    carry a `#kvarn.format` and a `#kvarn.schedule`. The lowering turns them into tile-level ops
    (`kvarn.tile.*`) inside kernel functions, which map one-to-one onto building blocks of the
    device library.
  }];
  let cppNamespace = "::kvarn::dialect";
  let useDefaultAttributePrinterParser = 1;
  let useDefaultTypePrinterParser = 1;
  let dependentDialects = ["::mlir::scf::SCFDialect", "::mlir::arith::ArithDialect",
                           "::mlir::func::FuncDialect", "::mlir::memref::MemRefDialect"];
}

def Kvarn_OpKind : I32EnumAttr<"OpKind", "the operation a kernel implements", [
    I32EnumAttrCase<"decode", 0>, I32EnumAttrCase<"flush", 1>, I32EnumAttrCase<"append", 2>,
    I32EnumAttrCase<"dequantize", 3>, I32EnumAttrCase<"extend", 4>]> {
  let cppNamespace = "::kvarn::dialect";
  let genSpecializedAttr = 0;
}

#endif // KVARN_DIALECT_BASE_TD
