/* kvarn.h: the C API engines link (libkvarn). Opaque handles, status codes, a thread-local
 * last-error message. Kernels come from the artifact cache (memory, then disk) or, when a JIT
 * compiler is installed (libkvarn_jit: kvarn_jit_install), are compiled on a miss. After
 * kvarn_prepare, launches touch no filesystem and allocate nothing on the host, so they can be
 * captured in CUDA graphs. Any thread may call: kvarn_prepare loads its kernels in the runtime's
 * GPU context whatever the calling thread's current context is (and compiles without blocking
 * other threads' calls); launches run in the calling thread's current context, which must be
 * that GPU's primary context (the CUDA runtime's after cudaSetDevice). */
#ifndef KVARN_H
#define KVARN_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum kvarn_status {
  KVARN_OK = 0,
  KVARN_ERROR_INVALID_ARGUMENT = 1, /* malformed spec or schedule, bad shapes or pointers */
  KVARN_ERROR_INVALID_DATA = 2,
  KVARN_ERROR_BUFFER_SIZE = 3,     /* a buffer too short, too long or misaligned (see below) */
  KVARN_ERROR_UNSUPPORTED = 4,
  KVARN_ERROR_NOT_FOUND = 5,        /* no kernel for the spec and no JIT to build one */
  KVARN_ERROR_IO = 6,
  KVARN_ERROR_INTERNAL = 7,         /* driver, NVRTC or launch failure (see kvarn_last_error) */
  KVARN_ERROR_NO_DEVICE = 8         /* no NVIDIA driver or no such GPU */
} kvarn_status;

typedef struct kvarn_runtime_t *kvarn_runtime;
typedef struct kvarn_kernel_t *kvarn_kernel;
typedef void *kvarn_stream; /* a CUstream / cudaStream_t; NULL = the default stream */

typedef struct kvarn_runtime_options {
  int device;            /* GPU ordinal */
  const char *cache_dir; /* NULL: $KVARN_CACHE_DIR, $XDG_CACHE_HOME/kvarn or ~/.cache/kvarn */
  int enable_jit;        /* 0: production mode, a missing kernel is an error */
  int log_level;         /* 0 quiet, 1 warnings */
  const char *configs_dir; /* tuned configs (kvarn-tune tune); NULL: $KVARN_CONFIGS_DIR or none */
} kvarn_runtime_options;

/* The message of the last failed call on this thread ("" if none). */
const char *kvarn_last_error(void);
const char *kvarn_version(void);
const char *kvarn_status_name(kvarn_status status);

kvarn_status kvarn_runtime_create(const kvarn_runtime_options *options, kvarn_runtime *runtime);
void kvarn_runtime_destroy(kvarn_runtime runtime);
/* Compute capability as "sm_90a", the SM count. */
kvarn_status kvarn_runtime_device(kvarn_runtime runtime, const char **arch, int *sm_count);

/* Loads a kernel bundle (kvarn-tune bundle export) into the runtime's cache, and its tuned
 * configs into the runtime's schedule lookup. A bundle built for another arch is recompiled from
 * its CUDA sources with NVRTC for this GPU (entries whose schedule cannot run here are skipped,
 * and kvarn_last_error() then names them); a bundle of another kvarn version is refused with
 * KVARN_ERROR_UNSUPPORTED and the reason; a corrupt one with KVARN_ERROR_INVALID_DATA. Nothing
 * of a refused bundle is used. */
kvarn_status kvarn_load_bundle(kvarn_runtime runtime, const char *path);

/* Prepares the kernel of `spec` (op:preset:d<D>:q<Q>:<f16|bf16>; the arch is the device's) with
 * `schedule`; NULL or "" picks the tuned schedule for this GPU from the configs (exact, else the
 * nearest tuned entry, else the op's default; kvarn_kernel_describe says which). The handle
 * lives as long as the runtime. */
kvarn_status kvarn_prepare(kvarn_runtime runtime, const char *spec, const char *schedule,
                           kvarn_kernel *kernel);

/* The schedule a prepared kernel uses and how it was chosen ("explicit", or the config lookup's
 * rule and explanation). The strings live as long as the runtime. */
kvarn_status kvarn_kernel_describe(kvarn_kernel kernel, const char **schedule, const char **how);

/* Decode: the schedule a launch of batch x num_kv_heads (request, kv head) pairs whose longest
 * request has max_seq_len tokens runs (0: not known). A kernel prepared with the configs'
 * schedule may carry variants for larger launches (more warps per SM pay once the grid fills the
 * GPU) and for longer contexts (their fixed cost is spread over more pages); a variant keyed by
 * context applies only when max_seq_len reaches it. Plan and launch pick the same variant from
 * the same batch, kv heads and max_seq_len, so a plan stays valid for its launch and CUDA graphs.
 * Explicit schedules have no variants. */
kvarn_status kvarn_decode_schedule(kvarn_kernel kernel, int batch, int num_kv_heads,
                                   int max_seq_len, const char **schedule);

/* Decode: host-side plan (splits) and the workspace it needs. max_seq_len (the longest request's
 * tokens) sizes the splits and picks the schedule variant; pass the same value in
 * kvarn_decode_args.max_seq_len at launch. */
kvarn_status kvarn_plan_decode(kvarn_kernel kernel, int batch, int num_kv_heads,
                               int max_seq_len, int *num_splits);
kvarn_status kvarn_decode_workspace_size(kvarn_kernel kernel, int batch, int num_kv_heads,
                                         int num_splits, size_t *bytes);

/* Buffer alignment. Launches refuse (KVARN_ERROR_BUFFER_SIZE, naming the buffer) any pointer the
 * kernel would access misaligned, before anything is launched: such an access faults on the
 * device and loses the whole CUDA context. Every buffer needs its element's alignment (2 bytes
 * for fp16/bf16 rows, 4 for int32, 8 for int64); beyond that: decode's cache, pool_key and
 * pool_value 16 bytes, its workspace 16 (8 at D = 64); flush's cache 4; append's pool_key and
 * pool_value 16 (8 at D = 64). Allocations (cudaMalloc, torch) are 256-byte aligned, and every
 * preset's record and pool row is a multiple of 16 bytes long, so slices of whole records or rows
 * keep that alignment. */

typedef struct kvarn_decode_args {
  const void *query;          /* [B, Hq, D] */
  void *out;                  /* [B, Hq, D] */
  const void *cache;          /* [blocks, Hk, tile bytes] */
  const void *pool_key;       /* fp16 [slots, G, Hk, D] */
  const void *pool_value;
  const int32_t *block_to_slot; /* [blocks]: pool slot of a block still in fp16, -1 = record */
  const int32_t *block_table; /* [B, max_blocks]; entries past a request's last block are never
                                 dereferenced (-1 is fine there) */
  const int32_t *seq_lens;    /* [B], the current token included; 0: that request's output is
                                 all zeros */
  void *workspace;            /* kvarn_decode_workspace_size bytes */
  int batch, num_kv_heads, max_blocks_per_request;
  float softmax_scale;        /* 0: 1/sqrt(D) */
  int max_seq_len;            /* the value given to kvarn_plan_decode: picks the same schedule
                                 variant (kvarn_decode_schedule); 0: not known, so no variant
                                 keyed by context runs. A hint only: the kernel reads the
                                 lengths from seq_lens, so a wrong value costs speed, not
                                 correctness */
} kvarn_decode_args;

/* Decode: one kernel, plus the split-merge kernel when num_splits > 1, both on `stream` (CUDA-graph
 * capture works). On sm_90 and later the merge launches as the decode kernel's programmatic
 * dependent: it may start while the decode runs and waits on the device for its partials. Work
 * queued after the launch still waits for both kernels, as with plain launches. */
kvarn_status kvarn_launch_decode(kvarn_kernel kernel, const kvarn_decode_args *args,
                                 int num_splits, kvarn_stream stream);

typedef struct kvarn_flush_args {
  const void *pool_key, *pool_value;
  const int32_t *entries; /* [E, 3] (block, kv head, pool slot) */
  void *cache;
  int32_t *status;        /* device int; bit 0 set for a tile with NaN/Inf */
  int num_entries, num_kv_heads; /* 0 <= num_entries <= 2^30; else KVARN_ERROR_INVALID_ARGUMENT */
} kvarn_flush_args;
kvarn_status kvarn_launch_flush(kvarn_kernel kernel, const kvarn_flush_args *args,
                                kvarn_stream stream);

typedef struct kvarn_append_args {
  const void *key, *value;     /* [T, Hk, D] */
  const int64_t *slot_mapping; /* [T], negative = skip */
  void *pool_key, *pool_value;
  int num_tokens, num_kv_heads;
  int64_t key_stride, value_stride; /* elements between tokens */
} kvarn_append_args;
kvarn_status kvarn_launch_append(kvarn_kernel kernel, const kvarn_append_args *args,
                                 kvarn_stream stream);

typedef struct kvarn_dequantize_args {
  const void *cache;
  const int32_t *entries; /* [E, 2] (block, kv head) */
  void *key, *value;      /* fp16 [E, G, D] */
  int num_entries, num_kv_heads; /* 0 <= num_entries <= 2^23 */
} kvarn_dequantize_args;
kvarn_status kvarn_launch_dequantize(kvarn_kernel kernel, const kvarn_dequantize_args *args,
                                     kvarn_stream stream);

#ifdef __cplusplus
}
#endif

#endif /* KVARN_H */
