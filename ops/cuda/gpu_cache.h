// The embedding cache on the GPU: the slab-set cache of core/slab_set.h,
// executed by warps. TF-free; the C ABI in gpu_cache_c_api.h wraps it.
//
// Same algorithm as the CPU cache (core/embedding_cache.h): sets of 2 slabs
// x 32 ways, stamp 0 = empty (every int64 key can be cached; int32 keys are
// sign-extended), a batch-grained LRU clock that ticks once per Query and per
// Replace call, eviction of the oldest way of a full set.
//
// Execution. One warp per key (grid-stride): lane 0 takes the set's spin
// lock (atomicCAS), the warp probes the set one slab at a time with a ballot
// (one slot per lane), copies the row with all 32 lanes, and releases the
// lock. All device memory comes from cudaMalloc; every call is asynchronous
// on the caller's stream.
//
// Deduplication is the caller's job. Duplicate keys in one call are legal
// but serialise on their set lock; in one Replace call, keys of one set are
// placed in an unspecified order, so which duplicate's row wins, and which
// ways new keys take, may differ from the CPU cache's sequential order. With
// at most one new key per set and call, the two caches agree way for way.
#ifndef TF_HPS_OPS_CUDA_GPU_CACHE_H_
#define TF_HPS_OPS_CUDA_GPU_CACHE_H_

#include <cuda_runtime_api.h>

#include <atomic>
#include <cstdint>

namespace tf_hps {

class GpuCache {
 public:
  // Allocates a cache of at least `capacity_rows` rows (whole sets of 64) of
  // `dim` floats on the current device, for keys of `key_bytes` (4: int32,
  // 8: int64). Synchronous. On failure returns the error and sets *out = null.
  static cudaError_t Create(int64_t capacity_rows, int64_t dim, int key_bytes, GpuCache** out);
  ~GpuCache();
  GpuCache(const GpuCache&) = delete;
  GpuCache& operator=(const GpuCache&) = delete;

  int64_t capacity() const { return num_sets_ * 64; }
  int64_t num_sets() const { return num_sets_; }
  int64_t dim() const { return dim_; }
  int key_bytes() const { return key_bytes_; }

  // All arrays below are device memory; keys are of the cache's key type.
  // Each call returns the launch status and runs asynchronously on `stream`.

  // For each key found, copies its row into values[i] (values: (n, dim)) and
  // refreshes its stamp. Writes the indices of the keys not found to
  // missing_index (n) in unspecified order and their number to
  // *missing_count (one int64). Rows of missed keys are left untouched.
  cudaError_t Query(const void* keys, int64_t n, float* values, int64_t* missing_index, int64_t* missing_count,
                    cudaStream_t stream);

  // Inserts rows (keys: (n), values: (n, dim)): a cached key gets the new
  // row and a fresh stamp; another takes an empty way of its set, else
  // evicts the least recently used one.
  cudaError_t Replace(const void* keys, int64_t n, const float* values, cudaStream_t stream);

  // The two calls of a lookup pipeline (ops/cuda/gpu_lookup.cu), which takes
  // one stamp per batch from NextStamp() for both, as the CPU lookup does: the
  // batch's misses, inserted after its query, are then exactly as recent as
  // its hits and never evict the rows the batch just used.
  //
  // Query of the first *d_n keys (device int64, at most max_n): the count is
  // produced on the device by an earlier kernel, so no host round trip is
  // needed to launch this. Key i's row goes to values[out_rows[i]] (device
  // int32) instead of values[i], so a pipeline writes each distinct key's row
  // straight into the caller's output.
  cudaError_t QueryCounted(const void* keys, int64_t max_n, const int64_t* d_n, const int32_t* out_rows,
                           float* values, int64_t* missing_index, int64_t* missing_count, uint64_t stamp,
                           cudaStream_t stream);

  // Replace of the keys whose found[i] (device) is nonzero; adds the number of
  // rows evicted to make room to *evicted (device).
  cudaError_t ReplaceFound(const void* keys, int64_t n, const float* values, const int8_t* found,
                           unsigned long long* evicted, uint64_t stamp, cudaStream_t stream);

  // Overwrites the rows of the keys that are cached; ignores the others.
  cudaError_t Update(const void* keys, int64_t n, const float* values, cudaStream_t stream);

  // Writes the keys cached in sets [set_begin, set_end) to keys_out
  // (room for (set_end - set_begin) * 64 keys), in unspecified order, and
  // their number to *count (one int64).
  cudaError_t Dump(int64_t set_begin, int64_t set_end, void* keys_out, int64_t* count, cudaStream_t stream);

  // A new batch's LRU stamp (Query and Replace take one each).
  uint64_t NextStamp() { return clock_.fetch_add(1, std::memory_order_relaxed) + 1; }

 private:
  GpuCache() = default;
  int Blocks(int64_t warps_needed) const;

  int device_ = 0;
  int multiprocessors_ = 1;
  int resident_blocks_per_sm_ = 1;  // of the kernel that fits the fewest
  int key_bytes_ = 8;
  int64_t dim_ = 0;
  int64_t num_sets_ = 0;
  int64_t* keys_ = nullptr;      // device (num_sets * 64)
  uint64_t* stamps_ = nullptr;   // device (num_sets * 64), 0 = empty
  float* values_ = nullptr;      // device (num_sets * 64, dim)
  int* locks_ = nullptr;         // device (num_sets), 1 = held
  std::atomic<uint64_t> clock_{0};
};

}  // namespace tf_hps

#endif  // TF_HPS_OPS_CUDA_GPU_CACHE_H_
