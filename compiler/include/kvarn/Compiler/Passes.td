// kvarn compiler passes: specialize -> lower to tile IR -> lower to EmitC.
#ifndef KVARN_COMPILER_PASSES_TD
#define KVARN_COMPILER_PASSES_TD

include "mlir/Pass/PassBase.td"

def KvarnSpecialize : Pass<"kvarn-specialize", "mlir::ModuleOp"> {
  let summary = "Folds format and schedule defaults into explicit constants";
  let description = [{
    Resolves every "default" of an operation-level op so that later stages see constants only:
    `softmax_scale = 0` becomes `1/sqrt(head_dim)`, `heads_per_cta = 0` becomes the GQA group,
    and the op gets the record's byte size (`kvarn.tile_bytes`) and `kvarn.threads`.
  }];
  let dependentDialects = ["::kvarn::dialect::KvarnDialect"];
}

def KvarnLowerToTile : Pass<"kvarn-lower-to-tile", "mlir::ModuleOp"> {
  let summary = "Lowers operation-level kvarn ops into tile-level kernel functions";
  let description = [{
    Each function holding one operation-level op becomes a kernel function taking a
    `!kvarn.params<...>` block. Its body is built from the schedule: the page walk of each warp
    (`scf.for` over its pages, `stages` pages loaded before they are computed), the pool-or-record
    branch per page, the warp merge, and the split-KV output; a planned or multi-split decode also
    gets a `<name>_merge` kernel that merges the splits.
  }];
  let dependentDialects = ["::kvarn::dialect::KvarnDialect", "::mlir::scf::SCFDialect",
                           "::mlir::arith::ArithDialect", "::mlir::func::FuncDialect"];
}

def KvarnLowerToEmitC : Pass<"kvarn-lower-to-emitc", "mlir::ModuleOp"> {
  let summary = "Lowers tile-level kernels to EmitC calls into the device library";
  let description = [{
    Kernel functions become `extern "C" __global__` EmitC functions; `!kvarn.params` and
    `!kvarn.context` become the device library's structs, whose template arguments carry the
    format, GQA ratio, dtype and schedule; every tile op becomes a call of its building block;
    `scf` and `arith` go to EmitC with the upstream patterns.
  }];
  let dependentDialects = ["::mlir::emitc::EmitCDialect"];
  let options = [
    Option<"deviceHeader", "device-header", "std::string", "\"kvarn/device.cuh\"",
           "Header of the device library that the emitted source includes">
  ];
}

#endif // KVARN_COMPILER_PASSES_TD
