// KernelSpec + Schedule -> verified kvarn module (the compiler's entry point).
#include "kvarn/Dialect/KernelBuilder.h"

#include "mlir/Dialect/EmitC/IR/EmitC.h"
#include "mlir/IR/Builders.h"
#include "mlir/IR/Diagnostics.h"
#include "mlir/IR/Verifier.h"

using namespace mlir;

namespace kvarn::dialect {

void registerKvarnDialects(DialectRegistry &registry) {
  registry.insert<KvarnDialect, func::FuncDialect, arith::ArithDialect, scf::SCFDialect,
                  memref::MemRefDialect, emitc::EmitCDialect>();
}

std::string kernelName(const KernelSpec &spec) {
  const Format &f = spec.format;
  std::string name = std::string("kvarn_") + opKindName(spec.op) + "_k" +
                     std::to_string(f.keyBits) + "v" + std::to_string(f.valueBits) + "_g" +
                     std::to_string(f.tileTokens) + "_d" + std::to_string(f.headDim);
  if (spec.op == kvarn::OpKind::Decode || spec.op == kvarn::OpKind::Extend)
    name += "_q" + std::to_string(spec.queryHeadsPerKvHead);
  name += spec.dtype == DType::F16 ? "_f16" : "_bf16";
  if (f.sinkhornIterations != kDefaultSinkhornIterations)
    name += "_it" + std::to_string(f.sinkhornIterations);
  if (f.alignment == RecordAlignment::Compact)
    name += "_compact";
  return name;
}

Expected<OwningOpRef<ModuleOp>> buildKernelModule(MLIRContext &context, const KernelSpec &spec,
                                                  const Schedule &schedule) {
  // Step 1. Reject what the runtime rules reject, with their messages.
  if (Status s = validateFormat(spec.format); !s)
    return s.error();
  if (Status s = validateSchedule(spec, schedule); !s)
    return s.error();
  context.loadDialect<KvarnDialect, func::FuncDialect, arith::ArithDialect, scf::SCFDialect,
                      memref::MemRefDialect>();
  OpBuilder builder(&context);
  Location loc = NameLoc::get(builder.getStringAttr(spec.str()));
  OwningOpRef<ModuleOp> module = ModuleOp::create(loc);
  (*module)->setAttr(kTargetAttrName, builder.getStringAttr(spec.arch));
  (*module)->setAttr(kSpecAttrName, builder.getStringAttr(spec.str()));

  // Step 2. Memref types of the engine memory model, static where the format fixes a size.
  const int64_t dyn = ShapedType::kDynamic;
  const int64_t d = spec.format.headDim, g = spec.format.tileTokens;
  const int64_t bytes = static_cast<int64_t>(recordLayout(spec.format).tileBytesAligned);
  Type activation = spec.dtype == DType::F16 ? Type(builder.getF16Type()) : builder.getBF16Type();
  Type f16 = builder.getF16Type(), i32 = builder.getI32Type(), i8 = builder.getI8Type();
  auto memref = [](ArrayRef<int64_t> shape, Type element) {
    return MemRefType::get(shape, element);
  };
  MemRefType pool = memref({dyn, g, dyn, d}, f16);
  MemRefType cache = memref({dyn, dyn, bytes}, i8);
  SmallVector<Type> arguments;
  switch (spec.op) {
  case kvarn::OpKind::Decode:
    arguments = {memref({dyn, dyn, d}, activation), cache, pool, pool, memref({dyn}, i32),
                 memref({dyn, dyn}, i32), memref({dyn}, i32), memref({dyn, dyn, d}, activation)};
    break;
  case kvarn::OpKind::Extend:
    arguments = {memref({dyn, dyn, d}, activation), memref({dyn}, i32), cache, pool, pool,
                 memref({dyn}, i32), memref({dyn, dyn}, i32), memref({dyn}, i32),
                 memref({dyn, dyn, d}, activation)};
    break;
  case kvarn::OpKind::Flush:
    arguments = {pool, pool, memref({dyn, 3}, i32), cache};
    break;
  case kvarn::OpKind::Append:
    arguments = {memref({dyn, dyn, d}, activation), memref({dyn, dyn, d}, activation),
                 memref({dyn}, builder.getI64Type()), pool, pool};
    break;
  case kvarn::OpKind::Dequantize:
    arguments = {cache, memref({dyn, 2}, i32), memref({dyn, g, d}, f16), memref({dyn, g, d}, f16)};
    break;
  }

  // Step 3. One function holding the operation-level op.
  builder.setInsertionPointToEnd(module->getBody());
  auto function = func::FuncOp::create(builder, loc, kernelName(spec),
                                       builder.getFunctionType(arguments, {}));
  Block *body = function.addEntryBlock();
  builder.setInsertionPointToStart(body);
  auto a = body->getArguments();
  FormatAttr format = FormatAttr::fromFormat(&context, spec.format);
  ScheduleAttr scheduleAttr = fromSchedule(&context, spec.op, schedule);
  FloatAttr scale = builder.getF32FloatAttr(0.0f);
  IntegerAttr q = builder.getI64IntegerAttr(spec.queryHeadsPerKvHead);
  switch (spec.op) {
  case kvarn::OpKind::Decode:
    DecodeOp::create(builder, loc, a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7], format, q,
                     scale, scheduleAttr);
    break;
  case kvarn::OpKind::Extend:
    ExtendOp::create(builder, loc, a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7], a[8], format,
                     q, scale, scheduleAttr);
    break;
  case kvarn::OpKind::Flush:
    FlushOp::create(builder, loc, a[0], a[1], a[2], a[3], format, scheduleAttr);
    break;
  case kvarn::OpKind::Append:
    AppendOp::create(builder, loc, a[0], a[1], a[2], a[3], a[4], format, scheduleAttr);
    break;
  case kvarn::OpKind::Dequantize:
    DequantizeOp::create(builder, loc, a[0], a[1], a[2], a[3], format, scheduleAttr);
    break;
  }
  func::ReturnOp::create(builder, loc);

  // Step 4. Verify; collect the diagnostics into the error.
  std::string diagnostics;
  {
    ScopedDiagnosticHandler handler(&context, [&](Diagnostic &diagnostic) {
      diagnostics += diagnostic.str();
      return success();
    });
    if (failed(verify(*module)))
      return makeError(ErrorCode::InvalidArgument, "kernel module failed to verify: " + diagnostics);
  }
  return module;
}

} // namespace kvarn::dialect
