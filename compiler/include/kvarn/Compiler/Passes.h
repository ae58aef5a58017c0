// kvarn compiler passes (declared in Passes.td).
#pragma once

#include "kvarn/Dialect/KvarnDialect.h"

#include "mlir/Dialect/EmitC/IR/EmitC.h"
#include "mlir/Pass/Pass.h"

namespace kvarn::compiler {

#define GEN_PASS_DECL
#include "kvarn/Compiler/Passes.h.inc"

#define GEN_PASS_REGISTRATION
#include "kvarn/Compiler/Passes.h.inc"


} // namespace kvarn::compiler
