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
//      LRU stamp (the one its query used), if the caller's insert guard
//      allows it; asked, the Replace enqueued and an event recorded after it
//      all under insert_mutex_ (see below);
//   7. every other occurrence of a key copies its representative's row.
//
// Scratch (device buffers grown as needed, pinned host buffers, an event) is
// a pool of workspaces: a call takes one for its duration, so concurrent
// calls never share scratch. A workspace remembers the event that ends its
// last call; the next call's stream waits on it before touching the scratch,
// so scratch is reused safely across streams without a host wait.
//
// Updates and refreshes vs. insertions (gpu_lookup_c_api.h explains why):
// insert_mutex_ serialises step 6 of queries with Update and Refresh writes.
// Each workspace has an `inserted` event, recorded after its last Replace
// under the mutex; a write holding the mutex makes its stream wait for every
// workspace's `inserted` event, so every insertion enqueued before it runs
// first on the device. (Waiting for an event's latest record covers the
// earlier insertions of that workspace too: each call on a workspace starts
// after the previous one ended, see `done`. An event never recorded is
// waited for as if already complete.)
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
// Whether the rows of the last fetch may go into L1 (nonzero = yes); called
// with insert_mutex_ held. Null = always yes.
using GpuInsertGuardFn = int (*)(void* ctx);

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
                        GpuInsertGuardFn guard, void* guard_ctx, cudaStream_t stream, GpuLookupCounts* counts);

  // L1 alone, as GpuCache::Query: no dedup, no fetch, no counts.
  GpuLookupStatus QueryL1(const void* d_keys, int64_t n, float* d_values, int64_t* d_missing_index,
                          int64_t* d_missing_count, cudaStream_t stream);

  // See hps_gpu_lookup_update (host keys and rows; synchronous).
  GpuLookupStatus Update(const int64_t* keys, int64_t m, const float* rows);

  // See hps_gpu_lookup_refresh (synchronous); *refreshed = rows written.
  GpuLookupStatus Refresh(GpuFetchFn fetch, void* fetch_ctx, GpuInsertGuardFn guard, void* guard_ctx,
                          int64_t* refreshed);

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
                             GpuInsertGuardFn guard, void* guard_ctx, cudaStream_t stream, Workspace* ws,
                             GpuLookupCounts* counts);
  // Update's write, after every insertion enqueued so far. The caller holds
  // insert_mutex_ and has made device_ current; m > 0.
  GpuLookupStatus OverwriteLocked(const int64_t* keys, int64_t m, const float* rows);
  // One refresh chunk: fetches keys (m > 0, distinct), then writes the rows
  // found if the guard allows; adds the rows written to *refreshed.
  GpuLookupStatus RefreshChunk(const int64_t* keys, int64_t m, GpuFetchFn fetch, void* fetch_ctx,
                               GpuInsertGuardFn guard, void* guard_ctx, int64_t* refreshed);
  // The part of a device-wide eviction total no earlier call has reported.
  int64_t NewEvictions(uint64_t total);

  int device_ = 0;
  int multiprocessors_ = 1;
  int64_t dim_ = 0;
  int key_bytes_ = 8;
  std::unique_ptr<GpuCache> cache_;              // dynamic L1
  std::unique_ptr<GpuStaticTable> static_table_;  // or static L1
  // Host copy of the static table's distinct keys (those a query can ask
  // for), for Refresh.
  std::vector<int64_t> static_keys_;
  unsigned long long* evicted_total_ = nullptr;  // device, dynamic only
  std::atomic<uint64_t> evicted_reported_{0};

  // Step 6 of queries vs. Update and Refresh writes (see the top). Taken
  // before pool_mutex_ when both are held.
  std::mutex insert_mutex_;

  std::mutex pool_mutex_;
  std::vector<std::unique_ptr<Workspace>> all_;  // every workspace, for the destructor
  std::vector<Workspace*> idle_;
};

}  // namespace tf_hps

#endif  // TF_HPS_OPS_CUDA_GPU_LOOKUP_H_
