/* The GPU lookup pipeline of one table on one device, behind a C ABI, without
 * TensorFlow and without the storage tiers.
 *
 * A pipeline answers device-resident keys with device-resident rows:
 *   dedup on the device -> L1 on the device (the dynamic slab-set cache of
 *   gpu_cache.h, or a static table holding every row) -> the keys L1 missed
 *   are copied to the host and handed, once each, to the caller's fetch
 *   callback (the VDB -> PDB -> default chain in the op library; numpy in
 *   tests) -> their rows are copied back and inserted into the dynamic cache
 *   (if the caller's insert guard allows) -> rows are scattered to the
 *   caller's key order.
 * Every answer is exact: it never depends on what the cache held.
 *
 * Online updates and refreshes vs. insertions. A query reads its misses'
 * rows (fetch) before it enqueues their insertion, and the insertion runs on
 * the device later still; an update of those rows applied in between must
 * not be undone by the older rows. Each pipeline has an insert lock (a host
 * mutex): a query calls the caller's guard after fetch, under the lock, and
 * inserts only if the guard allows, enqueueing the insertion and recording
 * an event after it before it lets the lock go; hps_gpu_lookup_update and
 * hps_gpu_lookup_refresh take the lock and make their device work wait for
 * those events. With a guard that says whether an update may have begun since
 * the rows were read (the op library's: the table's update epoch is even and
 * unchanged, as for the CPU cache), an update either began before the guard
 * ran (the guard refuses: nothing is inserted) or takes the lock after the
 * insertion was enqueued and overwrites it on the device. A refresh checks the
 * same guard under the lock before it writes, so it never writes rows it read
 * before an update over the update's.
 *
 * Library: tf_hps/_tf_hps_gpu_cache.so (with gpu_cache_c_api.h). Conventions
 * as there: 0 = success, else an error code; hps_gpu_lookup_last_error()
 * describes the last failure of the calling thread. d_* = device memory.
 */
#ifndef TF_HPS_OPS_CUDA_GPU_LOOKUP_C_API_H_
#define TF_HPS_OPS_CUDA_GPU_LOOKUP_C_API_H_

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct hps_gpu_lookup hps_gpu_lookup;

/* The tiers below L1: fills rows (m, dim) (host, float32) for the m distinct
 * host keys (int64, int32 keys sign-extended) and found[i] = 1 for each key
 * some tier held (0: the row holds the table's default and is not cached).
 * Returns 0, or nonzero after a failure (the lookup then fails with
 * HPS_GPU_LOOKUP_FETCH_FAILED). Called on the thread that called
 * hps_gpu_lookup_query (at most once per query) or hps_gpu_lookup_refresh
 * (once per chunk), never with m == 0. */
typedef int (*hps_gpu_fetch_fn)(void* ctx, const int64_t* keys, int64_t m, float* rows, int8_t* found);

/* Whether the rows the fetch callback just returned may be written into L1:
 * nonzero = yes. Called on the thread that called fetch, after fetch returned,
 * with the pipeline's insert lock held (so it must be quick and must not call
 * into the pipeline); it decides for the rows of that fetch call only. NULL
 * guard = always yes. */
typedef int (*hps_gpu_insert_guard_fn)(void* ctx);

/* Error code of a failed fetch callback (CUDA errors keep their own codes). */
#define HPS_GPU_LOOKUP_FETCH_FAILED 10001
/* Error code of invalid arguments (sizes, dtypes, null pointers). */
#define HPS_GPU_LOOKUP_INVALID_ARGUMENT 10002
/* Error code of a broken invariant inside the pipeline (a bug: please report). */
#define HPS_GPU_LOOKUP_INTERNAL 10003

/* Counters of one query, for the op's statistics. */
typedef struct hps_gpu_lookup_counts {
  int64_t keys;         /* keys asked for, duplicates included */
  int64_t l1_hits;      /* of those, answered by L1 */
  int64_t missed_keys;  /* distinct keys handed to the fetch callback */
  int64_t inserted;     /* rows put into the dynamic cache (missed keys some tier held;
                           0 when the guard refused) */
  int64_t evicted;      /* rows the dynamic cache evicted to make room; see below */
} hps_gpu_lookup_counts;
/* l1_hits counts positions: keys - l1_hits is the number of positions whose
 * key missed, each distinct missed key counted once per occurrence.
 * A query's insertions run on the stream after its one synchronisation, so
 * their evictions are not known when it returns: `evicted` reports the
 * evictions no earlier query has reported yet (those of earlier queries on
 * any thread). Summed over queries it is exact up to the last queries'
 * insertions; hps_gpu_lookup_evicted gives the exact total. */

/* A pipeline with a dynamic cache of at least capacity_rows rows (whole sets
 * of 64) of dim floats on the current device, for keys of key_bytes bytes
 * (4 or 8). Synchronous. *out is NULL on failure (e.g. no CUDA device: the
 * CUDA error code). */
int hps_gpu_lookup_create_dynamic(int64_t capacity_rows, int64_t dim, int key_bytes, hps_gpu_lookup** out);

/* A pipeline whose L1 is a read-only static table of the n rows given (host
 * keys int64, host rows (n, dim) float32), copied to the device. Keys it does
 * not hold go to the fetch callback and are never inserted. n may be 0 (no
 * L1: every key goes to the callback; keys and rows may then be NULL). For a
 * key given twice, the last row wins. With key_bytes 4, keys outside int32's
 * range are held but can never be asked for. Synchronous. */
int hps_gpu_lookup_create_static(const int64_t* keys, int64_t n, const float* rows, int64_t dim, int key_bytes,
                                 hps_gpu_lookup** out);

/* Frees the pipeline; the caller makes sure no call on it is still running. */
void hps_gpu_lookup_destroy(hps_gpu_lookup* lookup);

/* Looks up d_keys (n, of the pipeline's key type) and writes d_out (n, dim).
 * Runs on `stream` (a cudaStream_t; NULL: the legacy default stream) and
 * synchronises it exactly once when n > 0: the host must learn whether some
 * key missed L1 (the kernel that finds the misses writes them straight into
 * pinned host memory, so the same wait hands them over). An all-hit batch
 * then returns at once, without a callback or any further wait; a batch with
 * misses calls fetch, then queues the copy of its rows, the insertions and
 * the scatter without waiting again. Insertions (dynamic cache, rows some
 * tier held) are queued only if guard(guard_ctx) allows it, asked under the
 * insert lock after fetch, once, and only when there is a row to insert (see
 * the top of this file); refused or not, the rows go to d_out. d_out is
 * ready when the stream has run the call. n == 0 touches neither the device
 * nor the stream. d_out must not overlap d_keys. Thread-safe: calls from
 * several threads on one pipeline (on one stream or several) run
 * concurrently with exact results; each takes its own scratch. At most
 * 2^31 - 1 keys per call. counts may be NULL. On failure d_out's contents are
 * unspecified. */
int hps_gpu_lookup_query(hps_gpu_lookup* lookup, const void* d_keys, int64_t n, float* d_out, hps_gpu_fetch_fn fetch,
                         void* fetch_ctx, hps_gpu_insert_guard_fn guard, void* guard_ctx, void* stream,
                         hps_gpu_lookup_counts* counts);

/* Overwrites the rows of the given keys (host keys int64 (m), host rows
 * (m, dim)) where L1 holds them (the dynamic cache and the static table
 * alike); ignores the others. For online updates. Under the insert lock, and
 * ordered on the device after every insertion queries have queued so far
 * (on any stream), so a row such an insertion brings is overwritten too.
 * Synchronous. */
int hps_gpu_lookup_update(hps_gpu_lookup* lookup, const int64_t* keys, int64_t m, const float* rows);

/* Re-reads the rows L1 holds from the tiers below it and overwrites them: the
 * keys the dynamic cache holds (dumped a range of sets at a time) or every
 * key of the static table, in chunks of at most 65536 distinct keys, each
 * handed to fetch once (so fetch is called once per nonempty chunk). Rows
 * fetch reports not found keep their L1 row. Each chunk's rows are written
 * as hps_gpu_lookup_update writes, under the insert lock, if guard(guard_ctx)
 * (asked there, after that chunk's fetch, when it found a row; NULL = always)
 * allows; a chunk the guard refuses is skipped and the next one goes on.
 * *refreshed (may be NULL) gets the rows written, also when a later chunk
 * fails. Synchronous; safe beside queries and updates. A dynamic cache's rows
 * evicted between the dump and the write are not written back. */
int hps_gpu_lookup_refresh(hps_gpu_lookup* lookup, hps_gpu_fetch_fn fetch, void* fetch_ctx,
                           hps_gpu_insert_guard_fn guard, void* guard_ctx, int64_t* refreshed);

/* Rows L1 holds now (for tests and metrics): the static table's distinct
 * keys, or the dynamic cache's occupied ways. Synchronous. -1 on failure. */
int64_t hps_gpu_lookup_size(hps_gpu_lookup* lookup);

/* Rows the dynamic cache has evicted since creation (0 for a static table).
 * Waits for the device. -1 on failure. */
int64_t hps_gpu_lookup_evicted(hps_gpu_lookup* lookup);

/* L1 alone, as hps_gpu_cache_query: rows of the keys L1 holds go to
 * d_values (n, dim), the positions of the others to d_missing_index (n,
 * int64) in unspecified order, their number to d_missing_count (one int64).
 * No dedup (keys may repeat; a dynamic cache then serialises them), no fetch,
 * no insertion. Asynchronous on `stream`. For tests and benchmarks. */
int hps_gpu_lookup_query_l1(hps_gpu_lookup* lookup, const void* d_keys, int64_t n, float* d_values,
                            int64_t* d_missing_index, int64_t* d_missing_count, void* stream);

/* Combiners and output types of hps_gpu_combine_segments. */
#define HPS_GPU_COMBINE_SUM 0
#define HPS_GPU_COMBINE_MEAN 1
#define HPS_GPU_COMBINE_SQRTN 2
#define HPS_GPU_OUT_FLOAT32 0
#define HPS_GPU_OUT_FLOAT16 1
#define HPS_GPU_OUT_BFLOAT16 2

/* TfHpsSparseLookup's combine on the device. d_rows (nnz, dim) float32 holds
 * the looked-up row of each key of a ragged batch, in key order (what
 * hps_gpu_lookup_query writes). Output row r of d_out (num_rows, dim, of
 * out_type) combines the rows d_rows[order[k]] for k in offsets[r] ..
 * offsets[r + 1] - 1, in that order, as the CPU kernel does
 * (ops/sparse_combine.h: sum, mean or sqrtn, the same float32 bits), rounded
 * to out_type once (to nearest even); a row with no keys is zeros. As in
 * TensorFlow's CPU kernels, subnormal inputs and results are flushed to
 * zero; NaNs come out as the device's canonical NaN (their payload and sign
 * may differ from the CPU's). offsets (num_rows + 1: 0 first,
 * non-decreasing, nnz last) and order (nnz, values in [0, nnz)) are host
 * arrays, checked, then copied through a pinned buffer of the calling thread
 * into d_scratch (device, num_rows + 1 + nnz int64) on `stream`; the caller
 * may reuse them when the call returns (the thread's next call waits for this
 * copy before it reuses the pinned buffer). Asynchronous on `stream` (a
 * cudaStream_t): d_out is ready when the stream has run it, and d_scratch
 * must live until then. num_rows == 0 (with nnz == 0) touches nothing. */
int hps_gpu_combine_segments(const float* d_rows, int64_t nnz, int64_t dim, const int64_t* offsets,
                             const int64_t* order, int64_t num_rows, int combiner, int out_type, int64_t* d_scratch,
                             void* d_out, void* stream);

/* The last failure of the calling thread, NUL-terminated ("" if none). */
const char* hps_gpu_lookup_last_error(void);

#ifdef __cplusplus
}  /* extern "C" */
#endif

#endif  /* TF_HPS_OPS_CUDA_GPU_LOOKUP_C_API_H_ */
