// The kvarn dialect: attributes, types and ops (generated from ODS) plus the C++ helpers.
#pragma once

#include "kvarn/format.h"
#include "kvarn/spec.h"

#include "mlir/Dialect/Arith/IR/Arith.h"
#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/Dialect/MemRef/IR/MemRef.h"
#include "mlir/Dialect/SCF/IR/SCF.h"
#include "mlir/IR/BuiltinAttributes.h"
#include "mlir/IR/BuiltinTypes.h"
#include "mlir/IR/Dialect.h"
#include "mlir/IR/OpDefinition.h"
#include "mlir/Interfaces/SideEffectInterfaces.h"

#include "kvarn/Dialect/KvarnEnums.h.inc"
#include "kvarn/Dialect/KvarnDialect.h.inc"

#define GET_ATTRDEF_CLASSES
#include "kvarn/Dialect/KvarnAttrs.h.inc"
#define GET_TYPEDEF_CLASSES
#include "kvarn/Dialect/KvarnTypes.h.inc"
#define GET_OP_CLASSES
#include "kvarn/Dialect/KvarnOps.h.inc"

namespace kvarn::dialect {

/// Converts between the dialect's and the runtime's op kinds.
::kvarn::OpKind toRuntimeKind(OpKind kind);
OpKind fromRuntimeKind(::kvarn::OpKind kind);

/// The runtime view of a schedule attribute, and back.
::kvarn::Schedule toSchedule(ScheduleAttr attr);
ScheduleAttr fromSchedule(mlir::MLIRContext *context, ::kvarn::OpKind kind,
                          const ::kvarn::Schedule &schedule);

/// Module attribute naming the target architecture, e.g. `kvarn.target = "sm_90a"`.
inline constexpr llvm::StringLiteral kTargetAttrName = "kvarn.target";
/// Module attribute holding the canonical KernelSpec text.
inline constexpr llvm::StringLiteral kSpecAttrName = "kvarn.spec";

} // namespace kvarn::dialect
