// The GPU lookup pipeline of one table on one device (TF-free); the C ABI in
// gpu_lookup_c_api.h wraps it. L1 is the dynamic slab-set cache
// (gpu_cache.h) or the static table (gpu_static_table.h).
//
// One query, all on the caller's stream except the callback:
//   1. dedup on the device: a hash table of input positions (open addressing,
//      a slot holds the position of the key's first-come occurrence and keys
//      are compared through the input, so no key value is reserved); each
//      distinct key gets an index by one atomicAdd per warp;
//   2. L1 query of the distinct keys, each row written straight into the
//      output position of its key's representative occurrence;
//   3. the distinct keys L1 missed are written, by the kernel that collects
//      them, into mapped pinned host memory, with the batch's counts;
//   4. one stream synchronisation; nothing more happens for an all-hit batch
//      but step 7;
//   5. the fetch callback, on the calling thread, into pinned host buffers;
//      their rows go back with one async copy and into their output rows;
//   6. dynamic L1 only: Replace of the rows some tier held, with the batch's
//      LRU stamp (the one its query used);
//   7. every other occurrence of a key copies its representative's row.
//
// Scratch (device buffers grown as needed, pinned host buffers, an event) is
// a pool of workspaces: a call takes one for its duration, so concurrent
// calls never share scratch. A workspace remembers the event that ends its
// last call; the next call's stream waits on it before touching the scratch,
// so scratch is reused safely across streams without a host wait.
#ifndef TF_HPS_OPS_CUDA_GPU_LOOKUP_H_
#define TF_HPS_OPS_CUDA_GPU_LOOKUP_H_

#include <cuda_runtime_api.h>

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "ops/cuda/gpu_cache.h"
#include "ops/cuda/gpu_static_table.h"

namespace tf_hps {

// 0 = success, else a cudaError_t or one of the codes below, with a message.
struct GpuLookupStatus {
  int code = 0;
  std::string message;
  bool ok() const { return code == 0; }
};

constexpr int kGpuLookupFetchFailed = 10001;     // HPS_GPU_LOOKUP_FETCH_FAILED
constexpr int kGpuLookupInvalidArgument = 10002;  // HPS_GPU_LOOKUP_INVALID_ARGUMENT
constexpr int kGpuLookupInternal = 10003;         // HPS_GPU_LOOKUP_INTERNAL

struct GpuLookupCounts {
  int64_t keys = 0;
  int64_t l1_hits = 0;
  int64_t missed_keys = 0;
  int64_t inserted = 0;
  int64_t evicted = 0;
};

// Fills rows (m, dim) and found (m) for m distinct host keys; 0 = success.
using GpuFetchFn = int (*)(void* ctx, const int64_t* keys, int64_t m, float* rows, int8_t* found);

class GpuLookup {
 public:
  // Largest number of keys one query takes (positions are int32 on the device).
  static constexpr int64_t kMaxKeys = (int64_t{1} << 31) - 1;

  static GpuLookupStatus CreateDynamic(int64_t capacity_rows, int64_t dim, int key_bytes,
                                       std::unique_ptr<GpuLookup>* out);
  static GpuLookupStatus CreateStatic(const int64_t* keys, int64_t n, const float* rows, int64_t dim, int key_bytes,
                                      std::unique_ptr<GpuLookup>* out);
  ~GpuLookup();
  GpuLookup(const GpuLookup&) = delete;
  GpuLookup& operator=(const GpuLookup&) = delete;

  int64_t dim() const { return dim_; }
  int key_bytes() const { return key_bytes_; }
  bool is_static() const { return static_table_ != nullptr; }

  // See hps_gpu_lookup_query. Arguments are checked by the caller.
  GpuLookupStatus Query(const void* d_keys, int64_t n, float* d_out, GpuFetchFn fetch, void* fetch_ctx,
                        cudaStream_t stream, GpuLookupCounts* counts);

  // L1 alone, as GpuCache::Query: no dedup, no fetch, no counts.
  GpuLookupStatus QueryL1(const void* d_keys, int64_t n, float* d_values, int64_t* d_missing_index,
                          int64_t* d_missing_count, cudaStream_t stream);

  // See hps_gpu_lookup_update (host keys and rows; synchronous).
  GpuLookupStatus Update(const int64_t* keys, int64_t m, const float* rows);

  // Rows L1 holds; rows the dynamic cache evicted since creation. Synchronous.
  GpuLookupStatus Size(int64_t* size);
  GpuLookupStatus EvictedTotal(int64_t* evicted);

 private:
  struct Workspace;

  GpuLookup() = default;
  GpuLookupStatus Init(int64_t dim, int key_bytes);
  GpuLookupStatus AcquireWorkspace(Workspace** out);
  void ReleaseWorkspace(Workspace* ws);
  template <class Key>
  GpuLookupStatus QueryTyped(const Key* d_keys, int64_t n, float* d_out, GpuFetchFn fetch, void* fetch_ctx,
                             cudaStream_t stream, Workspace* ws, GpuLookupCounts* counts);
  // The part of a device-wide eviction total no earlier call has reported.
  int64_t NewEvictions(uint64_t total);

  int device_ = 0;
  int multiprocessors_ = 1;
  int64_t dim_ = 0;
  int key_bytes_ = 8;
  std::unique_ptr<GpuCache> cache_;              // dynamic L1
  std::unique_ptr<GpuStaticTable> static_table_;  // or static L1
  unsigned long long* evicted_total_ = nullptr;  // device, dynamic only
  std::atomic<uint64_t> evicted_reported_{0};

  std::mutex pool_mutex_;
  std::vector<std::unique_ptr<Workspace>> all_;  // every workspace, for the destructor
  std::vector<Workspace*> idle_;
};

}  // namespace tf_hps

#endif  // TF_HPS_OPS_CUDA_GPU_LOOKUP_H_
