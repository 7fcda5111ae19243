#include "ops/cuda/gpu_cache.h"

#include <algorithm>

#include "core/slab_set.h"

namespace tf_hps {
namespace {

constexpr int kThreadsPerBlock = 256;
constexpr int kWarpsPerBlock = kThreadsPerBlock / slab::kLanes;

// The cache's device arrays, passed to kernels by value.
struct Slots {
  int64_t* keys;     // (num_sets * 64)
  uint64_t* stamps;  // (num_sets * 64)
  float* values;     // (num_sets * 64, dim)
  int* locks;        // (num_sets)
  int64_t num_sets;
  int64_t dim;
};

// Keys arrive as int32 or int64; both become int64 (int32 sign-extended).
template <class Key>
__device__ int64_t LoadKey(const Key* keys, int64_t i) {
  return static_cast<int64_t>(keys[i]);
}

// Lane 0 takes the set's lock for the whole warp; the fence after the
// successful CAS makes the previous holder's writes visible to this warp.
__device__ void LockSet(int* lock, int lane) {
  if (lane == 0) {
    unsigned backoff_ns = 8;
    while (atomicCAS(lock, 0, 1) != 0) {
      __nanosleep(backoff_ns);
      backoff_ns = min(backoff_ns * 2, 256u);
    }
    __threadfence();
  }
  __syncwarp();
}

// The warp's writes to the set and its rows become visible before the lock
// is free again.
__device__ void UnlockSet(int* lock, int lane) {
  __syncwarp();
  if (lane == 0) {
    __threadfence();
    atomicExch(lock, 0);
  }
}

// Copies a row of `dim` floats with the 32 lanes of a warp; 16-byte accesses
// when both rows allow them. Reads bypass L1 (__ldcg): cache rows are
// written by other multiprocessors.
__device__ void CopyRow(float* dst, const float* src, int64_t dim, bool vector4, int lane) {
  if (vector4) {
    float4* d = reinterpret_cast<float4*>(dst);
    const float4* s = reinterpret_cast<const float4*>(src);
    for (int64_t j = lane; j < dim / 4; j += slab::kLanes) d[j] = __ldcg(s + j);
  } else {
    for (int64_t j = lane; j < dim; j += slab::kLanes) dst[j] = __ldcg(src + j);
  }
}

__device__ int64_t WarpIndex() { return (blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x) / slab::kLanes; }
__device__ int64_t WarpCount() { return gridDim.x * static_cast<int64_t>(blockDim.x) / slab::kLanes; }

// Starts moving a line into L2 without waiting for it.
__device__ void PrefetchL2(const void* p) { asm volatile("prefetch.global.L2 [%0];" ::"l"(p)); }

// The hot path. Per key a warp waits on a chain of memory round trips (key,
// lock, slab, row, release), so two of them are started early: the next
// key's load, and the first slab of the set while the lock is being taken.
// With n_device the key count is *n_device (at most n); with out_rows key i's
// row goes to values[out_rows[i]].
template <class Key>
__global__ void QueryKernel(Slots c, const Key* keys, int64_t n, const int64_t* n_device, const int32_t* out_rows,
                            float* values, bool vector4, int64_t* missing_index, unsigned long long* missing_count,
                            uint64_t stamp) {
  const slab::WarpLanes lanes{static_cast<int>(threadIdx.x % slab::kLanes)};
  if (n_device != nullptr) n = min(n, *n_device);
  const int64_t stride = WarpCount();
  int64_t i = WarpIndex();
  int64_t key = i < n ? LoadKey(keys, i) : 0;
  for (; i < n; i += stride) {
    const int64_t next_key = i + stride < n ? LoadKey(keys, i + stride) : 0;
    const slab::Home home = slab::HomeOf(key, c.num_sets);
    const int64_t base = home.set * slab::kWays;
    const int64_t first = base + home.first_slab * slab::kLanes + lanes.lane;
    PrefetchL2(c.keys + first);
    PrefetchL2(c.stamps + first);
    LockSet(c.locks + home.set, lanes.lane);
    const int way = slab::FindWay(lanes, c.keys + base, c.stamps + base, home.first_slab, key);
    if (way >= 0) {
      if (lanes.lane == 0) slab::Touch(c.stamps + base + way, stamp);
      const int64_t row = out_rows != nullptr ? out_rows[i] : i;
      CopyRow(values + row * c.dim, c.values + (base + way) * c.dim, c.dim, vector4, lanes.lane);
    }
    UnlockSet(c.locks + home.set, lanes.lane);
    if (way < 0 && lanes.lane == 0) missing_index[atomicAdd(missing_count, 1ull)] = i;
    key = next_key;
  }
}

// With `found`, keys whose found[i] is 0 are skipped (the branch is warp
// uniform: one key per warp). With `evicted`, each warp adds the ways it took
// from other keys, once, at the end.
template <class Key>
__global__ void ReplaceKernel(Slots c, const Key* keys, int64_t n, const float* values, bool vector4,
                              uint64_t stamp, const int8_t* found, unsigned long long* evicted) {
  const slab::WarpLanes lanes{static_cast<int>(threadIdx.x % slab::kLanes)};
  unsigned long long evicted_here = 0;  // lane 0's count
  for (int64_t i = WarpIndex(); i < n; i += WarpCount()) {
    if (found != nullptr && found[i] == 0) continue;
    const int64_t key = LoadKey(keys, i);
    const slab::Home home = slab::HomeOf(key, c.num_sets);
    const int64_t base = home.set * slab::kWays;
    LockSet(c.locks + home.set, lanes.lane);
    bool cached;
    const int way = slab::ChooseWay(lanes, c.keys + base, c.stamps + base, home.first_slab, key, &cached);
    __syncwarp();  // every lane has read the set before lane 0 changes it
    if (lanes.lane == 0) {
      if (cached) {
        slab::Touch(c.stamps + base + way, stamp);
      } else {
        evicted_here += slab::WarpLanes::Load(c.stamps + base + way) != 0;  // the way held another key
        c.keys[base + way] = key;
        c.stamps[base + way] = stamp;
      }
    }
    CopyRow(c.values + (base + way) * c.dim, values + i * c.dim, c.dim, vector4, lanes.lane);
    UnlockSet(c.locks + home.set, lanes.lane);
  }
  if (evicted != nullptr && lanes.lane == 0 && evicted_here != 0) atomicAdd(evicted, evicted_here);
}

template <class Key>
__global__ void UpdateKernel(Slots c, const Key* keys, int64_t n, const float* values, bool vector4) {
  const slab::WarpLanes lanes{static_cast<int>(threadIdx.x % slab::kLanes)};
  for (int64_t i = WarpIndex(); i < n; i += WarpCount()) {
    const int64_t key = LoadKey(keys, i);
    const slab::Home home = slab::HomeOf(key, c.num_sets);
    const int64_t base = home.set * slab::kWays;
    LockSet(c.locks + home.set, lanes.lane);
    const int way = slab::FindWay(lanes, c.keys + base, c.stamps + base, home.first_slab, key);
    if (way >= 0) CopyRow(c.values + (base + way) * c.dim, values + i * c.dim, c.dim, vector4, lanes.lane);
    UnlockSet(c.locks + home.set, lanes.lane);
  }
}

// One warp per set: each lane looks at its slot in both slabs; one atomicAdd
// per set reserves the output range.
template <class Key>
__global__ void DumpKernel(Slots c, int64_t set_begin, int64_t set_end, Key* keys_out,
                           unsigned long long* count) {
  const slab::WarpLanes lanes{static_cast<int>(threadIdx.x % slab::kLanes)};
  const uint32_t below = (1u << lanes.lane) - 1;  // lanes before this one
  for (int64_t set = set_begin + WarpIndex(); set < set_end; set += WarpCount()) {
    const int64_t base = set * slab::kWays;
    LockSet(c.locks + set, lanes.lane);
    const int64_t* keys = c.keys + base;
    const uint64_t* stamps = c.stamps + base;
    const uint32_t full0 = ~lanes.EmptyMask(stamps);
    const uint32_t full1 = ~lanes.EmptyMask(stamps + slab::kLanes);
    unsigned long long first = 0;
    if (lanes.lane == 0) first = atomicAdd(count, static_cast<unsigned long long>(__popc(full0) + __popc(full1)));
    first = __shfl_sync(slab::kAllLanes, first, 0);
    if (full0 & (1u << lanes.lane)) keys_out[first + __popc(full0 & below)] = static_cast<Key>(keys[lanes.lane]);
    if (full1 & (1u << lanes.lane)) {
      keys_out[first + __popc(full0) + __popc(full1 & below)] = static_cast<Key>(keys[slab::kLanes + lanes.lane]);
    }
    UnlockSet(c.locks + set, lanes.lane);
  }
}

// Blocks of every kernel that fit on one multiprocessor at once (the least of them).
cudaError_t ResidentBlocksPerSm(int* out) {
  const void* kernels[] = {
      reinterpret_cast<const void*>(&QueryKernel<int64_t>), reinterpret_cast<const void*>(&QueryKernel<int32_t>),
      reinterpret_cast<const void*>(&ReplaceKernel<int64_t>), reinterpret_cast<const void*>(&ReplaceKernel<int32_t>),
      reinterpret_cast<const void*>(&UpdateKernel<int64_t>), reinterpret_cast<const void*>(&UpdateKernel<int32_t>),
      reinterpret_cast<const void*>(&DumpKernel<int64_t>), reinterpret_cast<const void*>(&DumpKernel<int32_t>)};
  int least = 1 << 30;
  for (const void* kernel : kernels) {
    int blocks = 0;
    const cudaError_t err = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, kernel, kThreadsPerBlock, 0);
    if (err != cudaSuccess) return err;
    least = std::min(least, blocks);
  }
  *out = std::max(least, 1);
  return cudaSuccess;
}

bool Aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

// Runs the calls of one method on the cache's device, then restores the
// caller's current device.
class DeviceScope {
 public:
  explicit DeviceScope(int device) {
    if (cudaGetDevice(&previous_) == cudaSuccess && previous_ != device) {
      if (cudaSetDevice(device) == cudaSuccess) restore_ = true;
    }
  }
  ~DeviceScope() {
    if (restore_) cudaSetDevice(previous_);
  }

 private:
  int previous_ = 0;
  bool restore_ = false;
};

}  // namespace

cudaError_t GpuCache::Create(int64_t capacity_rows, int64_t dim, int key_bytes, GpuCache** out) {
  *out = nullptr;
  if (capacity_rows < 0 || dim <= 0 || (key_bytes != 4 && key_bytes != 8)) return cudaErrorInvalidValue;
  GpuCache* cache = new GpuCache();
  cache->key_bytes_ = key_bytes;
  cache->dim_ = dim;
  cache->num_sets_ = std::max<int64_t>(1, (capacity_rows + slab::kWays - 1) / slab::kWays);
  const int64_t slots = cache->num_sets_ * slab::kWays;
  cudaError_t err = cudaGetDevice(&cache->device_);
  if (err == cudaSuccess) {
    err = cudaDeviceGetAttribute(&cache->multiprocessors_, cudaDevAttrMultiProcessorCount, cache->device_);
  }
  if (err == cudaSuccess) err = ResidentBlocksPerSm(&cache->resident_blocks_per_sm_);
  if (err == cudaSuccess) err = cudaMalloc(&cache->keys_, slots * sizeof(int64_t));
  if (err == cudaSuccess) err = cudaMalloc(&cache->stamps_, slots * sizeof(uint64_t));
  if (err == cudaSuccess) err = cudaMalloc(&cache->values_, slots * dim * sizeof(float));
  if (err == cudaSuccess) err = cudaMalloc(&cache->locks_, cache->num_sets_ * sizeof(int));
  if (err == cudaSuccess) err = cudaMemset(cache->keys_, 0, slots * sizeof(int64_t));
  if (err == cudaSuccess) err = cudaMemset(cache->stamps_, 0, slots * sizeof(uint64_t));
  if (err == cudaSuccess) err = cudaMemset(cache->locks_, 0, cache->num_sets_ * sizeof(int));
  // The zeroing must be done before any stream, blocking or not, uses the cache.
  if (err == cudaSuccess) err = cudaDeviceSynchronize();
  if (err != cudaSuccess) {
    delete cache;
    return err;
  }
  *out = cache;
  return cudaSuccess;
}

GpuCache::~GpuCache() {
  DeviceScope scope(device_);
  cudaFree(keys_);
  cudaFree(stamps_);
  cudaFree(values_);
  cudaFree(locks_);
}

int GpuCache::Blocks(int64_t warps_needed) const {
  // At most one wave of resident blocks, each warp striding over many keys:
  // a second, partial wave would leave most multiprocessors idle at the end.
  const int64_t blocks = (warps_needed + kWarpsPerBlock - 1) / kWarpsPerBlock;
  return static_cast<int>(
      std::max<int64_t>(1, std::min<int64_t>(blocks, int64_t{multiprocessors_} * resident_blocks_per_sm_)));
}

cudaError_t GpuCache::Query(const void* keys, int64_t n, float* values, int64_t* missing_index,
                            int64_t* missing_count, cudaStream_t stream) {
  return QueryCounted(keys, n, nullptr, nullptr, values, missing_index, missing_count, NextStamp(), stream);
}

cudaError_t GpuCache::QueryCounted(const void* keys, int64_t max_n, const int64_t* d_n, const int32_t* out_rows,
                                   float* values, int64_t* missing_index, int64_t* missing_count, uint64_t stamp,
                                   cudaStream_t stream) {
  if (max_n < 0) return cudaErrorInvalidValue;
  DeviceScope scope(device_);
  cudaError_t err = cudaMemsetAsync(missing_count, 0, sizeof(int64_t), stream);
  if (err != cudaSuccess || max_n == 0) return err;
  const Slots c{keys_, stamps_, values_, locks_, num_sets_, dim_};
  const bool vector4 = dim_ % 4 == 0 && Aligned16(values);
  auto* count = reinterpret_cast<unsigned long long*>(missing_count);
  if (key_bytes_ == 8) {
    QueryKernel<<<Blocks(max_n), kThreadsPerBlock, 0, stream>>>(c, static_cast<const int64_t*>(keys), max_n, d_n,
                                                                out_rows, values, vector4, missing_index, count,
                                                                stamp);
  } else {
    QueryKernel<<<Blocks(max_n), kThreadsPerBlock, 0, stream>>>(c, static_cast<const int32_t*>(keys), max_n, d_n,
                                                                out_rows, values, vector4, missing_index, count,
                                                                stamp);
  }
  return cudaGetLastError();
}

cudaError_t GpuCache::Replace(const void* keys, int64_t n, const float* values, cudaStream_t stream) {
  return ReplaceFound(keys, n, values, nullptr, nullptr, NextStamp(), stream);
}

cudaError_t GpuCache::ReplaceFound(const void* keys, int64_t n, const float* values, const int8_t* found,
                                   unsigned long long* evicted, uint64_t stamp, cudaStream_t stream) {
  if (n < 0) return cudaErrorInvalidValue;
  if (n == 0) return cudaSuccess;
  DeviceScope scope(device_);
  const Slots c{keys_, stamps_, values_, locks_, num_sets_, dim_};
  const bool vector4 = dim_ % 4 == 0 && Aligned16(values);
  if (key_bytes_ == 8) {
    ReplaceKernel<<<Blocks(n), kThreadsPerBlock, 0, stream>>>(c, static_cast<const int64_t*>(keys), n, values,
                                                              vector4, stamp, found, evicted);
  } else {
    ReplaceKernel<<<Blocks(n), kThreadsPerBlock, 0, stream>>>(c, static_cast<const int32_t*>(keys), n, values,
                                                              vector4, stamp, found, evicted);
  }
  return cudaGetLastError();
}

cudaError_t GpuCache::Update(const void* keys, int64_t n, const float* values, cudaStream_t stream) {
  if (n < 0) return cudaErrorInvalidValue;
  if (n == 0) return cudaSuccess;
  DeviceScope scope(device_);
  const Slots c{keys_, stamps_, values_, locks_, num_sets_, dim_};
  const bool vector4 = dim_ % 4 == 0 && Aligned16(values);
  if (key_bytes_ == 8) {
    UpdateKernel<<<Blocks(n), kThreadsPerBlock, 0, stream>>>(c, static_cast<const int64_t*>(keys), n, values,
                                                             vector4);
  } else {
    UpdateKernel<<<Blocks(n), kThreadsPerBlock, 0, stream>>>(c, static_cast<const int32_t*>(keys), n, values,
                                                             vector4);
  }
  return cudaGetLastError();
}

cudaError_t GpuCache::Dump(int64_t set_begin, int64_t set_end, void* keys_out, int64_t* count,
                           cudaStream_t stream) {
  DeviceScope scope(device_);
  set_begin = std::max<int64_t>(set_begin, 0);
  set_end = std::min(set_end, num_sets_);
  cudaError_t err = cudaMemsetAsync(count, 0, sizeof(int64_t), stream);
  if (err != cudaSuccess || set_end <= set_begin) return err;
  const Slots c{keys_, stamps_, values_, locks_, num_sets_, dim_};
  auto* counter = reinterpret_cast<unsigned long long*>(count);
  const int blocks = Blocks(set_end - set_begin);
  if (key_bytes_ == 8) {
    DumpKernel<<<blocks, kThreadsPerBlock, 0, stream>>>(c, set_begin, set_end, static_cast<int64_t*>(keys_out),
                                                        counter);
  } else {
    DumpKernel<<<blocks, kThreadsPerBlock, 0, stream>>>(c, set_begin, set_end, static_cast<int32_t*>(keys_out),
                                                        counter);
  }
  return cudaGetLastError();
}

}  // namespace tf_hps
