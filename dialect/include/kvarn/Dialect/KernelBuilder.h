// Builds the verified operation-level module of a KernelSpec and a Schedule.
#pragma once

#include "kvarn/Dialect/KvarnDialect.h"
#include "kvarn/spec.h"

#include "mlir/IR/BuiltinOps.h"
#include "mlir/IR/OwningOpRef.h"

namespace kvarn::dialect {

/// Registers every dialect a kvarn module uses.
void registerKvarnDialects(mlir::DialectRegistry &registry);

/// The kernel's symbol name, e.g. `kvarn_decode_k4v2_g128_d128_q8_f16`.
std::string kernelName(const KernelSpec &spec);

/// Builds `module { func.func @<name>(memrefs...) { kvarn.<op> ...; return } }` with the
/// `kvarn.target` and `kvarn.spec` module attributes, and verifies it. Errors (an illegal
/// schedule for this spec or target) come back as kvarn::Error with the verifier's message.
Expected<mlir::OwningOpRef<mlir::ModuleOp>> buildKernelModule(mlir::MLIRContext &context,
                                                              const KernelSpec &spec,
                                                              const Schedule &schedule);

} // namespace kvarn::dialect
