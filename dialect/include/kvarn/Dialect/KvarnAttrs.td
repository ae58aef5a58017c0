// kvarn attributes (#kvarn.format, #kvarn.schedule) and types (!kvarn.context, !kvarn.params).
#ifndef KVARN_DIALECT_ATTRS_TD
#define KVARN_DIALECT_ATTRS_TD

include "kvarn/Dialect/KvarnBase.td"

class Kvarn_Attr<string name, string attrMnemonic> : AttrDef<Kvarn_Dialect, name> {
  let mnemonic = attrMnemonic;
}

def Kvarn_FormatAttr : Kvarn_Attr<"Format", "format"> {
  let summary = "A KVarN storage format: bit widths, tile size, head_dim, normalization, layout";
  let description = [{
    Printed and parsed by preset name. `iterations` (Sinkhorn iterations, default 8) and
    `layout` (`reference`, the default, readable by the reference backend; or `compact`, which
    drops the power-of-two padding at head_dim >= 256) appear only when not default.

    ```mlir
    #kvarn.format<kvarn_k4v2_g128, head_dim = 128>
    #kvarn.format<kvarn_k2v2_g64, head_dim = 256, iterations = 16, layout = compact>
    ```
  }];
  let parameters = (ins "int64_t":$keyBits, "int64_t":$valueBits, "int64_t":$tileTokens,
                        "int64_t":$headDim, "int64_t":$iterations, "bool":$compact);
  let hasCustomAssemblyFormat = 1;
  let genVerifyDecl = 1;
  let extraClassDeclaration = [{
    /// The runtime's view of this format (layout math, validation).
    ::kvarn::Format toFormat() const;
    /// Record stride in the cache tensor.
    int64_t getTileBytesAligned() const;
    /// Builds the attribute of a runtime format.
    static FormatAttr fromFormat(::mlir::MLIRContext *context, const ::kvarn::Format &format);
  }];
}

def Kvarn_ScheduleAttr : Kvarn_Attr<"Schedule", "schedule"> {
  let summary = "The tunable knobs of one kernel";
  let description = [{
    - `warps`: warps per CTA (decode: each warp walks its own pages; flush: warps per tile).
    - `stages`: staging slots per decode warp: a rolling pipeline keeps the loads of the next
      stages - 1 pages in flight while the warp computes a page.
    - `splits`: kv splits per request; 0 = planned on the host per batch (CUDA-graph safe:
      the grid is fixed by the plan's maximum).
    - `heads_per_cta`: query heads per CTA; 0 = the whole GQA group (one read of each tile).
    - `mma`: `m16n8k16` (tensor cores on codes; the fp32 query and weight operands are split
      into two fp16 terms, about 22 significant bits, two MMAs per tile), `m16n8k16.single`
      (both operands rounded once to fp16: half the MMAs), `m16n8k16.single-q` / `-p` (only
      the scores' q' / only the output update's P' rounded once), `m16n8k16.centered-q` /
      `m16n8k16.centered-q-single-p` (q' rounded once, the low terms' sum at the codes' middle
      value added to the bias: one MMA per k-chunk instead of one per code tile; P' two terms /
      one) or `none` (CUDA cores; not for decode).
    - `rows_per_cta`: append only, token rows per CTA.
    - `min_ctas`: CTAs per SM the register allocation must leave room for
      (`__launch_bounds__(threads, min_ctas)`); 0 = no bound.

    ```mlir
    #kvarn.schedule<decode, warps = 4, stages = 2, splits = 0>
    #kvarn.schedule<flush, warps = 8>
    ```
  }];
  let parameters = (ins
    EnumParameter<Kvarn_OpKind>:$kind,
    DefaultValuedParameter<"int64_t", "4">:$warps,
    DefaultValuedParameter<"int64_t", "1">:$stages,
    DefaultValuedParameter<"int64_t", "0">:$splits,
    DefaultValuedParameter<"int64_t", "0">:$heads_per_cta,
    StringRefParameter<"MMA shape", "\"m16n8k16\"">:$mma,
    DefaultValuedParameter<"int64_t", "4">:$rows_per_cta,
    DefaultValuedParameter<"int64_t", "0">:$min_ctas);
  let assemblyFormat = "`<` $kind (`,` struct($warps, $stages, $splits, $heads_per_cta, $mma, $rows_per_cta, $min_ctas)^)? `>`";
  let genVerifyDecl = 1;
  let extraClassDeclaration = [{
    /// Threads per CTA.
    int64_t getThreads() const { return getWarps() * 32; }
  }];
}

class Kvarn_Type<string name, string typeMnemonic> : TypeDef<Kvarn_Dialect, name> {
  let mnemonic = typeMnemonic;
}

def Kvarn_ParamsType : Kvarn_Type<"Params", "params"> {
  let summary = "The by-value parameter block of a generated kernel (one Params struct per kernel)";
  let description = [{ `!kvarn.params<decode>`: pointers, strides and sizes of one launch. }];
  let parameters = (ins EnumParameter<Kvarn_OpKind>:$kind);
  let assemblyFormat = "`<` $kind `>`";
}

def Kvarn_ContextType : Kvarn_Type<"Context", "context"> {
  let summary = "Per-warp kernel state: ids, on-chip fragments, softmax state, load buffers";
  let description = [{
    `!kvarn.context<decode>`: created once per kernel by `kvarn.tile.begin`; tile ops read and
    update it in place (it lowers to a device-library struct held in registers).
  }];
  let parameters = (ins EnumParameter<Kvarn_OpKind>:$kind);
  let assemblyFormat = "`<` $kind `>`";
}

#endif // KVARN_DIALECT_ATTRS_TD
