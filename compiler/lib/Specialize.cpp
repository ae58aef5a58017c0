// kvarn-specialize: folds format/schedule defaults into explicit constants.
#include "kvarn/Compiler/Passes.h"

#include "mlir/IR/Builders.h"
#include "mlir/IR/BuiltinOps.h"

#include <cmath>

namespace kvarn::compiler {
#define GEN_PASS_DEF_KVARNSPECIALIZE
#include "kvarn/Compiler/Passes.h.inc"

namespace {

using namespace mlir;
using namespace kvarn::dialect;

/// Resolves softmax_scale = 0 and heads_per_cta = 0 of decode/extend.
template <typename AttentionOp> void specializeAttention(AttentionOp op) {
  Builder builder(op.getContext());
  const int64_t d = op.getFormat().getHeadDim();
  if (op.getSoftmaxScale().isZero())
    op.setSoftmaxScaleAttr(builder.getF32FloatAttr(1.0f / std::sqrt(static_cast<float>(d))));
  ScheduleAttr s = op.getSchedule();
  if (s.getHeadsPerCta() == 0)
    op.setScheduleAttr(ScheduleAttr::get(op.getContext(), s.getKind(), s.getWarps(),
                                         s.getStages(), s.getSplits(), op.getQPerKv(), s.getMma(),
                                         s.getRowsPerCta(), s.getMinCtas()));
}

struct SpecializePass : impl::KvarnSpecializeBase<SpecializePass> {
  void runOnOperation() override {
    Builder builder(&getContext());
    getOperation().walk([&](Operation *op) {
      if (auto decode = dyn_cast<DecodeOp>(op))
        specializeAttention(decode);
      else if (auto extend = dyn_cast<ExtendOp>(op))
        specializeAttention(extend);
      else
        return;
    });
    // Record size and threads per CTA on every operation-level op.
    getOperation().walk([&](Operation *op) {
      auto format = op->getAttrOfType<FormatAttr>("format");
      auto schedule = op->getAttrOfType<ScheduleAttr>("schedule");
      if (!format || !schedule || op->getDialect()->getNamespace() != "kvarn" ||
          op->getName().getStringRef().starts_with("kvarn.tile."))
        return;
      op->setAttr("kvarn.tile_bytes", builder.getI64IntegerAttr(format.getTileBytesAligned()));
      op->setAttr("kvarn.threads", builder.getI64IntegerAttr(schedule.getThreads()));
    });
  }
};

} // namespace
} // namespace kvarn::compiler
