// kvarn-lower-to-emitc: tile-level kernels -> EmitC calls into the device library.
#include "kvarn/Compiler/Passes.h"

#include "mlir/Conversion/ArithToEmitC/ArithToEmitC.h"
#include "mlir/Conversion/FuncToEmitC/FuncToEmitC.h"
#include "mlir/Conversion/SCFToEmitC/SCFToEmitC.h"
#include "mlir/Dialect/EmitC/Transforms/TypeConversions.h"
#include "mlir/IR/Builders.h"
#include "mlir/IR/BuiltinOps.h"
#include "mlir/IR/PatternMatch.h"
#include "mlir/Transforms/DialectConversion.h"
#include "llvm/ADT/TypeSwitch.h"

namespace kvarn::compiler {
#define GEN_PASS_DEF_KVARNLOWERTOEMITC
#include "kvarn/Compiler/Passes.h.inc"

namespace {

using namespace mlir;
using namespace kvarn::dialect;

/// `Decode`, `Flush`, ... : the prefix of the device library's Params/Context structs.
std::string structPrefix(dialect::OpKind kind) {
  std::string name = stringifyOpKind(kind).str();
  name[0] = static_cast<char>(std::toupper(name[0]));
  return name;
}

/// `kvarn::dev::DecodeContext<KB, VB, G, D, Q, Warps, Stages, Splits, Rows, Compact, DType,
/// QueryTerms, WeightTerms, CenteredQuery, EarlyWindow>` (decode only: fp16 terms per MMA
/// operand and the centered q' correction, from the schedule's `mma`, and whether the first
/// lookup window opens before the query rotation, `earlyLookupWindow` of the schedule).
std::string contextTypeName(TileBeginOp begin) {
  FormatAttr f = begin.getFormat();
  ScheduleAttr s = begin.getSchedule();
  std::string name = "kvarn::dev::" + structPrefix(begin.getParams().getType().getKind()) +
                     "Context<" + std::to_string(f.getKeyBits()) + ", " +
                     std::to_string(f.getValueBits()) + ", " + std::to_string(f.getTileTokens()) +
                     ", " + std::to_string(f.getHeadDim()) + ", " +
                     std::to_string(begin.getQPerKv()) + ", " + std::to_string(s.getWarps()) +
                     ", " + std::to_string(s.getStages()) + ", " + std::to_string(s.getSplits()) +
                     ", " + std::to_string(s.getRowsPerCta()) + ", " +
                     (f.getCompact() ? "true" : "false") + ", " +
                     (begin.getDtype().isBF16() ? "kvarn::dev::BFloat16" : "kvarn::dev::Half");
  if (begin.getParams().getType().getKind() == dialect::OpKind::decode) {
    const MmaVariant *mma = findMma(s.getMma()); // verified by the schedule attribute
    name += ", " + std::to_string(mma->queryTerms) + ", " + std::to_string(mma->weightTerms) +
            (mma->centeredQuery ? ", true" : ", false") +
            (::kvarn::earlyLookupWindow(toSchedule(s)) ? ", true" : ", false");
  }
  name += ">";
  return name;
}

/// Replaces `op` by a call of `kvarn::dev::<function>` on its operands, with the integer and
/// bool attributes of the op (in declaration order) as template arguments.
void replaceWithCall(IRRewriter &rewriter, Operation *op, StringRef function,
                     TypeRange resultTypes) {
  SmallVector<Attribute> templateArgs;
  for (NamedAttribute attr : op->getAttrs())
    if (isa<IntegerAttr, BoolAttr>(attr.getValue()))
      templateArgs.push_back(attr.getValue());
  rewriter.setInsertionPoint(op);
  auto call = emitc::CallOpaqueOp::create(
      rewriter, op->getLoc(), resultTypes, "kvarn::dev::" + function.str(), op->getOperands(),
      ArrayAttr(), templateArgs.empty() ? ArrayAttr() : rewriter.getArrayAttr(templateArgs));
  rewriter.replaceOp(op, call.getResults());
}

struct LowerToEmitCPass : impl::KvarnLowerToEmitCBase<LowerToEmitCPass> {
  using Base::Base;

  LogicalResult lowerKernel(func::FuncOp function) {
    MLIRContext *context = &getContext();
    IRRewriter rewriter(context);
    TileBeginOp begin;
    function.walk([&](TileBeginOp op) { begin = op; });
    if (!begin)
      return function.emitError("kernel function without kvarn.tile.begin");
    // Names first: the signature change below retypes the params value.
    const dialect::OpKind kind = begin.getParams().getType().getKind();
    const std::string contextName = contextTypeName(begin);
    Type paramsType =
        emitc::OpaqueType::get(context, "kvarn::dev::" + structPrefix(kind) + "Params");
    Type contextType = emitc::OpaqueType::get(context, contextName);
    Type i32 = rewriter.getI32Type();

    // Step 1. The signature takes the Params struct by value.
    function.getArgument(0).setType(paramsType);
    function.setType(FunctionType::get(context, {paramsType}, {}));

    // Step 2. begin -> `Context<...>::begin(params)`; every other tile op -> its building block.
    rewriter.setInsertionPoint(begin);
    auto created = emitc::CallOpaqueOp::create(rewriter, begin.getLoc(), TypeRange{contextType},
                                               contextName + "::begin",
                                               begin->getOperands());
    rewriter.replaceOp(begin, created.getResults());

    SmallVector<Operation *> tileOps;
    function.walk([&](Operation *op) {
      if (op->getName().getStringRef().starts_with("kvarn.tile."))
        tileOps.push_back(op);
    });
    for (Operation *op : tileOps) {
      // Ranges become three scalar queries (EmitC calls return at most one value).
      if (isa<TilePageRangeOp, TileRowRangeOp>(op)) {
        const bool pages = isa<TilePageRangeOp>(op);
        rewriter.setInsertionPoint(op);
        SmallVector<Value> values;
        for (StringRef part : {"First", "End", "Step"})
          values.push_back(emitc::CallOpaqueOp::create(
                               rewriter, op->getLoc(), TypeRange{i32},
                               ("kvarn::dev::" + Twine(pages ? "page" : "row") + part).str(),
                               op->getOperands())
                               .getResult(0));
        rewriter.replaceOp(op, values);
        continue;
      }
      StringRef function =
          llvm::TypeSwitch<Operation *, StringRef>(op)
              .Case([](TileRotateQueryOp) { return TileRotateQueryOp::getDeviceFunction(); })
              .Case([](TileIsPoolPageOp) { return TileIsPoolPageOp::getDeviceFunction(); })
              .Case([](TileLoadRecordOp) { return TileLoadRecordOp::getDeviceFunction(); })
              .Case([](TileLoadKeysOp) { return TileLoadKeysOp::getDeviceFunction(); })
              .Case([](TileLoadValuesOp) { return TileLoadValuesOp::getDeviceFunction(); })
              .Case([](TileScoresOnCodesOp) { return TileScoresOnCodesOp::getDeviceFunction(); })
              .Case([](TileOnlineSoftmaxOp) { return TileOnlineSoftmaxOp::getDeviceFunction(); })
              .Case([](TilePvOnCodesOp) { return TilePvOnCodesOp::getDeviceFunction(); })
              .Case([](TileAttendPoolPageOp) { return TileAttendPoolPageOp::getDeviceFunction(); })
              .Case([](TileMergeWarpsOp) { return TileMergeWarpsOp::getDeviceFunction(); })
              .Case([](TileStoreOutputOp) { return TileStoreOutputOp::getDeviceFunction(); })
              .Case([](TileReleaseMergeOp) { return TileReleaseMergeOp::getDeviceFunction(); })
              .Case([](TileMergeSplitsOp) { return TileMergeSplitsOp::getDeviceFunction(); })
              .Case([](TileLoadTileOp) { return TileLoadTileOp::getDeviceFunction(); })
              .Case([](TileNormalizeOp) { return TileNormalizeOp::getDeviceFunction(); })
              .Case([](TileQuantizePackOp) { return TileQuantizePackOp::getDeviceFunction(); })
              .Case([](TileRotateRowOp) { return TileRotateRowOp::getDeviceFunction(); })
              .Case([](TileDequantizeRowOp) { return TileDequantizeRowOp::getDeviceFunction(); })
              .Default([](Operation *) { return StringRef(); });
      if (function.empty())
        return op->emitError("no device-library building block for this tile op");
      replaceWithCall(rewriter, op, function, op->getResultTypes());
    }
    return success();
  }

  void runOnOperation() override {
    ModuleOp module = getOperation();
    MLIRContext *context = &getContext();
    // Step 1. Tile ops -> device-library calls, kernel by kernel.
    SmallVector<std::pair<std::string, std::string>> kernels; // name, launch bounds
    for (func::FuncOp function : llvm::make_early_inc_range(module.getOps<func::FuncOp>())) {
      if (!function->hasAttr("kvarn.kernel"))
        continue;
      auto threads = function->getAttrOfType<IntegerAttr>("kvarn.threads");
      auto minCtas = function->getAttrOfType<IntegerAttr>("kvarn.min_ctas");
      std::string bounds = "__launch_bounds__(" + std::to_string(threads ? threads.getInt() : 128);
      if (minCtas)
        bounds += ", " + std::to_string(minCtas.getInt());
      kernels.push_back({function.getName().str(), bounds + ")"});
      if (failed(lowerKernel(function)))
        return signalPassFailure();
    }
    // Step 2. func/scf/arith -> EmitC with the upstream patterns.
    TypeConverter typeConverter;
    typeConverter.addConversion([](Type type) { return type; });
    populateEmitCSizeTTypeConversions(typeConverter);
    RewritePatternSet patterns(context);
    populateFuncToEmitCPatterns(typeConverter, patterns);
    populateSCFToEmitCConversionPatterns(patterns, typeConverter);
    populateArithToEmitCPatterns(typeConverter, patterns);
    ConversionTarget target(*context);
    target.addLegalDialect<emitc::EmitCDialect>();
    target.addIllegalDialect<func::FuncDialect, scf::SCFDialect, arith::ArithDialect,
                             KvarnDialect>();
    target.addLegalOp<ModuleOp>();
    if (failed(applyPartialConversion(module, target, std::move(patterns))))
      return signalPassFailure();
    // Step 3. CUDA linkage: extern "C" __global__ with launch bounds; include the library.
    OpBuilder builder(context);
    for (auto [name, bounds] : kernels) {
      auto function = module.lookupSymbol<emitc::FuncOp>(name);
      if (!function) {
        module.emitError("kernel ") << name << " vanished during the EmitC conversion";
        return signalPassFailure();
      }
      function.setSpecifiersAttr(builder.getStrArrayAttr(
          {"extern \"C\" __global__", bounds}));
    }
    builder.setInsertionPointToStart(module.getBody());
    emitc::IncludeOp::create(builder, module.getLoc(), deviceHeader, /*is_standard_include=*/false);
  }
};

} // namespace
} // namespace kvarn::compiler
