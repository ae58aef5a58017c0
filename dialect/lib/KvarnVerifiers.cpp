// kvarn op definitions and verifiers: every memref shape, element type and schedule invariant.
#include "kvarn/Dialect/KvarnDialect.h"

#include "mlir/IR/Builders.h"
#include "mlir/IR/Matchers.h"
#include "mlir/IR/BuiltinOps.h"
#include "mlir/IR/OpImplementation.h"

using namespace mlir;
using namespace kvarn::dialect;

#define GET_OP_CLASSES
#include "kvarn/Dialect/KvarnOps.cpp.inc"

namespace {

std::string describe(Type type) {
  std::string text;
  llvm::raw_string_ostream os(text);
  os << type;
  return text;
}

/// Checks rank, element type and the static dims given (-1 = any) of a memref operand.
LogicalResult checkMemref(Operation *op, Value value, StringRef name,
                          ArrayRef<int64_t> expectedDims, function_ref<bool(Type)> elementOk,
                          StringRef elementDescription) {
  auto type = dyn_cast<MemRefType>(value.getType());
  if (!type || type.getRank() != static_cast<int64_t>(expectedDims.size()))
    return op->emitOpError() << "'" << name << "' must be a rank-" << expectedDims.size()
                             << " memref, got " << describe(value.getType());
  if (!elementOk(type.getElementType()))
    return op->emitOpError() << "'" << name << "' must have " << elementDescription
                             << " elements, got " << describe(type.getElementType());
  for (auto [index, expected] : llvm::enumerate(expectedDims)) {
    int64_t actual = type.getDimSize(index);
    if (expected >= 0 && !ShapedType::isDynamic(actual) && actual != expected)
      return op->emitOpError() << "'" << name << "' dimension " << index << " is " << actual
                               << "; the format needs " << expected;
  }
  return success();
}

bool isF16(Type t) { return t.isF16(); }
bool isActivation(Type t) { return t.isF16() || t.isBF16(); }
bool isI32(Type t) { return t.isInteger(32); }
bool isByte(Type t) { return t.isInteger(8); }
bool isSlotIndex(Type t) { return t.isInteger(32) || t.isInteger(64); }

/// Static size of a dimension, or -1.
int64_t staticDim(Value value, unsigned index) {
  auto type = cast<MemRefType>(value.getType());
  return type.isDynamicDim(index) ? -1 : type.getDimSize(index);
}

/// Checks that two static dims agree.
LogicalResult checkSameDim(Operation *op, Value a, unsigned ia, StringRef na, Value b,
                           unsigned ib, StringRef nb) {
  int64_t x = staticDim(a, ia), y = staticDim(b, ib);
  if (x >= 0 && y >= 0 && x != y)
    return op->emitOpError() << "'" << na << "' dimension " << ia << " (" << x << ") differs from '"
                             << nb << "' dimension " << ib << " (" << y << ")";
  return success();
}

/// The target architecture of the enclosing module (default sm_90a).
std::string targetArch(Operation *op) {
  if (auto module = op->getParentOfType<ModuleOp>())
    if (auto arch = module->getAttrOfType<StringAttr>(kTargetAttrName))
      return arch.str();
  return "sm_90a";
}

/// Checks the schedule's kind and its legality for this format and target.
LogicalResult checkSchedule(Operation *op, ScheduleAttr schedule, OpKind kind, FormatAttr format,
                            int64_t queryHeadsPerKvHead, Type dtype) {
  if (schedule.getKind() != kind)
    return op->emitOpError() << "schedule is for '" << stringifyOpKind(schedule.getKind())
                             << "' but the op is '" << stringifyOpKind(kind) << "'";
  kvarn::KernelSpec spec;
  spec.op = toRuntimeKind(kind);
  spec.format = format.toFormat();
  spec.queryHeadsPerKvHead = static_cast<int>(queryHeadsPerKvHead);
  spec.dtype = dtype && dtype.isBF16() ? kvarn::DType::BF16 : kvarn::DType::F16;
  spec.arch = targetArch(op);
  if (kvarn::Status status = kvarn::validateArch(spec.arch); !status)
    return op->emitOpError() << status.error().message;
  if (kvarn::Status status = kvarn::validateSchedule(spec, toSchedule(schedule)); !status)
    return op->emitOpError() << status.error().message;
  return success();
}

/// Shared checks of decode and extend.
template <typename AttentionOp>
LogicalResult verifyAttention(AttentionOp op, OpKind kind) {
  Operation *o = op.getOperation();
  kvarn::Format f = op.getFormat().toFormat();
  const int64_t d = f.headDim, g = f.tileTokens, bytes = op.getFormat().getTileBytesAligned();
  if (op.getQPerKv() < 1 || op.getQPerKv() > 16)
    return op.emitOpError() << "q_per_kv = " << op.getQPerKv() << " (supported: 1 to 16)";
  if (op.getSoftmaxScale().convertToFloat() < 0)
    return op.emitOpError() << "softmax_scale must be >= 0 (0 means 1/sqrt(head_dim))";
  if (failed(checkMemref(o, op.getQuery(), "query", {-1, -1, d}, isActivation, "f16 or bf16")) ||
      failed(checkMemref(o, op.getOut(), "out", {-1, -1, d}, isActivation, "f16 or bf16")) ||
      failed(checkMemref(o, op.getCache(), "cache", {-1, -1, bytes}, isByte, "i8")) ||
      failed(checkMemref(o, op.getPoolKey(), "pool_key", {-1, g, -1, d}, isF16, "f16")) ||
      failed(checkMemref(o, op.getPoolValue(), "pool_value", {-1, g, -1, d}, isF16, "f16")) ||
      failed(checkMemref(o, op.getBlockToSlot(), "block_to_slot", {-1}, isI32, "i32")) ||
      failed(checkMemref(o, op.getBlockTable(), "block_table", {-1, -1}, isI32, "i32")) ||
      failed(checkMemref(o, op.getSeqLens(), "seq_lens", {-1}, isI32, "i32")))
    return failure();
  if (op.getQuery().getType() != op.getOut().getType())
    return op.emitOpError() << "'out' must have the type of 'query'";
  if (failed(checkSameDim(o, op.getCache(), 1, "cache", op.getPoolKey(), 2, "pool_key")) ||
      failed(checkSameDim(o, op.getPoolKey(), 0, "pool_key", op.getPoolValue(), 0, "pool_value")) ||
      failed(checkSameDim(o, op.getCache(), 0, "cache", op.getBlockToSlot(), 0, "block_to_slot")))
    return failure();
  int64_t hq = staticDim(op.getQuery(), 1), hk = staticDim(op.getCache(), 1);
  if (hq >= 0 && hk >= 0 && hq != hk * int64_t(op.getQPerKv()))
    return op.emitOpError() << "query heads (" << hq << ") must equal kv heads (" << hk
                            << ") times q_per_kv (" << op.getQPerKv() << ")";
  Type dtype = cast<MemRefType>(op.getQuery().getType()).getElementType();
  return checkSchedule(o, op.getSchedule(), kind, op.getFormat(), op.getQPerKv(), dtype);
}

/// The schedule of the `kvarn.tile.begin` that made a context, if visible.
ScheduleAttr scheduleOf(Value context) {
  if (auto begin = context.getDefiningOp<TileBeginOp>())
    return begin.getSchedule();
  return {};
}

/// A constant slot must name one of the schedule's stages (a computed slot is the lowering's
/// responsibility: it cycles modulo the stage count).
LogicalResult verifySlot(Operation *op, Value context, Value slotValue) {
  int64_t stages = 4;
  if (ScheduleAttr schedule = scheduleOf(context))
    stages = schedule.getStages();
  APInt slot;
  if (matchPattern(slotValue, m_ConstantInt(&slot)) &&
      (slot.getSExtValue() < 0 || slot.getSExtValue() >= stages))
    return op->emitOpError() << "slot " << slot.getSExtValue() << " is outside the schedule's "
                             << stages << " stage(s)";
  if (cast<ContextType>(context.getType()).getKind() != OpKind::decode)
    return op->emitOpError() << "needs a decode context";
  return success();
}

} // namespace

LogicalResult AppendOp::verify() {
  kvarn::Format f = getFormat().toFormat();
  const int64_t d = f.headDim, g = f.tileTokens;
  Operation *o = getOperation();
  if (failed(checkMemref(o, getKey(), "key", {-1, -1, d}, isActivation, "f16 or bf16")) ||
      failed(checkMemref(o, getValue(), "value", {-1, -1, d}, isActivation, "f16 or bf16")) ||
      failed(checkMemref(o, getSlotMapping(), "slot_mapping", {-1}, isSlotIndex, "i32 or i64")) ||
      failed(checkMemref(o, getPoolKey(), "pool_key", {-1, g, -1, d}, isF16, "f16")) ||
      failed(checkMemref(o, getPoolValue(), "pool_value", {-1, g, -1, d}, isF16, "f16")))
    return failure();
  if (getKey().getType() != getValue().getType())
    return emitOpError() << "'key' and 'value' must have the same type";
  if (failed(checkSameDim(o, getKey(), 1, "key", getPoolKey(), 2, "pool_key")) ||
      failed(checkSameDim(o, getKey(), 0, "key", getSlotMapping(), 0, "slot_mapping")))
    return failure();
  Type dtype = cast<MemRefType>(getKey().getType()).getElementType();
  return checkSchedule(o, getSchedule(), OpKind::append, getFormat(), 1, dtype);
}

LogicalResult FlushOp::verify() {
  kvarn::Format f = getFormat().toFormat();
  const int64_t d = f.headDim, g = f.tileTokens, bytes = getFormat().getTileBytesAligned();
  Operation *o = getOperation();
  if (failed(checkMemref(o, getPoolKey(), "pool_key", {-1, g, -1, d}, isF16, "f16")) ||
      failed(checkMemref(o, getPoolValue(), "pool_value", {-1, g, -1, d}, isF16, "f16")) ||
      failed(checkMemref(o, getEntries(), "entries", {-1, 3}, isI32, "i32")) ||
      failed(checkMemref(o, getCache(), "cache", {-1, -1, bytes}, isByte, "i8")))
    return failure();
  if (failed(checkSameDim(o, getCache(), 1, "cache", getPoolKey(), 2, "pool_key")))
    return failure();
  return checkSchedule(o, getSchedule(), OpKind::flush, getFormat(), 1, Type());
}

LogicalResult DecodeOp::verify() { return verifyAttention(*this, OpKind::decode); }

LogicalResult ExtendOp::verify() {
  if (failed(checkMemref(getOperation(), getQueryStart(), "query_start", {-1}, isI32, "i32")))
    return failure();
  return verifyAttention(*this, OpKind::extend);
}

LogicalResult DequantizeOp::verify() {
  kvarn::Format f = getFormat().toFormat();
  const int64_t d = f.headDim, g = f.tileTokens, bytes = getFormat().getTileBytesAligned();
  Operation *o = getOperation();
  if (failed(checkMemref(o, getCache(), "cache", {-1, -1, bytes}, isByte, "i8")) ||
      failed(checkMemref(o, getEntries(), "entries", {-1, 2}, isI32, "i32")) ||
      failed(checkMemref(o, getKey(), "key", {-1, g, d}, isF16, "f16")) ||
      failed(checkMemref(o, getValue(), "value", {-1, g, d}, isF16, "f16")))
    return failure();
  if (failed(checkSameDim(o, getEntries(), 0, "entries", getKey(), 0, "key")))
    return failure();
  return checkSchedule(o, getSchedule(), OpKind::dequantize, getFormat(), 1, Type());
}

LogicalResult TileBeginOp::verify() {
  OpKind kind = getParams().getType().getKind();
  if (getContext().getType().getKind() != kind)
    return emitOpError() << "context kind '" << stringifyOpKind(getContext().getType().getKind())
                         << "' differs from the params kind '" << stringifyOpKind(kind) << "'";
  if (!getDtype().isF16() && !getDtype().isBF16())
    return emitOpError() << "dtype must be f16 or bf16, got " << describe(getDtype());
  return checkSchedule(getOperation(), getSchedule(), kind, getFormat(), getQPerKv(), getDtype());
}

LogicalResult TileLoadRecordOp::verify() {
  return verifySlot(getOperation(), getContext(), getSlot());
}
/// Split loads count two copy groups per page: the device code pairs them with one stage.
static LogicalResult verifyLoadPart(Operation *op, Value context, Value slot) {
  if (failed(verifySlot(op, context, slot)))
    return failure();
  if (ScheduleAttr schedule = scheduleOf(context); schedule && schedule.getStages() != 1)
    return op->emitOpError() << "splits a page's loads, which needs a one-stage schedule (this "
                             << "one has " << schedule.getStages() << " stages)";
  return success();
}
LogicalResult TileLoadKeysOp::verify() {
  return verifyLoadPart(getOperation(), getContext(), getSlot());
}
LogicalResult TileLoadValuesOp::verify() {
  return verifyLoadPart(getOperation(), getContext(), getSlot());
}
LogicalResult TileScoresOnCodesOp::verify() {
  return verifySlot(getOperation(), getContext(), getSlot());
}
LogicalResult TileOnlineSoftmaxOp::verify() {
  return verifySlot(getOperation(), getContext(), getSlot());
}
LogicalResult TilePvOnCodesOp::verify() {
  return verifySlot(getOperation(), getContext(), getSlot());
}
