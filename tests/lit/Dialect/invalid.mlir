// RUN: kvarn-opt %s -split-input-file -verify-diagnostics
// Every verifier message of the kvarn dialect, one case per branch.

// expected-error @+1 {{unsupported head_dim: 96 (supported: 64, 128, 256, 512)}}
func.func private @f() attributes {x = #kvarn.format<kvarn_k4v2_g128, head_dim = 96>}

// -----

// expected-error @+1 {{key bits: 3 needs a bit-stream packer}}
func.func private @f() attributes {x = #kvarn.format<kvarn_k3v2_g128, head_dim = 128>}

// -----

// expected-error @+1 {{unsupported tile size G: 32 (supported: 64, 128)}}
func.func private @f() attributes {x = #kvarn.format<kvarn_k4v2_g32, head_dim = 128>}

// -----

// expected-error @+1 {{malformed preset 'kvarn_q4v2_g128'}}
func.func private @f() attributes {x = #kvarn.format<kvarn_q4v2_g128, head_dim = 128>}

// -----

// expected-error @+1 {{unsupported Sinkhorn iteration count: 99 (supported: 0 to 64)}}
func.func private @f() attributes {x = #kvarn.format<kvarn_k4v2_g128, head_dim = 128, iterations = 99>}

// -----

// expected-error @+1 {{unknown record layout 'dense' (supported: reference, compact)}}
func.func private @f() attributes {x = #kvarn.format<kvarn_k4v2_g128, head_dim = 128, layout = dense>}

// -----

// expected-error @+1 {{unknown format parameter 'bits' (supported: iterations, layout)}}
func.func private @f() attributes {x = #kvarn.format<kvarn_k4v2_g128, head_dim = 128, bits = 4>}

// -----

// expected-error @+1 {{warps = 33 (supported: 1 to 32)}}
func.func private @f() attributes {x = #kvarn.schedule<decode, warps = 33>}

// -----

// expected-error @+1 {{stages = 0 (supported: 1 to 4)}}
func.func private @f() attributes {x = #kvarn.schedule<decode, stages = 0>}

// -----

// expected-error @+1 {{splits = -1 (supported: 0 = planned, 1 to 256)}}
func.func private @f() attributes {x = #kvarn.schedule<decode, splits = -1>}

// -----

// expected-error @+1 {{heads_per_cta = -2 must not be negative}}
func.func private @f() attributes {x = #kvarn.schedule<decode, heads_per_cta = -2>}

// -----

// expected-error @+1 {{mma = "wgmma" (supported: m16n8k16, m16n8k16.single, m16n8k16.single-q, m16n8k16.single-p, m16n8k16.centered-q, m16n8k16.centered-q-single-p, none)}}
func.func private @f() attributes {x = #kvarn.schedule<decode, mma = "wgmma">}

// -----

// expected-error @+1 {{rows_per_cta = 0 (supported: 1 to 64)}}
func.func private @f() attributes {x = #kvarn.schedule<append, rows_per_cta = 0>}

// -----

func.func @decode_rank(%q: memref<?x128xf16>, %cache: memref<?x8x13824xi8>, %pk: memref<?x128x8x128xf16>,
                       %pv: memref<?x128x8x128xf16>, %b2s: memref<?xi32>, %t: memref<?x?xi32>,
                       %l: memref<?xi32>, %o: memref<?x64x128xf16>) {
  // expected-error @+1 {{'query' must be a rank-3 memref, got memref<?x128xf16>}}
  kvarn.decode %q, %cache, %pk, %pv, %b2s, %t, %l, %o {format = #kvarn.format<kvarn_k4v2_g128, head_dim = 128>,
      q_per_kv = 8 : i64, softmax_scale = 0.0 : f32, schedule = #kvarn.schedule<decode>}
      : memref<?x128xf16>, memref<?x8x13824xi8>, memref<?x128x8x128xf16>, memref<?x128x8x128xf16>,
        memref<?xi32>, memref<?x?xi32>, memref<?xi32>, memref<?x64x128xf16>
  return
}

// -----

func.func @decode_element(%q: memref<?x64x128xf32>, %cache: memref<?x8x13824xi8>, %pk: memref<?x128x8x128xf16>,
                          %pv: memref<?x128x8x128xf16>, %b2s: memref<?xi32>, %t: memref<?x?xi32>,
                          %l: memref<?xi32>, %o: memref<?x64x128xf32>) {
  // expected-error @+1 {{'query' must have f16 or bf16 elements, got f32}}
  kvarn.decode %q, %cache, %pk, %pv, %b2s, %t, %l, %o {format = #kvarn.format<kvarn_k4v2_g128, head_dim = 128>,
      q_per_kv = 8 : i64, softmax_scale = 0.0 : f32, schedule = #kvarn.schedule<decode>}
      : memref<?x64x128xf32>, memref<?x8x13824xi8>, memref<?x128x8x128xf16>, memref<?x128x8x128xf16>,
        memref<?xi32>, memref<?x?xi32>, memref<?xi32>, memref<?x64x128xf32>
  return
}

// -----

func.func @decode_record_size(%q: memref<?x64x128xf16>, %cache: memref<?x8x17920xi8>, %pk: memref<?x128x8x128xf16>,
                              %pv: memref<?x128x8x128xf16>, %b2s: memref<?xi32>, %t: memref<?x?xi32>,
                              %l: memref<?xi32>, %o: memref<?x64x128xf16>) {
  // expected-error @+1 {{'cache' dimension 2 is 17920; the format needs 13824}}
  kvarn.decode %q, %cache, %pk, %pv, %b2s, %t, %l, %o {format = #kvarn.format<kvarn_k4v2_g128, head_dim = 128>,
      q_per_kv = 8 : i64, softmax_scale = 0.0 : f32, schedule = #kvarn.schedule<decode>}
      : memref<?x64x128xf16>, memref<?x8x17920xi8>, memref<?x128x8x128xf16>, memref<?x128x8x128xf16>,
        memref<?xi32>, memref<?x?xi32>, memref<?xi32>, memref<?x64x128xf16>
  return
}

// -----

func.func @decode_out_type(%q: memref<?x64x128xf16>, %cache: memref<?x8x13824xi8>, %pk: memref<?x128x8x128xf16>,
                           %pv: memref<?x128x8x128xf16>, %b2s: memref<?xi32>, %t: memref<?x?xi32>,
                           %l: memref<?xi32>, %o: memref<?x64x128xbf16>) {
  // expected-error @+1 {{'out' must have the type of 'query'}}
  kvarn.decode %q, %cache, %pk, %pv, %b2s, %t, %l, %o {format = #kvarn.format<kvarn_k4v2_g128, head_dim = 128>,
      q_per_kv = 8 : i64, softmax_scale = 0.0 : f32, schedule = #kvarn.schedule<decode>}
      : memref<?x64x128xf16>, memref<?x8x13824xi8>, memref<?x128x8x128xf16>, memref<?x128x8x128xf16>,
        memref<?xi32>, memref<?x?xi32>, memref<?xi32>, memref<?x64x128xbf16>
  return
}

// -----

func.func @decode_heads(%q: memref<?x64x128xf16>, %cache: memref<?x4x13824xi8>, %pk: memref<?x128x8x128xf16>,
                        %pv: memref<?x128x8x128xf16>, %b2s: memref<?xi32>, %t: memref<?x?xi32>,
                        %l: memref<?xi32>, %o: memref<?x64x128xf16>) {
  // expected-error @+1 {{'cache' dimension 1 (4) differs from 'pool_key' dimension 2 (8)}}
  kvarn.decode %q, %cache, %pk, %pv, %b2s, %t, %l, %o {format = #kvarn.format<kvarn_k4v2_g128, head_dim = 128>,
      q_per_kv = 8 : i64, softmax_scale = 0.0 : f32, schedule = #kvarn.schedule<decode>}
      : memref<?x64x128xf16>, memref<?x4x13824xi8>, memref<?x128x8x128xf16>, memref<?x128x8x128xf16>,
        memref<?xi32>, memref<?x?xi32>, memref<?xi32>, memref<?x64x128xf16>
  return
}

// -----

func.func @decode_gqa(%q: memref<?x48x128xf16>, %cache: memref<?x8x13824xi8>, %pk: memref<?x128x8x128xf16>,
                      %pv: memref<?x128x8x128xf16>, %b2s: memref<?xi32>, %t: memref<?x?xi32>,
                      %l: memref<?xi32>, %o: memref<?x48x128xf16>) {
  // expected-error @+1 {{query heads (48) must equal kv heads (8) times q_per_kv (8)}}
  kvarn.decode %q, %cache, %pk, %pv, %b2s, %t, %l, %o {format = #kvarn.format<kvarn_k4v2_g128, head_dim = 128>,
      q_per_kv = 8 : i64, softmax_scale = 0.0 : f32, schedule = #kvarn.schedule<decode>}
      : memref<?x48x128xf16>, memref<?x8x13824xi8>, memref<?x128x8x128xf16>, memref<?x128x8x128xf16>,
        memref<?xi32>, memref<?x?xi32>, memref<?xi32>, memref<?x48x128xf16>
  return
}

// -----

func.func @decode_q(%q: memref<?x?x128xf16>, %cache: memref<?x?x13824xi8>, %pk: memref<?x128x?x128xf16>,
                    %pv: memref<?x128x?x128xf16>, %b2s: memref<?xi32>, %t: memref<?x?xi32>,
                    %l: memref<?xi32>, %o: memref<?x?x128xf16>) {
  // expected-error @+1 {{q_per_kv = 17 (supported: 1 to 16)}}
  kvarn.decode %q, %cache, %pk, %pv, %b2s, %t, %l, %o {format = #kvarn.format<kvarn_k4v2_g128, head_dim = 128>,
      q_per_kv = 17 : i64, softmax_scale = 0.0 : f32, schedule = #kvarn.schedule<decode>}
      : memref<?x?x128xf16>, memref<?x?x13824xi8>, memref<?x128x?x128xf16>, memref<?x128x?x128xf16>,
        memref<?xi32>, memref<?x?xi32>, memref<?xi32>, memref<?x?x128xf16>
  return
}

// -----

func.func @decode_scale(%q: memref<?x?x128xf16>, %cache: memref<?x?x13824xi8>, %pk: memref<?x128x?x128xf16>,
                        %pv: memref<?x128x?x128xf16>, %b2s: memref<?xi32>, %t: memref<?x?xi32>,
                        %l: memref<?xi32>, %o: memref<?x?x128xf16>) {
  // expected-error @+1 {{softmax_scale must be >= 0 (0 means 1/sqrt(head_dim))}}
  kvarn.decode %q, %cache, %pk, %pv, %b2s, %t, %l, %o {format = #kvarn.format<kvarn_k4v2_g128, head_dim = 128>,
      q_per_kv = 8 : i64, softmax_scale = -1.0 : f32, schedule = #kvarn.schedule<decode>}
      : memref<?x?x128xf16>, memref<?x?x13824xi8>, memref<?x128x?x128xf16>, memref<?x128x?x128xf16>,
        memref<?xi32>, memref<?x?xi32>, memref<?xi32>, memref<?x?x128xf16>
  return
}

// -----

func.func @decode_kind(%q: memref<?x?x128xf16>, %cache: memref<?x?x13824xi8>, %pk: memref<?x128x?x128xf16>,
                       %pv: memref<?x128x?x128xf16>, %b2s: memref<?xi32>, %t: memref<?x?xi32>,
                       %l: memref<?xi32>, %o: memref<?x?x128xf16>) {
  // expected-error @+1 {{schedule is for 'flush' but the op is 'decode'}}
  kvarn.decode %q, %cache, %pk, %pv, %b2s, %t, %l, %o {format = #kvarn.format<kvarn_k4v2_g128, head_dim = 128>,
      q_per_kv = 8 : i64, softmax_scale = 0.0 : f32, schedule = #kvarn.schedule<flush>}
      : memref<?x?x128xf16>, memref<?x?x13824xi8>, memref<?x128x?x128xf16>, memref<?x128x?x128xf16>,
        memref<?xi32>, memref<?x?xi32>, memref<?xi32>, memref<?x?x128xf16>
  return
}

// -----

module attributes {kvarn.target = "sm_89"} {
func.func @decode_smem(%q: memref<?x?x256xf16>, %cache: memref<?x?x32768xi8>, %pk: memref<?x128x?x256xf16>,
                       %pv: memref<?x128x?x256xf16>, %b2s: memref<?xi32>, %t: memref<?x?xi32>,
                       %l: memref<?xi32>, %o: memref<?x?x256xf16>) {
  // expected-error @+1 {{shared memory per CTA; sm_89 allows 101376}}
  kvarn.decode %q, %cache, %pk, %pv, %b2s, %t, %l, %o {format = #kvarn.format<kvarn_k4v2_g128, head_dim = 256>,
      q_per_kv = 16 : i64, softmax_scale = 0.0 : f32, schedule = #kvarn.schedule<decode, warps = 8>}
      : memref<?x?x256xf16>, memref<?x?x32768xi8>, memref<?x128x?x256xf16>, memref<?x128x?x256xf16>,
        memref<?xi32>, memref<?x?xi32>, memref<?xi32>, memref<?x?x256xf16>
  return
}
}

// -----

module attributes {kvarn.target = "sm_42"} {
func.func @decode_arch(%q: memref<?x?x128xf16>, %cache: memref<?x?x13824xi8>, %pk: memref<?x128x?x128xf16>,
                       %pv: memref<?x128x?x128xf16>, %b2s: memref<?xi32>, %t: memref<?x?xi32>,
                       %l: memref<?xi32>, %o: memref<?x?x128xf16>) {
  // expected-error @+1 {{unsupported arch 'sm_42'}}
  kvarn.decode %q, %cache, %pk, %pv, %b2s, %t, %l, %o {format = #kvarn.format<kvarn_k4v2_g128, head_dim = 128>,
      q_per_kv = 8 : i64, softmax_scale = 0.0 : f32, schedule = #kvarn.schedule<decode>}
      : memref<?x?x128xf16>, memref<?x?x13824xi8>, memref<?x128x?x128xf16>, memref<?x128x?x128xf16>,
        memref<?xi32>, memref<?x?xi32>, memref<?xi32>, memref<?x?x128xf16>
  return
}
}

// -----

func.func @decode_heads_per_cta(%q: memref<?x?x128xf16>, %cache: memref<?x?x13824xi8>, %pk: memref<?x128x?x128xf16>,
                                %pv: memref<?x128x?x128xf16>, %b2s: memref<?xi32>, %t: memref<?x?xi32>,
                                %l: memref<?xi32>, %o: memref<?x?x128xf16>) {
  // expected-error @+1 {{heads_per_cta = 4 (supported: 0 or the whole GQA group, 8)}}
  kvarn.decode %q, %cache, %pk, %pv, %b2s, %t, %l, %o {format = #kvarn.format<kvarn_k4v2_g128, head_dim = 128>,
      q_per_kv = 8 : i64, softmax_scale = 0.0 : f32, schedule = #kvarn.schedule<decode, heads_per_cta = 4>}
      : memref<?x?x128xf16>, memref<?x?x13824xi8>, memref<?x128x?x128xf16>, memref<?x128x?x128xf16>,
        memref<?xi32>, memref<?x?xi32>, memref<?xi32>, memref<?x?x128xf16>
  return
}

// -----

func.func @decode_mma(%q: memref<?x?x128xf16>, %cache: memref<?x?x13824xi8>, %pk: memref<?x128x?x128xf16>,
                      %pv: memref<?x128x?x128xf16>, %b2s: memref<?xi32>, %t: memref<?x?xi32>,
                      %l: memref<?xi32>, %o: memref<?x?x128xf16>) {
  // expected-error @+1 {{mma = none is not implemented for decode (it needs tensor cores)}}
  kvarn.decode %q, %cache, %pk, %pv, %b2s, %t, %l, %o {format = #kvarn.format<kvarn_k4v2_g128, head_dim = 128>,
      q_per_kv = 8 : i64, softmax_scale = 0.0 : f32, schedule = #kvarn.schedule<decode, mma = "none">}
      : memref<?x?x128xf16>, memref<?x?x13824xi8>, memref<?x128x?x128xf16>, memref<?x128x?x128xf16>,
        memref<?xi32>, memref<?x?xi32>, memref<?xi32>, memref<?x?x128xf16>
  return
}

// -----

func.func @extend_starts(%q: memref<?x?x128xf16>, %s: memref<?xi64>, %cache: memref<?x?x13824xi8>,
                         %pk: memref<?x128x?x128xf16>, %pv: memref<?x128x?x128xf16>, %b2s: memref<?xi32>,
                         %t: memref<?x?xi32>, %l: memref<?xi32>, %o: memref<?x?x128xf16>) {
  // expected-error @+1 {{'query_start' must have i32 elements, got i64}}
  kvarn.extend %q, %s, %cache, %pk, %pv, %b2s, %t, %l, %o {format = #kvarn.format<kvarn_k4v2_g128, head_dim = 128>,
      q_per_kv = 8 : i64, softmax_scale = 0.0 : f32, schedule = #kvarn.schedule<extend>}
      : memref<?x?x128xf16>, memref<?xi64>, memref<?x?x13824xi8>, memref<?x128x?x128xf16>,
        memref<?x128x?x128xf16>, memref<?xi32>, memref<?x?xi32>, memref<?xi32>, memref<?x?x128xf16>
  return
}

// -----

func.func @append_types(%k: memref<?x8x128xf16>, %v: memref<?x8x128xbf16>, %s: memref<?xi64>,
                        %pk: memref<?x128x8x128xf16>, %pv: memref<?x128x8x128xf16>) {
  // expected-error @+1 {{'key' and 'value' must have the same type}}
  kvarn.append %k, %v, %s, %pk, %pv {format = #kvarn.format<kvarn_k4v2_g128, head_dim = 128>,
      schedule = #kvarn.schedule<append>}
      : memref<?x8x128xf16>, memref<?x8x128xbf16>, memref<?xi64>, memref<?x128x8x128xf16>, memref<?x128x8x128xf16>
  return
}

// -----

func.func @append_slots(%k: memref<?x8x128xf16>, %v: memref<?x8x128xf16>, %s: memref<?xf32>,
                        %pk: memref<?x128x8x128xf16>, %pv: memref<?x128x8x128xf16>) {
  // expected-error @+1 {{'slot_mapping' must have i32 or i64 elements, got f32}}
  kvarn.append %k, %v, %s, %pk, %pv {format = #kvarn.format<kvarn_k4v2_g128, head_dim = 128>,
      schedule = #kvarn.schedule<append>}
      : memref<?x8x128xf16>, memref<?x8x128xf16>, memref<?xf32>, memref<?x128x8x128xf16>, memref<?x128x8x128xf16>
  return
}

// -----

func.func @flush_entries(%pk: memref<?x128x8x128xf16>, %pv: memref<?x128x8x128xf16>,
                         %e: memref<?x2xi32>, %cache: memref<?x8x13824xi8>) {
  // expected-error @+1 {{'entries' dimension 1 is 2; the format needs 3}}
  kvarn.flush %pk, %pv, %e, %cache {format = #kvarn.format<kvarn_k4v2_g128, head_dim = 128>,
      schedule = #kvarn.schedule<flush>}
      : memref<?x128x8x128xf16>, memref<?x128x8x128xf16>, memref<?x2xi32>, memref<?x8x13824xi8>
  return
}

// -----

func.func @flush_pool(%pk: memref<?x64x8x128xf16>, %pv: memref<?x128x8x128xf16>,
                      %e: memref<?x3xi32>, %cache: memref<?x8x13824xi8>) {
  // expected-error @+1 {{'pool_key' dimension 1 is 64; the format needs 128}}
  kvarn.flush %pk, %pv, %e, %cache {format = #kvarn.format<kvarn_k4v2_g128, head_dim = 128>,
      schedule = #kvarn.schedule<flush>}
      : memref<?x64x8x128xf16>, memref<?x128x8x128xf16>, memref<?x3xi32>, memref<?x8x13824xi8>
  return
}

// -----

func.func @dequantize_entries(%cache: memref<?x8x13824xi8>, %e: memref<4x2xi32>,
                              %k: memref<5x128x128xf16>, %v: memref<5x128x128xf16>) {
  // expected-error @+1 {{'entries' dimension 0 (4) differs from 'key' dimension 0 (5)}}
  kvarn.dequantize %cache, %e, %k, %v {format = #kvarn.format<kvarn_k4v2_g128, head_dim = 128>,
      schedule = #kvarn.schedule<dequantize>}
      : memref<?x8x13824xi8>, memref<4x2xi32>, memref<5x128x128xf16>, memref<5x128x128xf16>
  return
}

// -----

func.func @begin_kind(%p: !kvarn.params<decode>) {
  // expected-error @+1 {{context kind 'flush' differs from the params kind 'decode'}}
  %c = kvarn.tile.begin %p {format = #kvarn.format<kvarn_k4v2_g128, head_dim = 128>,
      schedule = #kvarn.schedule<decode>, q_per_kv = 8 : i64, dtype = f16}
      : !kvarn.params<decode> -> !kvarn.context<flush>
  return
}

// -----

func.func @begin_dtype(%p: !kvarn.params<decode>) {
  // expected-error @+1 {{dtype must be f16 or bf16, got f32}}
  %c = kvarn.tile.begin %p {format = #kvarn.format<kvarn_k4v2_g128, head_dim = 128>,
      schedule = #kvarn.schedule<decode>, q_per_kv = 8 : i64, dtype = f32}
      : !kvarn.params<decode> -> !kvarn.context<decode>
  return
}

// -----

func.func @slot(%p: !kvarn.params<decode>, %page: i32) {
  %c = kvarn.tile.begin %p {format = #kvarn.format<kvarn_k4v2_g128, head_dim = 128>,
      schedule = #kvarn.schedule<decode, stages = 2>, q_per_kv = 8 : i64, dtype = f16}
      : !kvarn.params<decode> -> !kvarn.context<decode>
  %slot = arith.constant 2 : i32
  // expected-error @+1 {{slot 2 is outside the schedule's 2 stage(s)}}
  kvarn.tile.load_record %c, %page, slot %slot : !kvarn.context<decode>, i32
  return
}

// -----

func.func @split_loads_need_one_stage(%p: !kvarn.params<decode>, %page: i32) {
  %c = kvarn.tile.begin %p {format = #kvarn.format<kvarn_k4v2_g128, head_dim = 128>,
      schedule = #kvarn.schedule<decode, stages = 2>, q_per_kv = 8 : i64, dtype = f16}
      : !kvarn.params<decode> -> !kvarn.context<decode>
  %slot = arith.constant 0 : i32
  // expected-error @+1 {{splits a page's loads, which needs a one-stage schedule (this one has 2 stages)}}
  kvarn.tile.load_values %c, %page, slot %slot : !kvarn.context<decode>, i32
  return
}

// -----

func.func @slot_context(%c: !kvarn.context<flush>, %page: i32, %slot: i32) {
  // expected-error @+1 {{needs a decode context}}
  kvarn.tile.scores_on_codes %c, %page, slot %slot : !kvarn.context<flush>, i32
  return
}
