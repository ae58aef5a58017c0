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
  if (traits.schedule.getMinCtas() > 0)
    function->setAttr("kvarn.min_ctas", builder.getI64IntegerAttr(traits.schedule.getMinCtas()));
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
/// software pipeline): the loads of the first stages - 1 pages (of the first page with one
/// stage) are issued before the query rotation, so their latency overlaps it; each step issues
/// the loads of the page stages - 1 ahead (into slot (k + stages - 1) mod stages) before it
/// computes its own page k (record pages on codes from slot k mod stages, pool pages directly).
/// Slots are runtime values, so the loop holds one copy of the compute code. With one stage the
/// page's loads are split in two copy groups that use the slot as soon as it frees up: the next
/// page's K codes and scales after this page's scores, its V codes and scales after the output
/// update, so each half lands while the warp computes the other half of a page.
void buildDecodeBody(OpBuilder &builder, Location loc, Value params, const KernelTraits &t) {
  Value ctx = beginContext(builder, loc, params, t);
  auto range = TilePageRangeOp::create(builder, loc, builder.getI32Type(), builder.getI32Type(),
                                       builder.getI32Type(), ctx);
  const int64_t stages = t.schedule.getStages();
  Value ahead = stages <= 2 ? range.getStep()
                           : Value(arith::MulIOp::create(builder, loc, range.getStep(),
                                                         constantI32(builder, loc, stages - 1)));
  // Step 1. Prologue: the query rotation, then the loads of the first max(stages - 1, 1) pages.
  // In this order the query loads do not queue behind every warp's page copies (measured on the
  // H200: 2-4 us off a launch's first page at B = 1).
  TileRotateQueryOp::create(builder, loc, ctx);
  Value page = range.getFirst();
  if (stages == 1) {
    Value zero = constantI32(builder, loc, 0);
    TileLoadKeysOp::create(builder, loc, ctx, page, zero);
    TileLoadValuesOp::create(builder, loc, ctx, page, zero);
  }
  for (int64_t slot = 0; slot + 1 < stages; ++slot) {
    if (slot > 0)
      page = arith::AddIOp::create(builder, loc, page, range.getStep());
    TileLoadRecordOp::create(builder, loc, ctx, page, constantI32(builder, loc, slot));
  }
  if (t.schedule.getSplits() != 1) // a merge kernel may follow: let it launch now
    TileReleaseMergeOp::create(builder, loc, ctx);
  // Step 2. The page loop: prefetch stages - 1 pages ahead, then compute this page (one stage:
  // the next page's K half after the scores, its V half after the output update). With one
  // stage a page's load_keys always precedes its is_pool_page and its load_values, which the
  // device code relies on to look each page up once (REUSE_LOOKUP in decode.cuh).
  auto loop = scf::ForOp::create(builder, loc, range.getFirst(), range.getEnd(), range.getStep());
  builder.setInsertionPointToStart(loop.getBody());
  page = loop.getInductionVar();
  Value slot, aheadSlot, aheadPage = page;
  if (stages == 1) {
    slot = aheadSlot = constantI32(builder, loc, 0);
    aheadPage = arith::AddIOp::create(builder, loc, page, range.getStep());
  } else {
    Value count = constantI32(builder, loc, stages);
    Value k = arith::DivSIOp::create(
        builder, loc, arith::SubIOp::create(builder, loc, page, range.getFirst()),
        range.getStep());
    slot = arith::RemSIOp::create(builder, loc, k, count);
    aheadSlot = arith::RemSIOp::create(
        builder, loc, arith::AddIOp::create(builder, loc, k, constantI32(builder, loc, stages - 1)),
        count);
    aheadPage = arith::AddIOp::create(builder, loc, page, ahead);
  }
  if (stages > 1)
    TileLoadRecordOp::create(builder, loc, ctx, aheadPage, aheadSlot);
  Value pool = TileIsPoolPageOp::create(builder, loc, builder.getI1Type(), ctx, page);
  auto poolIf = scf::IfOp::create(builder, loc, pool, /*withElseRegion=*/true);
  builder.setInsertionPointToStart(poolIf.thenBlock());
  TileAttendPoolPageOp::create(builder, loc, ctx, page);
  if (stages == 1) // every path closes the same copy groups
    TileLoadKeysOp::create(builder, loc, ctx, aheadPage, aheadSlot);
  builder.setInsertionPointToStart(poolIf.elseBlock());
  TileScoresOnCodesOp::create(builder, loc, ctx, page, slot);
  if (stages == 1)
    TileLoadKeysOp::create(builder, loc, ctx, aheadPage, aheadSlot);
  TileOnlineSoftmaxOp::create(builder, loc, ctx, slot);
  TilePvOnCodesOp::create(builder, loc, ctx, slot);
  if (stages == 1) {
    builder.setInsertionPointAfter(poolIf);
    TileLoadValuesOp::create(builder, loc, ctx, aheadPage, aheadSlot);
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
