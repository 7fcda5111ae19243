/* The GPU embedding cache behind a small C ABI, without TensorFlow, for
 * ctypes/CuPy callers (tests, benchmarks) and other runtimes.
 *
 * Library: tf_hps/_tf_hps_gpu_cache.so (CUDA runtime linked statically; only
 * the functions below are exported). Semantics: ops/cuda/gpu_cache.h.
 *
 * Conventions:
 *  - Functions that can fail return 0 on success, else a CUDA error code
 *    (cudaError_t); hps_gpu_error_string() describes it.
 *  - Arrays named d_* are device memory; keys are int32 or int64 as chosen
 *    at creation (int32 keys are sign-extended, so -1 is an ordinary key),
 *    values are float32 rows of `dim`.
 *  - `stream` is a cudaStream_t (NULL: the legacy default stream); calls are
 *    asynchronous on it, results are ready once the stream has run them.
 *  - The caller deduplicates keys (duplicates are legal but slow, and their
 *    order within one call is unspecified).
 */
#ifndef TF_HPS_OPS_CUDA_GPU_CACHE_C_API_H_
#define TF_HPS_OPS_CUDA_GPU_CACHE_C_API_H_

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct hps_gpu_cache hps_gpu_cache;

/* Number of CUDA devices; 0 (and no error) without a driver or a GPU. */
int hps_gpu_cache_device_count(void);

const char* hps_gpu_error_string(int code);

/* A cache of at least capacity_rows rows (whole sets of 64) of dim floats on
 * the current device, for keys of key_bytes bytes (4: int32, 8: int64).
 * Synchronous. *out is NULL on failure. */
int hps_gpu_cache_create(int64_t capacity_rows, int64_t dim, int key_bytes, hps_gpu_cache** out);

/* Frees the cache; the caller makes sure no call on it is still running. */
void hps_gpu_cache_destroy(hps_gpu_cache* cache);

int64_t hps_gpu_cache_capacity(const hps_gpu_cache* cache);
int64_t hps_gpu_cache_num_sets(const hps_gpu_cache* cache);

/* Looks up d_keys (n). Rows of the keys found go to d_values (n, dim); the
 * positions of the others go to d_missing_index (n, int64) in unspecified
 * order, and their number to d_missing_count (one int64). Rows of missed
 * keys are left untouched. One LRU tick. */
int hps_gpu_cache_query(hps_gpu_cache* cache, const void* d_keys, int64_t n, float* d_values,
                        int64_t* d_missing_index, int64_t* d_missing_count, void* stream);

/* Inserts d_keys (n) with rows d_values (n, dim): cached keys get the new row
 * and a fresh stamp, others take an empty way or evict the least recently
 * used way of their set. One LRU tick. */
int hps_gpu_cache_replace(hps_gpu_cache* cache, const void* d_keys, int64_t n, const float* d_values,
                          void* stream);

/* Overwrites the rows of the keys of d_keys (n) that are cached. */
int hps_gpu_cache_update(hps_gpu_cache* cache, const void* d_keys, int64_t n, const float* d_values,
                         void* stream);

/* Writes the keys cached in sets [set_begin, set_end) to d_keys_out (room for
 * (set_end - set_begin) * 64 keys) in unspecified order, their number to
 * d_count (one int64). */
int hps_gpu_cache_dump(hps_gpu_cache* cache, int64_t set_begin, int64_t set_end, void* d_keys_out,
                       int64_t* d_count, void* stream);

/* Device memory for callers without a CUDA binding (tests, benchmarks). */
int hps_gpu_malloc(size_t bytes, void** d_ptr);
int hps_gpu_free(void* d_ptr);
/* Synchronous copy in any direction (host and device pointers alike). */
int hps_gpu_memcpy(void* dst, const void* src, size_t bytes);
int hps_gpu_synchronize(void);
/* Makes `device` the calling thread's current device (cudaSetDevice): caches, pipelines and
 * hps_gpu_malloc memory made afterwards on this thread live there. A pipeline keeps the device it
 * was made on and makes it current around each of its calls. */
int hps_gpu_set_device(int device);
/* The current device's name, NUL-terminated, into name (size bytes). */
int hps_gpu_device_name(char* name, size_t size);

#ifdef __cplusplus
}  /* extern "C" */
#endif

#endif  /* TF_HPS_OPS_CUDA_GPU_CACHE_C_API_H_ */
