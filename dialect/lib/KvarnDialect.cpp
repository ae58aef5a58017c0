// kvarn dialect registration, attribute parsing/printing and attribute verifiers.
#include "kvarn/Dialect/KvarnDialect.h"

#include "mlir/IR/Builders.h"
#include "mlir/IR/DialectImplementation.h"
#include "llvm/ADT/TypeSwitch.h"

using namespace mlir;
using namespace kvarn::dialect;

#include "kvarn/Dialect/KvarnDialect.cpp.inc"
#include "kvarn/Dialect/KvarnEnums.cpp.inc"

#define GET_ATTRDEF_CLASSES
#include "kvarn/Dialect/KvarnAttrs.cpp.inc"
#define GET_TYPEDEF_CLASSES
#include "kvarn/Dialect/KvarnTypes.cpp.inc"

void KvarnDialect::initialize() {
  addAttributes<
#define GET_ATTRDEF_LIST
#include "kvarn/Dialect/KvarnAttrs.cpp.inc"
      >();
  addTypes<
#define GET_TYPEDEF_LIST
#include "kvarn/Dialect/KvarnTypes.cpp.inc"
      >();
  addOperations<
#define GET_OP_LIST
#include "kvarn/Dialect/KvarnOps.cpp.inc"
      >();
}

//===----------------------------------------------------------------------===//
// #kvarn.format
//===----------------------------------------------------------------------===//

kvarn::Format FormatAttr::toFormat() const {
  kvarn::Format format;
  format.keyBits = static_cast<int>(getKeyBits());
  format.valueBits = static_cast<int>(getValueBits());
  format.tileTokens = static_cast<int>(getTileTokens());
  format.headDim = static_cast<int>(getHeadDim());
  format.sinkhornIterations = static_cast<int>(getIterations());
  format.alignment =
      getCompact() ? kvarn::RecordAlignment::Compact : kvarn::RecordAlignment::Reference;
  return format;
}

int64_t FormatAttr::getTileBytesAligned() const {
  return static_cast<int64_t>(kvarn::recordLayout(toFormat()).tileBytesAligned);
}

FormatAttr FormatAttr::fromFormat(MLIRContext *context, const kvarn::Format &format) {
  return FormatAttr::get(context, format.keyBits, format.valueBits, format.tileTokens,
                         format.headDim, format.sinkhornIterations,
                         format.alignment == kvarn::RecordAlignment::Compact);
}

LogicalResult FormatAttr::verify(function_ref<InFlightDiagnostic()> emitError, int64_t keyBits,
                                 int64_t valueBits, int64_t tileTokens, int64_t headDim,
                                 int64_t iterations, bool compact) {
  kvarn::Format format;
  format.keyBits = static_cast<int>(keyBits);
  format.valueBits = static_cast<int>(valueBits);
  format.tileTokens = static_cast<int>(tileTokens);
  format.headDim = static_cast<int>(headDim);
  format.sinkhornIterations = static_cast<int>(iterations);
  if (kvarn::Status status = kvarn::validateFormat(format); !status)
    return emitError() << status.error().message;
  return success();
}

Attribute FormatAttr::parse(AsmParser &parser, Type) {
  std::string preset;
  int64_t headDim = 0, iterations = kvarn::kDefaultSinkhornIterations;
  bool compact = false;
  SMLoc presetLoc = parser.getCurrentLocation();
  if (parser.parseLess() || parser.parseKeywordOrString(&preset) || parser.parseComma() ||
      parser.parseKeyword("head_dim") || parser.parseEqual() || parser.parseInteger(headDim))
    return {};
  while (succeeded(parser.parseOptionalComma())) {
    StringRef key;
    SMLoc keyLoc = parser.getCurrentLocation();
    if (parser.parseKeyword(&key) || parser.parseEqual())
      return {};
    if (key == "iterations") {
      if (parser.parseInteger(iterations))
        return {};
    } else if (key == "layout") {
      StringRef layout;
      SMLoc layoutLoc = parser.getCurrentLocation();
      if (parser.parseKeyword(&layout))
        return {};
      if (layout != "reference" && layout != "compact") {
        parser.emitError(layoutLoc) << "unknown record layout '" << layout
                                    << "' (supported: reference, compact)";
        return {};
      }
      compact = layout == "compact";
    } else {
      parser.emitError(keyLoc) << "unknown format parameter '" << key
                               << "' (supported: iterations, layout)";
      return {};
    }
  }
  if (parser.parseGreater())
    return {};
  kvarn::Expected<kvarn::Format> format =
      kvarn::parseFormat(preset, static_cast<int>(headDim), static_cast<int>(iterations));
  if (!format) {
    parser.emitError(presetLoc) << format.error().message;
    return {};
  }
  format->alignment = compact ? kvarn::RecordAlignment::Compact : kvarn::RecordAlignment::Reference;
  return FormatAttr::fromFormat(parser.getContext(), *format);
}

void FormatAttr::print(AsmPrinter &printer) const {
  printer << "<" << toFormat().presetName() << ", head_dim = " << getHeadDim();
  if (getIterations() != kvarn::kDefaultSinkhornIterations)
    printer << ", iterations = " << getIterations();
  if (getCompact())
    printer << ", layout = compact";
  printer << ">";
}

//===----------------------------------------------------------------------===//
// #kvarn.schedule
//===----------------------------------------------------------------------===//

LogicalResult ScheduleAttr::verify(function_ref<InFlightDiagnostic()> emitError, OpKind kind,
                                   int64_t warps, int64_t stages, int64_t splits,
                                   int64_t headsPerCta, StringRef mma, int64_t rowsPerCta,
                                   int64_t minCtas) {
  if (warps < 1 || warps > 32)
    return emitError() << "warps = " << warps << " (supported: 1 to 32)";
  if (stages < 1 || stages > 4)
    return emitError() << "stages = " << stages << " (supported: 1 to 4)";
  if (splits < 0 || splits > 256)
    return emitError() << "splits = " << splits << " (supported: 0 = planned, 1 to 256)";
  if (headsPerCta < 0)
    return emitError() << "heads_per_cta = " << headsPerCta << " must not be negative";
  if (!::kvarn::findMma(mma))
    return emitError() << "mma = \"" << mma << "\" (supported: " << ::kvarn::mmaNames() << ")";
  if (rowsPerCta < 1 || rowsPerCta > 64)
    return emitError() << "rows_per_cta = " << rowsPerCta << " (supported: 1 to 64)";
  if (minCtas < 0 || minCtas > 32)
    return emitError() << "min_ctas = " << minCtas << " (supported: 0 = no bound, 1 to 32)";
  return success();
}

namespace kvarn::dialect {

::kvarn::OpKind toRuntimeKind(OpKind kind) {
  switch (kind) {
  case OpKind::decode: return ::kvarn::OpKind::Decode;
  case OpKind::flush: return ::kvarn::OpKind::Flush;
  case OpKind::append: return ::kvarn::OpKind::Append;
  case OpKind::dequantize: return ::kvarn::OpKind::Dequantize;
  case OpKind::extend: return ::kvarn::OpKind::Extend;
  }
  llvm_unreachable("unknown op kind");
}

OpKind fromRuntimeKind(::kvarn::OpKind kind) {
  switch (kind) {
  case ::kvarn::OpKind::Decode: return OpKind::decode;
  case ::kvarn::OpKind::Flush: return OpKind::flush;
  case ::kvarn::OpKind::Append: return OpKind::append;
  case ::kvarn::OpKind::Dequantize: return OpKind::dequantize;
  case ::kvarn::OpKind::Extend: return OpKind::extend;
  }
  llvm_unreachable("unknown op kind");
}

::kvarn::Schedule toSchedule(ScheduleAttr attr) {
  ::kvarn::Schedule schedule;
  schedule.warps = static_cast<int>(attr.getWarps());
  schedule.stages = static_cast<int>(attr.getStages());
  schedule.splits = static_cast<int>(attr.getSplits());
  schedule.headsPerCta = static_cast<int>(attr.getHeadsPerCta());
  schedule.mma = attr.getMma().str();
  schedule.rowsPerCta = static_cast<int>(attr.getRowsPerCta());
  schedule.minCtas = static_cast<int>(attr.getMinCtas());
  return schedule;
}

ScheduleAttr fromSchedule(MLIRContext *context, ::kvarn::OpKind kind,
                          const ::kvarn::Schedule &schedule) {
  return ScheduleAttr::get(context, fromRuntimeKind(kind), schedule.warps, schedule.stages,
                           schedule.splits, schedule.headsPerCta, schedule.mma,
                           schedule.rowsPerCta, schedule.minCtas);
}

} // namespace kvarn::dialect
