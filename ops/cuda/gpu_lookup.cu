#include "ops/cuda/gpu_lookup.h"

#include <algorithm>
#include <cstring>

#include "base/key_hash.h"

namespace tf_hps {
namespace {

constexpr int kThreadsPerBlock = 256;
constexpr int kLanes = 32;
constexpr unsigned kAllLanes = 0xffffffffu;
constexpr int32_t kEmptySlot = -1;  // dedup table: no position yet
// Refresh: keys per fetch call (and the dynamic cache's sets dumped at once).
constexpr int64_t kRefreshChunkKeys = 65536;
constexpr int64_t kCacheWays = 64;  // ways of a set of the dynamic cache (gpu_cache.h)
// Update and Refresh write (and Refresh dumps) on the legacy default stream,
// as the synchronous cudaMemcpy calls beside them do, and wait for it.
const cudaStream_t kWriteStream = cudaStreamLegacy;

// Counts one query produces on the device, copied to the host in one piece.
struct DeviceCounts {
  int64_t unique;            // distinct keys
  int64_t missed;            // distinct keys L1 missed
  int64_t missed_positions;  // input positions whose key L1 missed
};

// What the host reads after the query's one synchronisation (pinned).
struct HostCounts {
  DeviceCounts batch;
  unsigned long long evicted_total;  // the dynamic cache's eviction counter when the query ran
};

__device__ int64_t ThreadIndex() { return blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; }
__device__ int64_t ThreadCount() { return gridDim.x * static_cast<int64_t>(blockDim.x); }

__device__ unsigned long long* AsCounter(int64_t* p) { return reinterpret_cast<unsigned long long*>(p); }

// Dedup. Each lane takes one key and walks the table from the key's hash:
// an empty slot is claimed with a CAS on its position (the winner becomes
// the key's representative), a taken slot is compared through the input
// array. Slots only ever go from empty to a position, so a stale read of an
// empty slot merely sends the thread to the CAS, which tells the truth.
// Representatives then take consecutive indices in the list of distinct
// keys, one atomicAdd per warp.
template <class Key>
__global__ void DedupKernel(const Key* keys, int64_t n, int32_t* table, uint64_t mask, int32_t* rep,
                            Key* unique_keys, int32_t* unique_pos, int64_t* unique_count) {
  const int lane = threadIdx.x % kLanes;
  const int64_t warp_stride = ThreadCount();  // keys per sweep of all warps
  for (int64_t base = ThreadIndex() - lane; base < n; base += warp_stride) {
    const int64_t i = base + lane;
    bool representative = false;
    Key key = 0;
    if (i < n) {
      key = keys[i];
      int32_t holder;
      for (uint64_t h = MixKey(static_cast<uint64_t>(static_cast<int64_t>(key))) & mask;; h = (h + 1) & mask) {
        holder = __ldcg(table + h);
        if (holder == kEmptySlot) {
          holder = atomicCAS(table + h, kEmptySlot, static_cast<int32_t>(i));
          if (holder == kEmptySlot) {
            holder = static_cast<int32_t>(i);
            representative = true;
            break;
          }
        }
        if (keys[holder] == key) break;
      }
      rep[i] = holder;
    }
    const uint32_t firsts = __ballot_sync(kAllLanes, representative);
    if (firsts != 0) {
      unsigned long long start = 0;
      if (lane == 0) start = atomicAdd(AsCounter(unique_count), static_cast<unsigned long long>(__popc(firsts)));
      start = __shfl_sync(kAllLanes, start, 0);
      if (representative) {
        const int64_t u = static_cast<int64_t>(start) + __popc(firsts & ((1u << lane) - 1));
        unique_keys[u] = key;
        unique_pos[u] = static_cast<int32_t>(i);
      }
    }
  }
}

// The distinct keys L1 missed, in missing_index order: to the host (mapped
// pinned memory, int64) for the callback, and to the device (the cache's
// key type) for Replace; their representatives' output rows are marked.
template <class Key>
__global__ void CollectMissesKernel(const Key* unique_keys, const int32_t* unique_pos, const int64_t* missing_index,
                                    const int64_t* missing_count, int64_t* host_keys, Key* missed_keys,
                                    uint8_t* missed_at) {
  const int64_t m = *missing_count;
  for (int64_t j = ThreadIndex(); j < m; j += ThreadCount()) {
    const int64_t u = missing_index[j];
    const Key key = unique_keys[u];
    host_keys[j] = static_cast<int64_t>(key);
    missed_keys[j] = key;
    missed_at[unique_pos[u]] = 1;
  }
}

// Input positions whose key missed (for the l1_hits counter): a warp sum,
// then one atomicAdd per warp. Returns at once for an all-hit batch.
__global__ void CountMissedPositionsKernel(const int32_t* rep, int64_t n, const uint8_t* missed_at,
                                           const int64_t* missing_count, int64_t* missed_positions) {
  if (*missing_count == 0) return;
  unsigned long long count = 0;
  for (int64_t i = ThreadIndex(); i < n; i += ThreadCount()) count += missed_at[rep[i]];
  for (int offset = kLanes / 2; offset > 0; offset /= 2) count += __shfl_down_sync(kAllLanes, count, offset);
  if (threadIdx.x % kLanes == 0 && count != 0) atomicAdd(AsCounter(missed_positions), count);
}

// Row copies: a group of `1 << lanes_log2` threads (a power of two up to a
// warp, about one Vec per lane) moves one row at a time; a plan names each
// row's source and destination row, or skips it.
template <class Vec, class Plan>
__global__ void CopyRowsKernel(Plan plan, int64_t rows, float* dst, const float* src, int64_t dim, int lanes_log2) {
  const int64_t vecs = dim * static_cast<int64_t>(sizeof(float)) / static_cast<int64_t>(sizeof(Vec));
  const int lanes = 1 << lanes_log2;
  const int lane = static_cast<int>(ThreadIndex() & (lanes - 1));
  const int64_t groups = ThreadCount() >> lanes_log2;
  for (int64_t k = ThreadIndex() >> lanes_log2; k < rows; k += groups) {
    int64_t to, from;
    if (!plan(k, &to, &from)) continue;
    const Vec* s = reinterpret_cast<const Vec*>(src + from * dim);
    Vec* d = reinterpret_cast<Vec*>(dst + to * dim);
    for (int64_t j = lane; j < vecs; j += lanes) d[j] = s[j];
  }
}

// Fetched row j -> the output row of the j-th missed distinct key.
struct MergeFetchedPlan {
  const int64_t* missing_index;
  const int32_t* unique_pos;
  __device__ bool operator()(int64_t j, int64_t* to, int64_t* from) const {
    *to = unique_pos[missing_index[j]];
    *from = j;
    return true;
  }
};

// Every repeated occurrence <- its representative's row (representatives,
// the only rows read, are never written here).
struct CopyRepeatsPlan {
  const int32_t* rep;
  __device__ bool operator()(int64_t i, int64_t* to, int64_t* from) const {
    const int64_t r = rep[i];
    *to = i;
    *from = r;
    return r != i;
  }
};

bool Aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

int64_t NextPowerOfTwo(int64_t v, int64_t at_least) {
  int64_t p = at_least;
  while (p < v) p <<= 1;
  return p;
}

GpuLookupStatus CudaFailure(cudaError_t err, const std::string& what) {
  return {static_cast<int>(err), what + ": " + cudaGetErrorName(err) + " (" + cudaGetErrorString(err) + ")"};
}

#define TF_HPS_RETURN_IF_CUDA_ERROR(expr, what)      \
  do {                                               \
    const cudaError_t err_ = (expr);                 \
    if (err_ != cudaSuccess) return CudaFailure(err_, what); \
  } while (0)

// The device buffers of one synchronous call (keys, and rows or a count),
// freed when the call returns, however it returns.
struct CallScratch {
  void* keys = nullptr;
  float* rows = nullptr;
  int64_t* count = nullptr;
  CallScratch() = default;
  CallScratch(const CallScratch&) = delete;
  CallScratch& operator=(const CallScratch&) = delete;
  ~CallScratch() {
    cudaFree(keys);
    cudaFree(rows);
    cudaFree(count);
  }
};

}  // namespace

// Scratch of one call at a time. Device arrays hold key_capacity keys.
struct GpuLookup::Workspace {
  int64_t key_capacity = 0;
  int64_t table_slots = 0;             // dedup table: a power of two >= 2 * key_capacity
  int32_t* table = nullptr;            // (table_slots)
  int32_t* rep = nullptr;              // (key_capacity): representative position of each input
  void* unique_keys = nullptr;         // (key_capacity) of the key type
  int32_t* unique_pos = nullptr;       // (key_capacity): representative position of each distinct key
  int64_t* missing_index = nullptr;    // (key_capacity): distinct keys L1 missed
  void* missed_keys = nullptr;         // (key_capacity) of the key type: those keys, for Replace
  uint8_t* missed_at = nullptr;        // (key_capacity): 1 at representatives whose key missed
  DeviceCounts* counts = nullptr;      // device
  int64_t* host_keys = nullptr;        // pinned, mapped (key_capacity): missed keys for the callback
  int64_t* host_keys_device = nullptr;  // the device's address of host_keys
  HostCounts* host_counts = nullptr;   // pinned

  int64_t row_capacity = 0;  // rows of the four buffers below
  float* fetched = nullptr;  // device (row_capacity, dim)
  int8_t* found = nullptr;   // device (row_capacity)
  float* host_rows = nullptr;  // pinned (row_capacity, dim)
  int8_t* host_found = nullptr;  // pinned (row_capacity)

  cudaEvent_t done = nullptr;      // recorded after the last call's work
  bool used = false;               // `done` has been recorded
  cudaEvent_t inserted = nullptr;  // recorded after the last call's insertion, under insert_mutex_

  // Waits for the last call's work (the buffers may still be in use).
  cudaError_t Idle() { return used ? cudaEventSynchronize(done) : cudaSuccess; }

  void FreeKeyBuffers() {
    for (void* p : {static_cast<void*>(table), static_cast<void*>(rep), unique_keys, static_cast<void*>(unique_pos),
                    static_cast<void*>(missing_index), missed_keys, static_cast<void*>(missed_at),
                    static_cast<void*>(counts)}) {
      cudaFree(p);
    }
    cudaFreeHost(host_keys);
    cudaFreeHost(host_counts);
    table = rep = unique_pos = nullptr;
    unique_keys = missed_keys = nullptr;
    missing_index = nullptr;
    missed_at = nullptr;
    counts = nullptr;
    host_keys = host_keys_device = nullptr;
    host_counts = nullptr;
    key_capacity = table_slots = 0;
  }

  void FreeRowBuffers() {
    cudaFree(fetched);
    cudaFree(found);
    cudaFreeHost(host_rows);
    cudaFreeHost(host_found);
    fetched = nullptr;
    found = nullptr;
    host_rows = nullptr;
    host_found = nullptr;
    row_capacity = 0;
  }

  GpuLookupStatus GrowKeys(int64_t n, int key_bytes) {
    if (n <= key_capacity) return {};
    TF_HPS_RETURN_IF_CUDA_ERROR(Idle(), "waiting for the previous lookup before growing its scratch");
    FreeKeyBuffers();
    const int64_t capacity = NextPowerOfTwo(n, 1024);
    const int64_t slots = 2 * capacity;
    const char* what = "allocating lookup scratch";
    TF_HPS_RETURN_IF_CUDA_ERROR(cudaMalloc(&table, slots * sizeof(int32_t)), what);
    TF_HPS_RETURN_IF_CUDA_ERROR(cudaMalloc(&rep, capacity * sizeof(int32_t)), what);
    TF_HPS_RETURN_IF_CUDA_ERROR(cudaMalloc(&unique_keys, capacity * key_bytes), what);
    TF_HPS_RETURN_IF_CUDA_ERROR(cudaMalloc(&unique_pos, capacity * sizeof(int32_t)), what);
    TF_HPS_RETURN_IF_CUDA_ERROR(cudaMalloc(&missing_index, capacity * sizeof(int64_t)), what);
    TF_HPS_RETURN_IF_CUDA_ERROR(cudaMalloc(&missed_keys, capacity * key_bytes), what);
    TF_HPS_RETURN_IF_CUDA_ERROR(cudaMalloc(&missed_at, capacity), what);
    TF_HPS_RETURN_IF_CUDA_ERROR(cudaMalloc(&counts, sizeof(DeviceCounts)), what);
    TF_HPS_RETURN_IF_CUDA_ERROR(cudaHostAlloc(&host_keys, capacity * sizeof(int64_t), cudaHostAllocMapped),
                                "allocating pinned host memory for missed keys");
    // Under unified addressing (every 64-bit process) pinned memory is mapped
    // at its host address whatever the flags, so that address serves if the
    // context was made without cudaDeviceMapHost (e.g. by the driver API).
    if (cudaHostGetDevicePointer(&host_keys_device, host_keys, 0) != cudaSuccess) {
      cudaGetLastError();
      host_keys_device = host_keys;
    }
    TF_HPS_RETURN_IF_CUDA_ERROR(cudaHostAlloc(&host_counts, sizeof(HostCounts), cudaHostAllocDefault),
                                "allocating pinned host memory for counts");
    key_capacity = capacity;
    table_slots = slots;
    return {};
  }

  // Called after the query's synchronisation: no earlier call's work remains.
  GpuLookupStatus GrowRows(int64_t m, int64_t dim) {
    if (m <= row_capacity) return {};
    FreeRowBuffers();
    const int64_t rows = NextPowerOfTwo(m, 64);
    const char* what = "allocating scratch for fetched rows";
    TF_HPS_RETURN_IF_CUDA_ERROR(cudaMalloc(&fetched, rows * dim * sizeof(float)), what);
    TF_HPS_RETURN_IF_CUDA_ERROR(cudaMalloc(&found, rows), what);
    TF_HPS_RETURN_IF_CUDA_ERROR(cudaHostAlloc(&host_rows, rows * dim * sizeof(float), cudaHostAllocDefault), what);
    TF_HPS_RETURN_IF_CUDA_ERROR(cudaHostAlloc(&host_found, rows, cudaHostAllocDefault), what);
    row_capacity = rows;
    return {};
  }

  ~Workspace() {
    Idle();
    FreeKeyBuffers();
    FreeRowBuffers();
    if (done != nullptr) cudaEventDestroy(done);
    if (inserted != nullptr) cudaEventDestroy(inserted);
  }
};

GpuLookupStatus GpuLookup::Init(int64_t dim, int key_bytes) {
  dim_ = dim;
  key_bytes_ = key_bytes;
  TF_HPS_RETURN_IF_CUDA_ERROR(cudaGetDevice(&device_), "finding the current CUDA device");
  TF_HPS_RETURN_IF_CUDA_ERROR(cudaDeviceGetAttribute(&multiprocessors_, cudaDevAttrMultiProcessorCount, device_),
                              "reading the device's multiprocessor count");
  return {};
}

GpuLookupStatus GpuLookup::CreateDynamic(int64_t capacity_rows, int64_t dim, int key_bytes,
                                         std::unique_ptr<GpuLookup>* out) {
  out->reset();
  std::unique_ptr<GpuLookup> lookup(new GpuLookup());
  GpuLookupStatus status = lookup->Init(dim, key_bytes);
  if (!status.ok()) return status;
  GpuCache* cache = nullptr;
  TF_HPS_RETURN_IF_CUDA_ERROR(GpuCache::Create(capacity_rows, dim, key_bytes, &cache),
                              "creating a GPU cache of " + std::to_string(capacity_rows) + " rows of " +
                                  std::to_string(dim) + " floats");
  lookup->cache_.reset(cache);
  TF_HPS_RETURN_IF_CUDA_ERROR(cudaMalloc(&lookup->evicted_total_, sizeof(unsigned long long)),
                              "allocating the eviction counter");
  TF_HPS_RETURN_IF_CUDA_ERROR(cudaMemset(lookup->evicted_total_, 0, sizeof(unsigned long long)),
                              "zeroing the eviction counter");
  TF_HPS_RETURN_IF_CUDA_ERROR(cudaDeviceSynchronize(), "creating the GPU lookup");
  *out = std::move(lookup);
  return {};
}

GpuLookupStatus GpuLookup::CreateStatic(const int64_t* keys, int64_t n, const float* rows, int64_t dim, int key_bytes,
                                        std::unique_ptr<GpuLookup>* out) {
  out->reset();
  std::unique_ptr<GpuLookup> lookup(new GpuLookup());
  GpuLookupStatus status = lookup->Init(dim, key_bytes);
  if (!status.ok()) return status;
  GpuStaticTable* table = nullptr;
  TF_HPS_RETURN_IF_CUDA_ERROR(GpuStaticTable::Create(keys, n, rows, dim, key_bytes, &table),
                              "creating a static GPU table of " + std::to_string(n) + " rows of " +
                                  std::to_string(dim) + " floats");
  lookup->static_table_.reset(table);
  // Refresh re-reads these. An int32 pipeline is never asked for a key
  // outside int32's range, so such rows are not refreshed either.
  std::vector<int64_t>& held = lookup->static_keys_;
  for (int64_t i = 0; i < n; ++i) {
    if (key_bytes == 8 || (keys[i] >= INT32_MIN && keys[i] <= INT32_MAX)) held.push_back(keys[i]);
  }
  std::sort(held.begin(), held.end());
  held.erase(std::unique(held.begin(), held.end()), held.end());
  *out = std::move(lookup);
  return {};
}

GpuLookup::~GpuLookup() {
  ScopedDevice scope(device_);
  all_.clear();  // each workspace waits for its last call's work
  cudaFree(evicted_total_);
}

GpuLookupStatus GpuLookup::AcquireWorkspace(Workspace** out) {
  {
    std::lock_guard<std::mutex> lock(pool_mutex_);
    if (!idle_.empty()) {
      *out = idle_.back();
      idle_.pop_back();
      return {};
    }
  }
  std::unique_ptr<Workspace> ws(new Workspace());
  TF_HPS_RETURN_IF_CUDA_ERROR(cudaEventCreateWithFlags(&ws->done, cudaEventDisableTiming),
                              "creating the lookup's CUDA event");
  TF_HPS_RETURN_IF_CUDA_ERROR(cudaEventCreateWithFlags(&ws->inserted, cudaEventDisableTiming),
                              "creating the lookup's CUDA event");
  *out = ws.get();
  std::lock_guard<std::mutex> lock(pool_mutex_);
  all_.push_back(std::move(ws));
  return {};
}

void GpuLookup::ReleaseWorkspace(Workspace* ws) {
  std::lock_guard<std::mutex> lock(pool_mutex_);
  idle_.push_back(ws);
}

int64_t GpuLookup::NewEvictions(uint64_t total) {
  uint64_t seen = evicted_reported_.load(std::memory_order_relaxed);
  while (total > seen) {
    if (evicted_reported_.compare_exchange_weak(seen, total, std::memory_order_relaxed)) {
      return static_cast<int64_t>(total - seen);
    }
  }
  return 0;
}

GpuLookupStatus GpuLookup::Query(const void* d_keys, int64_t n, float* d_out, GpuFetchFn fetch, void* fetch_ctx,
                                 GpuInsertGuardFn guard, void* guard_ctx, cudaStream_t stream,
                                 GpuLookupCounts* counts) {
  *counts = GpuLookupCounts();
  counts->keys = n;
  if (n == 0) return {};
  ScopedDevice scope(device_);
  Workspace* ws = nullptr;
  GpuLookupStatus status = AcquireWorkspace(&ws);
  if (!status.ok()) return status;
  if (key_bytes_ == 8) {
    status = QueryTyped(static_cast<const int64_t*>(d_keys), n, d_out, fetch, fetch_ctx, guard, guard_ctx, stream, ws,
                        counts);
  } else {
    status = QueryTyped(static_cast<const int32_t*>(d_keys), n, d_out, fetch, fetch_ctx, guard, guard_ctx, stream, ws,
                        counts);
  }
  // Whatever happened, the workspace is free for the next call once the
  // stream reaches this point; if even that cannot be known, it is retired.
  cudaError_t err = cudaEventRecord(ws->done, stream);
  if (err == cudaSuccess) {
    ws->used = true;
  } else if (cudaStreamSynchronize(stream) == cudaSuccess) {
    ws->used = false;
  } else {
    if (status.ok()) status = CudaFailure(err, "recording the end of the lookup");
    return status;
  }
  ReleaseWorkspace(ws);
  return status;
}

template <class Key>
GpuLookupStatus GpuLookup::QueryTyped(const Key* d_keys, int64_t n, float* d_out, GpuFetchFn fetch,
                                      void* fetch_ctx, GpuInsertGuardFn guard, void* guard_ctx, cudaStream_t stream,
                                      Workspace* ws, GpuLookupCounts* counts) {
  GpuLookupStatus status = ws->GrowKeys(n, key_bytes_);
  if (!status.ok()) return status;
  // The scratch's last user may have run on another stream.
  if (ws->used) TF_HPS_RETURN_IF_CUDA_ERROR(cudaStreamWaitEvent(stream, ws->done, 0), "ordering lookup scratch");

  const int64_t max_blocks = int64_t{multiprocessors_} * (2048 / kThreadsPerBlock);
  auto blocks = [&](int64_t threads) {
    return static_cast<int>(std::max<int64_t>(1, std::min(max_blocks, (threads + kThreadsPerBlock - 1) /
                                                                          kThreadsPerBlock)));
  };
  const int64_t slots = NextPowerOfTwo(2 * n, 64);  // at most ws->table_slots
  auto* unique_keys = static_cast<Key*>(ws->unique_keys);
  auto* missed_keys = static_cast<Key*>(ws->missed_keys);
  DeviceCounts* dc = ws->counts;

  // 1. Dedup.
  const char* launch = "launching the lookup's kernels";
  TF_HPS_RETURN_IF_CUDA_ERROR(cudaMemsetAsync(ws->table, 0xff, slots * sizeof(int32_t), stream), launch);
  TF_HPS_RETURN_IF_CUDA_ERROR(cudaMemsetAsync(dc, 0, sizeof(DeviceCounts), stream), launch);
  TF_HPS_RETURN_IF_CUDA_ERROR(cudaMemsetAsync(ws->missed_at, 0, n, stream), launch);
  DedupKernel<Key><<<blocks(n), kThreadsPerBlock, 0, stream>>>(d_keys, n, ws->table, static_cast<uint64_t>(slots - 1),
                                                               ws->rep, unique_keys, ws->unique_pos, &dc->unique);
  TF_HPS_RETURN_IF_CUDA_ERROR(cudaGetLastError(), launch);

  // 2. L1, one stamp for the batch's query and its insertions.
  const uint64_t stamp = cache_ ? cache_->NextStamp() : 0;
  if (cache_) {
    TF_HPS_RETURN_IF_CUDA_ERROR(cache_->QueryCounted(unique_keys, n, &dc->unique, ws->unique_pos, d_out,
                                                     ws->missing_index, &dc->missed, stamp, stream),
                                "querying the GPU cache");
  } else {
    TF_HPS_RETURN_IF_CUDA_ERROR(static_table_->Query(unique_keys, n, &dc->unique, ws->unique_pos, d_out,
                                                     ws->missing_index, &dc->missed, stream),
                                "querying the static GPU table");
  }

  // 3. Misses and counts to the host.
  CollectMissesKernel<Key><<<blocks(n), kThreadsPerBlock, 0, stream>>>(
      unique_keys, ws->unique_pos, ws->missing_index, &dc->missed, ws->host_keys_device, missed_keys, ws->missed_at);
  TF_HPS_RETURN_IF_CUDA_ERROR(cudaGetLastError(), launch);
  CountMissedPositionsKernel<<<blocks(n), kThreadsPerBlock, 0, stream>>>(ws->rep, n, ws->missed_at, &dc->missed,
                                                                          &dc->missed_positions);
  TF_HPS_RETURN_IF_CUDA_ERROR(cudaGetLastError(), launch);
  HostCounts* hc = ws->host_counts;
  TF_HPS_RETURN_IF_CUDA_ERROR(
      cudaMemcpyAsync(&hc->batch, dc, sizeof(DeviceCounts), cudaMemcpyDeviceToHost, stream), launch);
  if (cache_) {
    TF_HPS_RETURN_IF_CUDA_ERROR(cudaMemcpyAsync(&hc->evicted_total, evicted_total_, sizeof(unsigned long long),
                                                cudaMemcpyDeviceToHost, stream),
                                launch);
  } else {
    hc->evicted_total = 0;
  }

  // 4. The one wait.
  TF_HPS_RETURN_IF_CUDA_ERROR(cudaStreamSynchronize(stream), "running the lookup's L1 query");
  const DeviceCounts batch = hc->batch;
  const int64_t u = batch.unique, m = batch.missed;
  if (u < 1 || u > n || m < 0 || m > u || batch.missed_positions < m || batch.missed_positions > n) {
    return {kGpuLookupInternal, "internal error: inconsistent lookup counts (keys " + std::to_string(n) + ", distinct " +
                std::to_string(u) + ", missed " + std::to_string(m) + ", positions missed " +
                std::to_string(batch.missed_positions) + ")"};
  }
  counts->l1_hits = n - batch.missed_positions;
  counts->missed_keys = m;
  if (cache_) counts->evicted = NewEvictions(hc->evicted_total);

  const bool vector4 = dim_ % 4 == 0 && Aligned16(d_out);
  const int64_t vecs = vector4 ? dim_ / 4 : dim_;
  int lanes_log2 = 0;
  while (lanes_log2 < 5 && (int64_t{1} << lanes_log2) < vecs) ++lanes_log2;
  auto copy_rows = [&](auto plan, int64_t rows, const float* src) {
    const int grid = blocks(rows << lanes_log2);
    if (vector4 && Aligned16(src)) {
      CopyRowsKernel<float4><<<grid, kThreadsPerBlock, 0, stream>>>(plan, rows, d_out, src, dim_, lanes_log2);
    } else {
      CopyRowsKernel<float><<<grid, kThreadsPerBlock, 0, stream>>>(plan, rows, d_out, src, dim_, lanes_log2);
    }
    return cudaGetLastError();
  };

  // 5. The tiers below L1, and their rows into the output.
  if (m > 0) {
    status = ws->GrowRows(m, dim_);
    if (!status.ok()) return status;
    std::memset(ws->host_found, 0, m);
    const int rc = fetch(fetch_ctx, ws->host_keys, m, ws->host_rows, ws->host_found);
    if (rc != 0) {
      return {kGpuLookupFetchFailed,
              "the fetch callback failed (returned " + std::to_string(rc) + ") for " + std::to_string(m) + " keys"};
    }
    const char* upload = "copying fetched rows to the device";
    TF_HPS_RETURN_IF_CUDA_ERROR(cudaMemcpyAsync(ws->fetched, ws->host_rows, m * dim_ * sizeof(float),
                                                cudaMemcpyHostToDevice, stream),
                                upload);
    TF_HPS_RETURN_IF_CUDA_ERROR(cudaMemcpyAsync(ws->found, ws->host_found, m, cudaMemcpyHostToDevice, stream),
                                upload);
    TF_HPS_RETURN_IF_CUDA_ERROR(copy_rows(MergeFetchedPlan{ws->missing_index, ws->unique_pos}, m, ws->fetched),
                                launch);
  }

  // 7. Repeated keys (before 6: the output is ready sooner).
  if (u < n) TF_HPS_RETURN_IF_CUDA_ERROR(copy_rows(CopyRepeatsPlan{ws->rep}, n, d_out), launch);

  // 6. Rows some tier held go into the dynamic cache; defaults do not. Under
  // insert_mutex_: the guard's answer, the Replace and the event after it.
  // An update (or refresh) takes the mutex too, so either it began before the
  // guard looked (which then refuses: the rows may be older than the update's)
  // or it waits for `inserted` on the device and overwrites what this inserts.
  if (m > 0 && cache_) {
    int64_t inserted = 0;
    for (int64_t j = 0; j < m; ++j) inserted += ws->host_found[j] != 0;
    if (inserted > 0) {
      std::lock_guard<std::mutex> lock(insert_mutex_);
      if (guard != nullptr && guard(guard_ctx) == 0) {
        inserted = 0;  // the output has the rows all the same
      } else {
        TF_HPS_RETURN_IF_CUDA_ERROR(
            cache_->ReplaceFound(missed_keys, m, ws->fetched, ws->found, evicted_total_, stamp, stream),
            "inserting fetched rows into the GPU cache");
        if (cudaEventRecord(ws->inserted, stream) != cudaSuccess) {
          // No event, so no later write could wait for this insertion on the
          // device: wait for it here, before the mutex is let go.
          TF_HPS_RETURN_IF_CUDA_ERROR(cudaStreamSynchronize(stream), "inserting fetched rows into the GPU cache");
        }
      }
    }
    counts->inserted = inserted;
  }
  return {};
}

GpuLookupStatus GpuLookup::QueryL1(const void* d_keys, int64_t n, float* d_values, int64_t* d_missing_index,
                                   int64_t* d_missing_count, cudaStream_t stream) {
  if (cache_) {
    TF_HPS_RETURN_IF_CUDA_ERROR(cache_->Query(d_keys, n, d_values, d_missing_index, d_missing_count, stream),
                                "querying the GPU cache");
  } else {
    TF_HPS_RETURN_IF_CUDA_ERROR(
        static_table_->Query(d_keys, n, nullptr, nullptr, d_values, d_missing_index, d_missing_count, stream),
        "querying the static GPU table");
  }
  return {};
}

GpuLookupStatus GpuLookup::Update(const int64_t* keys, int64_t m, const float* rows) {
  if (m == 0) return {};
  ScopedDevice scope(device_);
  std::lock_guard<std::mutex> lock(insert_mutex_);
  return OverwriteLocked(keys, m, rows);
}

GpuLookupStatus GpuLookup::OverwriteLocked(const int64_t* keys, int64_t m, const float* rows) {
  // An int32 cache can hold no key outside int32's range: those are dropped.
  std::vector<int32_t> narrow_keys;
  std::vector<float> narrow_rows;
  const void* host_keys = keys;
  if (cache_ && key_bytes_ == 4) {
    for (int64_t i = 0; i < m; ++i) {
      if (keys[i] < INT32_MIN || keys[i] > INT32_MAX) continue;
      narrow_keys.push_back(static_cast<int32_t>(keys[i]));
      narrow_rows.insert(narrow_rows.end(), rows + i * dim_, rows + (i + 1) * dim_);
    }
    m = static_cast<int64_t>(narrow_keys.size());
    if (m == 0) return {};
    host_keys = narrow_keys.data();
    rows = narrow_rows.data();
  }
  const size_t key_size = cache_ ? key_bytes_ : sizeof(int64_t);
  CallScratch d;
  const char* what = "copying updated rows to the device";
  TF_HPS_RETURN_IF_CUDA_ERROR(cudaMalloc(&d.keys, m * key_size), what);
  TF_HPS_RETURN_IF_CUDA_ERROR(cudaMalloc(&d.rows, m * dim_ * sizeof(float)), what);
  TF_HPS_RETURN_IF_CUDA_ERROR(cudaMemcpy(d.keys, host_keys, m * key_size, cudaMemcpyHostToDevice), what);
  TF_HPS_RETURN_IF_CUDA_ERROR(cudaMemcpy(d.rows, rows, m * dim_ * sizeof(float), cudaMemcpyHostToDevice), what);
  // After every insertion enqueued so far, whatever its stream: none is being
  // enqueued now (the caller holds insert_mutex_), and each workspace's
  // `inserted` event stands for its latest one (see gpu_lookup.h).
  {
    std::lock_guard<std::mutex> pool(pool_mutex_);
    for (const std::unique_ptr<Workspace>& ws : all_) {
      TF_HPS_RETURN_IF_CUDA_ERROR(cudaStreamWaitEvent(kWriteStream, ws->inserted, 0),
                                  "ordering the update after the lookups' insertions");
    }
  }
  if (cache_) {
    TF_HPS_RETURN_IF_CUDA_ERROR(cache_->Update(d.keys, m, d.rows, kWriteStream), "updating the GPU cache");
  } else {
    TF_HPS_RETURN_IF_CUDA_ERROR(static_table_->Update(static_cast<const int64_t*>(d.keys), m, d.rows, kWriteStream),
                                "updating the static GPU table");
  }
  // Done when this returns; waits for the insertions above, not for the rest of the device's work.
  TF_HPS_RETURN_IF_CUDA_ERROR(cudaStreamSynchronize(kWriteStream), "updating rows");
  return {};
}

GpuLookupStatus GpuLookup::RefreshChunk(const int64_t* keys, int64_t m, GpuFetchFn fetch, void* fetch_ctx,
                                        GpuInsertGuardFn guard, void* guard_ctx, int64_t* refreshed) {
  std::vector<float> rows(m * dim_);
  std::vector<int8_t> found(m, 0);
  const int rc = fetch(fetch_ctx, keys, m, rows.data(), found.data());
  if (rc != 0) {
    return {kGpuLookupFetchFailed, "the fetch callback failed (returned " + std::to_string(rc) + ") for " +
                                       std::to_string(m) + " keys to refresh"};
  }
  // Rows no tier holds any more keep their L1 row.
  std::vector<int64_t> kept_keys;
  kept_keys.reserve(m);
  for (int64_t j = 0; j < m; ++j) {
    if (!found[j]) continue;
    const int64_t k = static_cast<int64_t>(kept_keys.size());
    if (k != j) std::memcpy(rows.data() + k * dim_, rows.data() + j * dim_, dim_ * sizeof(float));
    kept_keys.push_back(keys[j]);
  }
  const int64_t kept = static_cast<int64_t>(kept_keys.size());
  if (kept == 0) return {};
  std::lock_guard<std::mutex> lock(insert_mutex_);
  // Refused: an update may have begun since fetch read these rows; it writes
  // its newer rows itself, so these must not follow it.
  if (guard != nullptr && guard(guard_ctx) == 0) return {};
  GpuLookupStatus status = OverwriteLocked(kept_keys.data(), kept, rows.data());
  if (status.ok()) *refreshed += kept;
  return status;
}

GpuLookupStatus GpuLookup::Refresh(GpuFetchFn fetch, void* fetch_ctx, GpuInsertGuardFn guard, void* guard_ctx,
                                   int64_t* refreshed) {
  *refreshed = 0;
  ScopedDevice scope(device_);
  if (static_table_) {
    const int64_t total = static_cast<int64_t>(static_keys_.size());
    for (int64_t begin = 0; begin < total; begin += kRefreshChunkKeys) {
      GpuLookupStatus status = RefreshChunk(static_keys_.data() + begin, std::min(kRefreshChunkKeys, total - begin),
                                            fetch, fetch_ctx, guard, guard_ctx, refreshed);
      if (!status.ok()) return status;
    }
    return {};
  }
  // The dynamic cache: the keys of a range of sets at a time, each key once.
  const int64_t sets_per_chunk = kRefreshChunkKeys / kCacheWays;
  CallScratch d;
  const char* what = "reading the keys the GPU cache holds";
  TF_HPS_RETURN_IF_CUDA_ERROR(cudaMalloc(&d.keys, kRefreshChunkKeys * key_bytes_), what);
  TF_HPS_RETURN_IF_CUDA_ERROR(cudaMalloc(&d.count, sizeof(int64_t)), what);
  std::vector<int64_t> keys;
  std::vector<int32_t> narrow_keys;
  for (int64_t set = 0; set < cache_->num_sets(); set += sets_per_chunk) {
    const int64_t end = std::min(cache_->num_sets(), set + sets_per_chunk);
    TF_HPS_RETURN_IF_CUDA_ERROR(cache_->Dump(set, end, d.keys, d.count, kWriteStream), what);
    int64_t count = 0;  // cudaMemcpy runs after the dump on the legacy stream
    TF_HPS_RETURN_IF_CUDA_ERROR(cudaMemcpy(&count, d.count, sizeof(int64_t), cudaMemcpyDeviceToHost), what);
    if (count < 0 || count > (end - set) * kCacheWays) {
      return {kGpuLookupInternal, "internal error: the GPU cache dumped " + std::to_string(count) + " keys of " +
                                      std::to_string(end - set) + " sets"};
    }
    if (count == 0) continue;
    keys.resize(count);
    if (key_bytes_ == 8) {
      TF_HPS_RETURN_IF_CUDA_ERROR(cudaMemcpy(keys.data(), d.keys, count * sizeof(int64_t), cudaMemcpyDeviceToHost),
                                  what);
    } else {
      narrow_keys.resize(count);
      TF_HPS_RETURN_IF_CUDA_ERROR(
          cudaMemcpy(narrow_keys.data(), d.keys, count * sizeof(int32_t), cudaMemcpyDeviceToHost), what);
      std::copy(narrow_keys.begin(), narrow_keys.end(), keys.begin());  // sign-extended
    }
    GpuLookupStatus status = RefreshChunk(keys.data(), count, fetch, fetch_ctx, guard, guard_ctx, refreshed);
    if (!status.ok()) return status;
  }
  return {};
}

GpuLookupStatus GpuLookup::Size(int64_t* size) {
  if (static_table_) {
    *size = static_table_->size();
    return {};
  }
  ScopedDevice scope(device_);
  CallScratch d;
  const char* what = "counting the GPU cache's rows";
  TF_HPS_RETURN_IF_CUDA_ERROR(cudaMalloc(&d.keys, cache_->capacity() * key_bytes_), what);
  TF_HPS_RETURN_IF_CUDA_ERROR(cudaMalloc(&d.count, sizeof(int64_t)), what);
  TF_HPS_RETURN_IF_CUDA_ERROR(cache_->Dump(0, cache_->num_sets(), d.keys, d.count, nullptr), what);
  TF_HPS_RETURN_IF_CUDA_ERROR(cudaDeviceSynchronize(), what);
  TF_HPS_RETURN_IF_CUDA_ERROR(cudaMemcpy(size, d.count, sizeof(int64_t), cudaMemcpyDeviceToHost), what);
  return {};
}

GpuLookupStatus GpuLookup::EvictedTotal(int64_t* evicted) {
  *evicted = 0;
  if (!cache_) return {};
  ScopedDevice scope(device_);
  unsigned long long total = 0;
  TF_HPS_RETURN_IF_CUDA_ERROR(cudaDeviceSynchronize(), "reading the eviction counter");
  TF_HPS_RETURN_IF_CUDA_ERROR(cudaMemcpy(&total, evicted_total_, sizeof(total), cudaMemcpyDeviceToHost),
                              "reading the eviction counter");
  *evicted = static_cast<int64_t>(total);
  return {};
}

}  // namespace tf_hps
