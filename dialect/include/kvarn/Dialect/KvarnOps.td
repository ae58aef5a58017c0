// kvarn operations: operation-level ops on the engine memory model, and tile-level ops.
#ifndef KVARN_DIALECT_OPS_TD
#define KVARN_DIALECT_OPS_TD

include "kvarn/Dialect/KvarnAttrs.td"
include "mlir/Interfaces/SideEffectInterfaces.td"

class Kvarn_Op<string mnemonic, list<Trait> traits = []> : Op<Kvarn_Dialect, mnemonic, traits>;

//===----------------------------------------------------------------------===//
// Operation-level ops
//===----------------------------------------------------------------------===//

def Kvarn_AppendOp : Kvarn_Op<"append"> {
  let summary = "Rotates incoming K/V rows by H16 and writes them into fp16 pool slots";
  let description = [{
    `key`, `value`: `[T, Hk, D]` (f16 or bf16) rows of T new tokens; `slot_mapping`: `[T]` flat
    pool row index (`slot * G + offset`), negative entries are skipped; pools
    `[slots, G, Hk, D]` f16.

    ```mlir
    kvarn.append %k, %v, %slots, %pk, %pv {format = #kvarn.format<kvarn_k4v2_g128, head_dim = 128>,
        schedule = #kvarn.schedule<append>}
        : memref<?x8x128xf16>, memref<?x8x128xf16>, memref<?xi64>, memref<?x128x8x128xf16>,
          memref<?x128x8x128xf16>
    ```
  }];
  let arguments = (ins AnyMemRef:$key, AnyMemRef:$value, AnyMemRef:$slot_mapping,
                       AnyMemRef:$pool_key, AnyMemRef:$pool_value,
                       Kvarn_FormatAttr:$format, Kvarn_ScheduleAttr:$schedule);
  let assemblyFormat = [{
    $key `,` $value `,` $slot_mapping `,` $pool_key `,` $pool_value attr-dict `:` type($key) `,`
    type($value) `,` type($slot_mapping) `,` type($pool_key) `,` type($pool_value)
  }];
  let hasVerifier = 1;
}

def Kvarn_FlushOp : Kvarn_Op<"flush"> {
  let summary = "Quantizes full, committed pool tiles into tile records (Sinkhorn + RTN + pack)";
  let description = [{
    `entries`: `[E, 3]` i32 rows of (block, kv-head, pool slot); each quantizes pool tile
    `(slot, :, head, :)` of K and V into record `cache[block, head]`.

    ```mlir
    kvarn.flush %pk, %pv, %entries, %cache {format = #kvarn.format<kvarn_k4v2_g128, head_dim = 128>,
        schedule = #kvarn.schedule<flush, warps = 8>}
        : memref<?x128x8x128xf16>, memref<?x128x8x128xf16>, memref<?x3xi32>, memref<?x8x13824xi8>
    ```
  }];
  let arguments = (ins AnyMemRef:$pool_key, AnyMemRef:$pool_value, AnyMemRef:$entries,
                       AnyMemRef:$cache, Kvarn_FormatAttr:$format, Kvarn_ScheduleAttr:$schedule);
  let assemblyFormat = [{
    $pool_key `,` $pool_value `,` $entries `,` $cache attr-dict `:` type($pool_key) `,`
    type($pool_value) `,` type($entries) `,` type($cache)
  }];
  let hasVerifier = 1;
}

class Kvarn_AttentionOp<string mnemonic> : Kvarn_Op<mnemonic> {
  let hasVerifier = 1;
}

def Kvarn_DecodeOp : Kvarn_AttentionOp<"decode"> {
  let summary = "Paged decode attention (one query token per request) over records and pool pages";
  let description = [{
    `query`, `out`: `[B, Hq, D]` f16 or bf16 (un-rotated); `cache`: `[blocks, Hk, tile bytes]`
    i8; pools `[slots, G, Hk, D]` f16; `block_to_slot` `[blocks]`, `block_table` `[B, max]`,
    `seq_lens` `[B]` i32. `q_per_kv` = Hq / Hk. `softmax_scale` 0 means 1/sqrt(D).

    ```mlir
    kvarn.decode %q, %cache, %pk, %pv, %b2s, %table, %lens, %out {
        format = #kvarn.format<kvarn_k4v2_g128, head_dim = 128>, q_per_kv = 8 : i64,
        softmax_scale = 0.0 : f32, schedule = #kvarn.schedule<decode, warps = 4>}
        : memref<?x64x128xf16>, memref<?x8x13824xi8>, memref<?x128x8x128xf16>,
          memref<?x128x8x128xf16>, memref<?xi32>, memref<?x?xi32>, memref<?xi32>,
          memref<?x64x128xf16>
    ```
  }];
  let arguments = (ins AnyMemRef:$query, AnyMemRef:$cache, AnyMemRef:$pool_key,
                       AnyMemRef:$pool_value, AnyMemRef:$block_to_slot, AnyMemRef:$block_table,
                       AnyMemRef:$seq_lens, AnyMemRef:$out, Kvarn_FormatAttr:$format,
                       I64Attr:$q_per_kv, F32Attr:$softmax_scale, Kvarn_ScheduleAttr:$schedule);
  let assemblyFormat = [{
    $query `,` $cache `,` $pool_key `,` $pool_value `,` $block_to_slot `,` $block_table `,`
    $seq_lens `,` $out attr-dict `:` type($query) `,` type($cache) `,` type($pool_key) `,`
    type($pool_value) `,` type($block_to_slot) `,` type($block_table) `,` type($seq_lens) `,`
    type($out)
  }];
}

def Kvarn_ExtendOp : Kvarn_AttentionOp<"extend"> {
  let summary = "Paged attention for several query tokens per request, causal per row";
  let description = [{
    Chunked-prefill continuation and speculative verification. `query`, `out`: `[T, Hq, D]`;
    `query_start` `[B + 1]` i32 offsets of each request's query rows; the rest as `kvarn.decode`.

    ```mlir
    kvarn.extend %q, %starts, %cache, %pk, %pv, %b2s, %table, %lens, %out {
        format = #kvarn.format<kvarn_k4v2_g128, head_dim = 128>, q_per_kv = 8 : i64,
        softmax_scale = 0.0 : f32, schedule = #kvarn.schedule<extend>}
        : memref<?x64x128xf16>, memref<?xi32>, memref<?x8x13824xi8>, memref<?x128x8x128xf16>,
          memref<?x128x8x128xf16>, memref<?xi32>, memref<?x?xi32>, memref<?xi32>,
          memref<?x64x128xf16>
    ```
  }];
  let arguments = (ins AnyMemRef:$query, AnyMemRef:$query_start, AnyMemRef:$cache,
                       AnyMemRef:$pool_key, AnyMemRef:$pool_value, AnyMemRef:$block_to_slot,
                       AnyMemRef:$block_table, AnyMemRef:$seq_lens, AnyMemRef:$out,
                       Kvarn_FormatAttr:$format, I64Attr:$q_per_kv, F32Attr:$softmax_scale,
                       Kvarn_ScheduleAttr:$schedule);
  let assemblyFormat = [{
    $query `,` $query_start `,` $cache `,` $pool_key `,` $pool_value `,` $block_to_slot `,`
    $block_table `,` $seq_lens `,` $out attr-dict `:` type($query) `,` type($query_start) `,`
    type($cache) `,` type($pool_key) `,` type($pool_value) `,` type($block_to_slot) `,`
    type($block_table) `,` type($seq_lens) `,` type($out)
  }];
}

def Kvarn_DequantizeOp : Kvarn_Op<"dequantize"> {
  let summary = "Reconstructs fp16 K/V rows (rotated frame) from tile records";
  let description = [{
    `entries`: `[E, 2]` i32 rows of (block, kv-head); `key`, `value`: `[E, G, D]` f16 outputs.

    ```mlir
    kvarn.dequantize %cache, %entries, %k, %v {format = #kvarn.format<kvarn_k4v2_g128, head_dim = 128>,
        schedule = #kvarn.schedule<dequantize>}
        : memref<?x8x13824xi8>, memref<?x2xi32>, memref<?x128x128xf16>, memref<?x128x128xf16>
    ```
  }];
  let arguments = (ins AnyMemRef:$cache, AnyMemRef:$entries, AnyMemRef:$key, AnyMemRef:$value,
                       Kvarn_FormatAttr:$format, Kvarn_ScheduleAttr:$schedule);
  let assemblyFormat = [{
    $cache `,` $entries `,` $key `,` $value attr-dict `:` type($cache) `,` type($entries) `,`
    type($key) `,` type($value)
  }];
  let hasVerifier = 1;
}

//===----------------------------------------------------------------------===//
// Tile-level ops: each maps to one bounded device-library building block.
//===----------------------------------------------------------------------===//

class Kvarn_TileOp<string mnemonic, list<Trait> traits = []>
    : Kvarn_Op<"tile." # mnemonic, traits> {
  /// The device-library function this op calls (namespace kvarn::dev).
  string deviceFunction = "";
  let extraClassDeclaration = [{
    static ::llvm::StringRef getDeviceFunction() { return "}] # deviceFunction # [{"; }
  }];
}

def Kvarn_TileBeginOp : Kvarn_TileOp<"begin"> {
  let summary = "Creates a kernel's per-warp context from its parameter block";
  let description = [{
    Binds the format, schedule, GQA ratio and dtype into the context type's template arguments.

    ```mlir
    %ctx = kvarn.tile.begin %params {format = #kvarn.format<kvarn_k4v2_g128, head_dim = 128>,
        schedule = #kvarn.schedule<decode>, q_per_kv = 8 : i64, dtype = f16}
        : !kvarn.params<decode> -> !kvarn.context<decode>
    ```
  }];
  let arguments = (ins Kvarn_ParamsType:$params, Kvarn_FormatAttr:$format,
                       Kvarn_ScheduleAttr:$schedule, I64Attr:$q_per_kv, TypeAttr:$dtype);
  let results = (outs Kvarn_ContextType:$context);
  let assemblyFormat = "$params attr-dict `:` qualified(type($params)) `->` qualified(type($context))";
  let hasVerifier = 1;
  let deviceFunction = "begin";
}

class Kvarn_ContextOp<string mnemonic, string function, dag extraArgs = (ins)>
    : Kvarn_TileOp<mnemonic> {
  let arguments = !con((ins Kvarn_ContextType:$context), extraArgs);
  let deviceFunction = function;
}

def Kvarn_TileRotateQueryOp : Kvarn_ContextOp<"rotate_query", "rotateQuery"> {
  let summary = "Loads the GQA group's queries, rotates them by H16 (warp FWHT) into fragments";
  let description = [{ ```mlir
    kvarn.tile.rotate_query %ctx : !kvarn.context<decode>
  ``` }];
  let assemblyFormat = "$context attr-dict `:` qualified(type($context))";
}

def Kvarn_TilePageRangeOp : Kvarn_TileOp<"page_range"> {
  let summary = "This warp's pages: first, end and stride of the block-table walk";
  let description = [{ ```mlir
    %first, %end, %step = kvarn.tile.page_range %ctx : !kvarn.context<decode> -> i32, i32, i32
  ``` }];
  let arguments = (ins Kvarn_ContextType:$context);
  let results = (outs I32:$first, I32:$end, I32:$step);
  let assemblyFormat = "$context attr-dict `:` qualified(type($context)) `->` type(results)";
  let deviceFunction = "pageRange";
}

def Kvarn_TileIsPoolPageOp : Kvarn_TileOp<"is_pool_page"> {
  let summary = "True when a page is still fp16 in the pool (block_to_slot >= 0)";
  let description = [{ ```mlir
    %pool = kvarn.tile.is_pool_page %ctx, %page : !kvarn.context<decode>, i32
  ``` }];
  let arguments = (ins Kvarn_ContextType:$context, I32:$page);
  let results = (outs I1:$isPool);
  let assemblyFormat = "$context `,` $page attr-dict `:` qualified(type($context)) `,` type($page)";
  let deviceFunction = "isPoolPage";
}

def Kvarn_TileLoadRecordOp : Kvarn_TileOp<"load_record"> {
  let summary = "Issues the asynchronous loads of one record page into staging slot `slot`";
  let description = [{
    Copies the page's codes and scales when the page is in this warp's range and quantized, and
    always closes one copy group, so a consumer waits for exactly the group of its slot. The
    slot is a runtime value (a rolling pipeline cycles through the schedule's stages), so the
    page loop has one copy of the compute code whatever the stage count.
    ```mlir
    kvarn.tile.load_record %ctx, %page, slot %s : !kvarn.context<decode>, i32
  ``` }];
  let arguments = (ins Kvarn_ContextType:$context, I32:$page, I32:$slot);
  let assemblyFormat =
      "$context `,` $page `,` `slot` $slot attr-dict `:` qualified(type($context)) `,` type($page)";
  let hasVerifier = 1;
  let deviceFunction = "loadRecord";
}

class Kvarn_LoadPartOp<string mnemonic, string function, string what>
    : Kvarn_TileOp<mnemonic> {
  let summary = "Issues the asynchronous loads of one record page's " # what;
  let description = [{
    The one-stage pipeline loads a page in two copy groups, so each half lands while the warp
    computes: `load_keys` (K codes and K scales) after the scores of the previous page, and
    `load_values` (V codes and V scales) after its output update. Like `load_record`, each
    always closes one copy group. Valid only with a one-stage schedule (the device code's waits
    count two groups per page). A page's `load_keys` comes before its `is_pool_page` and its
    `load_values`: where the device code looks a page up once, those two reuse that lookup.
  }];
  let arguments = (ins Kvarn_ContextType:$context, I32:$page, I32:$slot);
  let assemblyFormat =
      "$context `,` $page `,` `slot` $slot attr-dict `:` qualified(type($context)) `,` type($page)";
  let hasVerifier = 1;
  let deviceFunction = function;
}

def Kvarn_TileLoadKeysOp : Kvarn_LoadPartOp<"load_keys", "loadKeys", "K codes and K scales">;
def Kvarn_TileLoadValuesOp
    : Kvarn_LoadPartOp<"load_values", "loadValues", "V codes and V scales">;

class Kvarn_SlotOp<string mnemonic, string function> : Kvarn_TileOp<mnemonic> {
  let arguments = (ins Kvarn_ContextType:$context, I32:$slot);
  let assemblyFormat = "$context `,` `slot` $slot attr-dict `:` qualified(type($context))";
  let hasVerifier = 1;
  let deviceFunction = function;
}

def Kvarn_TileScoresOnCodesOp : Kvarn_SlotOp<"scores_on_codes", "scoresOnCodes"> {
  let summary = "Scores of a record page: tensor-core MMA of scaled queries with the K codes";
  let description = [{
    `s[g] = K_s_row[g] * (sum_d (q[d] K_s_col[d]) code[d][g] + sum_d q[d] K_zp[d]) * scale`
    for the page staged in `slot` (waits for its loads; the page masks tokens past the end).
    ```mlir
    kvarn.tile.scores_on_codes %ctx, %page, slot %s : !kvarn.context<decode>, i32
    ```
  }];
  let arguments = (ins Kvarn_ContextType:$context, I32:$page, I32:$slot);
  let assemblyFormat =
      "$context `,` $page `,` `slot` $slot attr-dict `:` qualified(type($context)) `,` type($page)";
}

def Kvarn_TileOnlineSoftmaxOp : Kvarn_SlotOp<"online_softmax", "onlineSoftmax"> {
  let summary = "Online-softmax step: running max and sum, rescale of the output accumulator";
  let description = [{ ```mlir
    kvarn.tile.online_softmax %ctx, slot %s : !kvarn.context<decode>
  ``` }];
}

def Kvarn_TilePvOnCodesOp : Kvarn_SlotOp<"pv_on_codes", "pvOnCodes"> {
  let summary = "Output update of a record page: tensor-core MMA of V codes with scaled weights";
  let description = [{
    `o[d] += V_s_col[d] * (sum_g (p[g] V_s_row[g]) code[g][d] + sum_g p[g] V_zp[g])`.
    ```mlir
    kvarn.tile.pv_on_codes %ctx, slot %s : !kvarn.context<decode>
    ```
  }];
}

def Kvarn_TileAttendPoolPageOp : Kvarn_TileOp<"attend_pool_page"> {
  let summary = "Scores, softmax step and output update of one fp16 pool page";
  let description = [{ ```mlir
    kvarn.tile.attend_pool_page %ctx, %page : !kvarn.context<decode>, i32
  ``` }];
  let arguments = (ins Kvarn_ContextType:$context, I32:$page);
  let assemblyFormat = "$context `,` $page attr-dict `:` qualified(type($context)) `,` type($page)";
  let deviceFunction = "attendPoolPage";
}

def Kvarn_TileMergeWarpsOp : Kvarn_ContextOp<"merge_warps", "mergeWarps"> {
  let summary = "Merges the warps' softmax states and outputs through shared memory";
  let description = [{ ```mlir
    kvarn.tile.merge_warps %ctx : !kvarn.context<decode>
  ``` }];
  let assemblyFormat = "$context attr-dict `:` qualified(type($context))";
}

def Kvarn_TileStoreOutputOp : Kvarn_ContextOp<"store_output", "storeOutput", (ins BoolAttr:$partial)> {
  let summary = "Stores a split's partial (output, LSE) or the final un-rotated output";
  let description = [{
    With `partial = false` the output is normalized, rounded, un-rotated (warp FWHT) and stored.
    With `partial = true`, a request with one split still stores its final output; others store
    the split's (output, LSE) for `kvarn.tile.merge_splits`.
    ```mlir
    kvarn.tile.store_output %ctx {partial = true} : !kvarn.context<decode>
    ```
  }];
  let assemblyFormat = "$context attr-dict `:` qualified(type($context))";
}

def Kvarn_TileReleaseMergeOp : Kvarn_ContextOp<"release_merge", "releaseMerge"> {
  let summary = "Lets the split-merge kernel start early (programmatic dependent launch)";
  let description = [{
    Emitted in decode kernels that may run several splits. On sm_90 and later the runtime
    launches the merge kernel as this kernel's programmatic dependent; once every CTA has passed
    this op the merge's CTAs may become resident and wait, inside `kvarn.tile.merge_splits`,
    for this grid to complete. Earlier architectures ignore it.
    ```mlir
    kvarn.tile.release_merge %ctx : !kvarn.context<decode>
    ```
  }];
  let assemblyFormat = "$context attr-dict `:` qualified(type($context))";
}

def Kvarn_TileMergeSplitsOp : Kvarn_ContextOp<"merge_splits", "mergeSplits"> {
  let summary = "Merges the splits' partial outputs by LSE, un-rotates and stores";
  let description = [{ ```mlir
    kvarn.tile.merge_splits %ctx : !kvarn.context<decode>
  ``` }];
  let assemblyFormat = "$context attr-dict `:` qualified(type($context))";
}

def Kvarn_TileLoadTileOp : Kvarn_ContextOp<"load_tile", "loadTile", (ins I64Attr:$tensor)> {
  let summary = "Loads one fp16 pool tile (tensor 0 = K, 1 = V) into shared memory";
  let description = [{ ```mlir
    kvarn.tile.load_tile %ctx {tensor = 0 : i64} : !kvarn.context<flush>
  ``` }];
  let assemblyFormat = "$context attr-dict `:` qualified(type($context))";
}

def Kvarn_TileNormalizeOp : Kvarn_ContextOp<"normalize", "normalize", (ins I64Attr:$iterations)> {
  let summary = "Sinkhorn variance normalization with best-iterate tracking, on chip";
  let description = [{ ```mlir
    kvarn.tile.normalize %ctx {iterations = 8 : i64} : !kvarn.context<flush>
  ``` }];
  let assemblyFormat = "$context attr-dict `:` qualified(type($context))";
}

def Kvarn_TileQuantizePackOp : Kvarn_ContextOp<"quantize_pack", "quantizePack", (ins I64Attr:$tensor)> {
  let summary = "Row-wise RTN, scale folding and packing of the normalized tile into the record";
  let description = [{ ```mlir
    kvarn.tile.quantize_pack %ctx {tensor = 0 : i64} : !kvarn.context<flush>
  ``` }];
  let assemblyFormat = "$context attr-dict `:` qualified(type($context))";
}

def Kvarn_TileRowRangeOp : Kvarn_TileOp<"row_range"> {
  let summary = "This CTA's rows of an append or dequantize launch: first, end, stride";
  let description = [{ ```mlir
    %first, %end, %step = kvarn.tile.row_range %ctx : !kvarn.context<append> -> i32, i32, i32
  ``` }];
  let arguments = (ins Kvarn_ContextType:$context);
  let results = (outs I32:$first, I32:$end, I32:$step);
  let assemblyFormat = "$context attr-dict `:` qualified(type($context)) `->` type(results)";
  let deviceFunction = "rowRange";
}

def Kvarn_TileRotateRowOp : Kvarn_TileOp<"rotate_row"> {
  let summary = "Rotates one token's K and V rows (all kv heads) and writes its pool slot";
  let description = [{ ```mlir
    kvarn.tile.rotate_row %ctx, %row : !kvarn.context<append>, i32
  ``` }];
  let arguments = (ins Kvarn_ContextType:$context, I32:$row);
  let assemblyFormat = "$context `,` $row attr-dict `:` qualified(type($context)) `,` type($row)";
  let deviceFunction = "rotateRow";
}

def Kvarn_TileDequantizeRowOp : Kvarn_TileOp<"dequantize_row"> {
  let summary = "Reconstructs one token row of K and V of a record";
  let description = [{ ```mlir
    kvarn.tile.dequantize_row %ctx, %row : !kvarn.context<dequantize>, i32
  ``` }];
  let arguments = (ins Kvarn_ContextType:$context, I32:$row);
  let assemblyFormat = "$context `,` $row attr-dict `:` qualified(type($context)) `,` type($row)";
  let deviceFunction = "dequantizeRow";
}

#endif // KVARN_DIALECT_OPS_TD
