// kvarn-lower-to-tile: operation-level ops -> tile-level kernel functions.
#include "kvarn/Compiler/Passes.h"

#include "mlir/IR/Builders.h"
#include "mlir/IR/BuiltinOps.h"

namespace kvarn::compiler {
#define GEN_PASS_DEF_KVARNLOWERTOTILE
#include "kvarn/Compiler/Passes.h.inc"

namespace {

using namespace mlir;
using namespace kvarn::dialect;

/// What a kernel function needs from its operation-level op.
struct KernelTraits {
  dialect::OpKind kind;
  FormatAttr format;
  ScheduleAttr schedule;
  int64_t queryHeadsPerKvHead = 1;
  Type dtype;
};

/// Replaces the body and signature of `function` by a kernel taking `!kvarn.params<kind>`;
/// returns the new entry block's builder position and the params value.
Value resetToKernel(func::FuncOp function, const KernelTraits &traits, OpBuilder &builder) {
  MLIRContext *context = function.getContext();
  Type params = ParamsType::get(context, traits.kind);
  function.getBody().getBlocks().clear();
  function.setType(FunctionType::get(context, {params}, {}));
  Block *entry = function.addEntryBlock();
  function->setAttr("kvarn.kernel", UnitAttr::get(context));
  function->setAttr("kvarn.threads", builder.getI64IntegerAttr(traits.schedule.getThreads()));
  builder.setInsertionPointToStart(entry);
  return entry->getArgument(0);
}

Value beginContext(OpBuilder &builder, Location loc, Value params, const KernelTraits &t) {
  return TileBeginOp::create(builder, loc, ContextType::get(builder.getContext(), t.kind), params,
                             t.format, t.schedule, builder.getI64IntegerAttr(t.queryHeadsPerKvHead),
                             TypeAttr::get(t.dtype));
}

Value constantI32(OpBuilder &builder, Location loc, int64_t value) {
  return arith::ConstantIntOp::create(builder, loc, value, 32);
}

/// Decode: each warp walks its pages through a ring of `stages` staging slots (a rolling
/// software pipeline): the loads of the first stages - 1 pages are issued before the loop; the
/// loop is unrolled by `stages` so every slot index is a constant, and each unrolled step issues
/// the loads of the page stages - 1 ahead before it computes its own page (record pages on
/// codes, pool pages directly). With one stage a page is loaded and then computed.
void buildDecodeBody(OpBuilder &builder, Location loc, Value params, const KernelTraits &t) {
  Value ctx = beginContext(builder, loc, params, t);
  TileRotateQueryOp::create(builder, loc, ctx);
  auto range = TilePageRangeOp::create(builder, loc, builder.getI32Type(), builder.getI32Type(),
                                       builder.getI32Type(), ctx);
  const int64_t stages = t.schedule.getStages();
  auto pageAt = [&](Value page, int64_t steps) -> Value {
    if (steps == 0)
      return page;
    Value offset = steps == 1 ? range.getStep()
                              : Value(arith::MulIOp::create(builder, loc, range.getStep(),
                                                            constantI32(builder, loc, steps)));
    return arith::AddIOp::create(builder, loc, page, offset);
  };
  // Step 1. Prologue: the loads of the first stages - 1 pages.
  for (int64_t slot = 0; slot + 1 < stages; ++slot)
    TileLoadRecordOp::create(builder, loc, ctx, pageAt(range.getFirst(), slot),
                             builder.getI64IntegerAttr(slot));
  Value groupStep = stages == 1 ? range.getStep()
                                : Value(arith::MulIOp::create(builder, loc, range.getStep(),
                                                              constantI32(builder, loc, stages)));
  auto loop = scf::ForOp::create(builder, loc, range.getFirst(), range.getEnd(), groupStep);
  builder.setInsertionPointToStart(loop.getBody());
  Value isTrue = arith::ConstantIntOp::create(builder, loc, 1, 1);
  // Step 2. Per unrolled step: prefetch the page stages - 1 ahead, then compute this page.
  for (int64_t slot = 0; slot < stages; ++slot) {
    Value page = pageAt(loop.getInductionVar(), slot);
    TileLoadRecordOp::create(builder, loc, ctx, pageAt(page, stages - 1),
                             builder.getI64IntegerAttr((slot + stages - 1) % stages));
    OpBuilder::InsertionGuard guard(builder);
    if (slot > 0) { // the last group of the loop may end early
      Value inRange =
          arith::CmpIOp::create(builder, loc, arith::CmpIPredicate::slt, page, range.getEnd());
      auto guardIf = scf::IfOp::create(builder, loc, inRange, /*withElseRegion=*/false);
      builder.setInsertionPointToStart(guardIf.thenBlock());
    }
    Value pool = TileIsPoolPageOp::create(builder, loc, builder.getI1Type(), ctx, page);
    auto poolIf = scf::IfOp::create(builder, loc, pool, /*withElseRegion=*/false);
    {
      OpBuilder::InsertionGuard inner(builder);
      builder.setInsertionPointToStart(poolIf.thenBlock());
      TileAttendPoolPageOp::create(builder, loc, ctx, page);
    }
    Value record = arith::XOrIOp::create(builder, loc, pool, isTrue);
    auto recordIf = scf::IfOp::create(builder, loc, record, /*withElseRegion=*/false);
    builder.setInsertionPointToStart(recordIf.thenBlock());
    IntegerAttr slotAttr = builder.getI64IntegerAttr(slot);
    TileScoresOnCodesOp::create(builder, loc, ctx, slotAttr);
    TileOnlineSoftmaxOp::create(builder, loc, ctx, slotAttr);
    TilePvOnCodesOp::create(builder, loc, ctx, slotAttr);
  }
  builder.setInsertionPointAfter(loop);
  // Step 3. Merge the warps, then store the final output or this split's partial.
  if (t.schedule.getWarps() > 1)
    TileMergeWarpsOp::create(builder, loc, ctx);
  TileStoreOutputOp::create(builder, loc, ctx, builder.getBoolAttr(t.schedule.getSplits() != 1));
  func::ReturnOp::create(builder, loc);
}

void buildMergeBody(OpBuilder &builder, Location loc, Value params, const KernelTraits &t) {
  Value ctx = beginContext(builder, loc, params, t);
  TileMergeSplitsOp::create(builder, loc, ctx);
  func::ReturnOp::create(builder, loc);
}

void buildFlushBody(OpBuilder &builder, Location loc, Value params, const KernelTraits &t) {
  Value ctx = beginContext(builder, loc, params, t);
  for (int64_t tensor : {0, 1}) { // K, then V, through the same on-chip tile
    IntegerAttr tensorAttr = builder.getI64IntegerAttr(tensor);
    TileLoadTileOp::create(builder, loc, ctx, tensorAttr);
    TileNormalizeOp::create(builder, loc, ctx,
                            builder.getI64IntegerAttr(t.format.getIterations()));
    TileQuantizePackOp::create(builder, loc, ctx, tensorAttr);
  }
  func::ReturnOp::create(builder, loc);
}

/// Append and dequantize: a grid-stride loop over rows.
template <typename RowOp>
void buildRowBody(OpBuilder &builder, Location loc, Value params, const KernelTraits &t) {
  Value ctx = beginContext(builder, loc, params, t);
  auto range = TileRowRangeOp::create(builder, loc, builder.getI32Type(), builder.getI32Type(),
                                      builder.getI32Type(), ctx);
  auto loop = scf::ForOp::create(builder, loc, range.getFirst(), range.getEnd(), range.getStep());
  builder.setInsertionPointToStart(loop.getBody());
  RowOp::create(builder, loc, ctx, loop.getInductionVar());
  builder.setInsertionPointAfter(loop);
  func::ReturnOp::create(builder, loc);
}

struct LowerToTilePass : impl::KvarnLowerToTileBase<LowerToTilePass> {
  void runOnOperation() override {
    ModuleOp module = getOperation();
    SmallVector<func::FuncOp> functions(module.getOps<func::FuncOp>());
    for (func::FuncOp function : functions) {
      // Step 1. Find the one operation-level op of the function.
      Operation *top = nullptr;
      function.walk([&](Operation *op) {
        if (isa<AppendOp, FlushOp, DecodeOp, ExtendOp, DequantizeOp>(op))
          top = op;
      });
      if (!top)
        continue;
      KernelTraits t;
      t.format = top->getAttrOfType<FormatAttr>("format");
      t.schedule = top->getAttrOfType<ScheduleAttr>("schedule");
      t.kind = t.schedule.getKind();
      t.dtype = Float16Type::get(&getContext());
      if (auto decode = dyn_cast<DecodeOp>(top)) {
        t.queryHeadsPerKvHead = decode.getQPerKv();
        t.dtype = cast<MemRefType>(decode.getQuery().getType()).getElementType();
      } else if (auto append = dyn_cast<AppendOp>(top)) {
        t.dtype = cast<MemRefType>(append.getKey().getType()).getElementType();
      } else if (isa<ExtendOp>(top)) {
        top->emitError("kvarn.extend has no lowering yet (supported: decode, flush, append, "
                       "dequantize)");
        return signalPassFailure();
      }
      if (auto scale = top->getAttrOfType<FloatAttr>("softmax_scale");
          scale && scale.getValue().isZero()) {
        top->emitError("run kvarn-specialize first: softmax_scale is still 0");
        return signalPassFailure();
      }
      Location loc = top->getLoc();
      OpBuilder builder(function);
      // Step 2. Rebuild the function as a kernel; decode with splits gets a merge kernel.
      Value params = resetToKernel(function, t, builder);
      switch (t.kind) {
      case dialect::OpKind::decode: {
        buildDecodeBody(builder, loc, params, t);
        if (t.schedule.getSplits() != 1) {
          builder.setInsertionPointAfter(function);
          auto merge = func::FuncOp::create(builder, loc, (function.getName() + "_merge").str(),
                                            function.getFunctionType());
          Value mergeParams = resetToKernel(merge, t, builder);
          buildMergeBody(builder, loc, mergeParams, t);
        }
        break;
      }
      case dialect::OpKind::flush:
        buildFlushBody(builder, loc, params, t);
        break;
      case dialect::OpKind::append:
        buildRowBody<TileRotateRowOp>(builder, loc, params, t);
        break;
      case dialect::OpKind::dequantize:
        buildRowBody<TileDequantizeRowOp>(builder, loc, params, t);
        break;
      case dialect::OpKind::extend:
        llvm_unreachable("rejected above");
      }
    }
  }
};

} // namespace
} // namespace kvarn::compiler
