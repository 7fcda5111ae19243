#include "ops/cuda/gpu_static_table.h"

#include <algorithm>
#include <memory>

#include "base/key_hash.h"

namespace tf_hps {
namespace {

constexpr int kThreadsPerBlock = 256;
constexpr int kLanes = 32;
constexpr unsigned kAllLanes = 0xffffffffu;
constexpr long long kEmptyRow = -1;

// One slot of the index; 16-byte aligned so a probe is one 128-bit load.
struct alignas(16) Slot {
  long long key;
  long long row;  // kEmptyRow: the slot is free
};
static_assert(sizeof(Slot) == sizeof(longlong2), "a slot is loaded as one longlong2");

__device__ int64_t ThreadIndex() { return blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; }
__device__ int64_t ThreadCount() { return gridDim.x * static_cast<int64_t>(blockDim.x); }
__device__ int64_t WarpIndex() { return ThreadIndex() / kLanes; }
__device__ int64_t WarpCount() { return ThreadCount() / kLanes; }

__device__ uint64_t SlotOf(int64_t key, uint64_t mask) { return MixKey(static_cast<uint64_t>(key)) & mask; }

// The row of `key`, or -1. The index is at most half full, so every probe
// sequence reaches an empty slot. Slots never change after the build, so
// the read-only cache path (__ldg) is safe.
__device__ int64_t FindRow(const Slot* slots, uint64_t mask, int64_t key) {
  for (uint64_t h = SlotOf(key, mask);; h = (h + 1) & mask) {
    const longlong2 slot = __ldg(reinterpret_cast<const longlong2*>(slots) + h);
    if (slot.y == kEmptyRow) return -1;
    if (slot.x == key) return slot.y;
  }
}

// Build, pass 1: claim a slot per distinct key (see the header). A repeated
// key keeps the largest position, i.e. its last row.
__global__ void InsertKernel(Slot* slots, uint64_t mask, const int64_t* keys, int64_t n,
                             unsigned long long* distinct) {
  unsigned long long claimed = 0;
  for (int64_t i = ThreadIndex(); i < n; i += ThreadCount()) {
    const int64_t key = keys[i];
    for (uint64_t h = SlotOf(key, mask);; h = (h + 1) & mask) {
      auto* row = reinterpret_cast<unsigned long long*>(&slots[h].row);
      const long long holder = static_cast<long long>(
          atomicCAS(row, static_cast<unsigned long long>(kEmptyRow), static_cast<unsigned long long>(i)));
      if (holder == kEmptyRow) {
        ++claimed;
        break;
      }
      if (keys[holder] == key) {
        atomicMax(reinterpret_cast<long long*>(row), static_cast<long long>(i));
        break;
      }
    }
  }
  if (claimed != 0) atomicAdd(distinct, claimed);
}

// Build, pass 2: every claimed slot gets its key.
__global__ void FillKeysKernel(Slot* slots, uint64_t num_slots, const int64_t* keys) {
  for (int64_t h = ThreadIndex(); h < static_cast<int64_t>(num_slots); h += ThreadCount()) {
    const long long row = slots[h].row;
    if (row != kEmptyRow) slots[h].key = keys[row];
  }
}

// A warp takes 32 consecutive keys: each lane probes for its own, the misses
// reserve their places in missing_index with one atomicAdd per warp, then the
// warp copies the hit rows one by one, every lane moving one Vec at a time.
template <class Key, class Vec>
__global__ void QueryKernel(const Slot* slots, uint64_t mask, const float* rows, int64_t dim, const Key* keys,
                            int64_t n, const int64_t* n_device, const int32_t* out_rows, float* values,
                            int64_t* missing_index, unsigned long long* missing_count) {
  if (n_device != nullptr) n = min(n, *n_device);
  const int lane = threadIdx.x % kLanes;
  const int64_t vecs = dim * static_cast<int64_t>(sizeof(float)) / static_cast<int64_t>(sizeof(Vec));
  for (int64_t base = WarpIndex() * kLanes; base < n; base += WarpCount() * kLanes) {
    const int64_t i = base + lane;
    int64_t row = -1, dst = 0;
    if (i < n) {
      row = FindRow(slots, mask, static_cast<int64_t>(keys[i]));
      dst = out_rows != nullptr ? out_rows[i] : i;
    }
    const uint32_t missed = __ballot_sync(kAllLanes, i < n && row < 0);
    if (missed != 0) {
      unsigned long long first = 0;
      if (lane == 0) first = atomicAdd(missing_count, static_cast<unsigned long long>(__popc(missed)));
      first = __shfl_sync(kAllLanes, first, 0);
      if (missed & (1u << lane)) missing_index[first + __popc(missed & ((1u << lane) - 1))] = i;
    }
    for (uint32_t left = __ballot_sync(kAllLanes, row >= 0); left != 0; left &= left - 1) {
      const int k = __ffs(left) - 1;
      const int64_t r = __shfl_sync(kAllLanes, row, k);
      const int64_t d = __shfl_sync(kAllLanes, dst, k);
      const Vec* src = reinterpret_cast<const Vec*>(rows + r * dim);
      Vec* out = reinterpret_cast<Vec*>(values + d * dim);
      for (int64_t j = lane; j < vecs; j += kLanes) out[j] = src[j];
    }
  }
}

// One warp per key; every lane probes (same addresses, one transaction).
template <class Vec>
__global__ void UpdateKernel(const Slot* slots, uint64_t mask, float* rows, int64_t dim, const int64_t* keys,
                             int64_t n, const float* values) {
  const int lane = threadIdx.x % kLanes;
  const int64_t vecs = dim * static_cast<int64_t>(sizeof(float)) / static_cast<int64_t>(sizeof(Vec));
  for (int64_t i = WarpIndex(); i < n; i += WarpCount()) {
    const int64_t r = FindRow(slots, mask, keys[i]);
    if (r < 0) continue;
    const Vec* src = reinterpret_cast<const Vec*>(values + i * dim);
    Vec* dst = reinterpret_cast<Vec*>(rows + r * dim);
    for (int64_t j = lane; j < vecs; j += kLanes) dst[j] = src[j];
  }
}

bool Aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

// Device memory freed when the scope ends (build scratch).
struct DeviceBuffer {
  void* ptr = nullptr;
  ~DeviceBuffer() { cudaFree(ptr); }
};

}  // namespace

ScopedDevice::ScopedDevice(int device) {
  if (cudaGetDevice(&previous_) == cudaSuccess && previous_ != device) {
    if (cudaSetDevice(device) == cudaSuccess) restore_ = true;
  }
}

ScopedDevice::~ScopedDevice() {
  if (restore_) cudaSetDevice(previous_);
}

cudaError_t GpuStaticTable::Create(const int64_t* keys, int64_t n, const float* rows, int64_t dim, int key_bytes,
                                   GpuStaticTable** out) {
  *out = nullptr;
  if (n < 0 || dim <= 0 || (key_bytes != 4 && key_bytes != 8) || (n > 0 && (keys == nullptr || rows == nullptr))) {
    return cudaErrorInvalidValue;
  }
  std::unique_ptr<GpuStaticTable> table(new GpuStaticTable());
  table->key_bytes_ = key_bytes;
  table->dim_ = dim;
  uint64_t num_slots = 64;
  while (num_slots < 2 * static_cast<uint64_t>(n)) num_slots <<= 1;
  table->slot_mask_ = num_slots - 1;
  cudaError_t err = cudaGetDevice(&table->device_);
  if (err == cudaSuccess) {
    err = cudaDeviceGetAttribute(&table->multiprocessors_, cudaDevAttrMultiProcessorCount, table->device_);
  }
  DeviceBuffer device_keys, distinct;
  const size_t row_bytes = static_cast<size_t>(std::max<int64_t>(n, 1)) * dim * sizeof(float);
  if (err == cudaSuccess) err = cudaMalloc(&table->slots_, num_slots * sizeof(Slot));
  if (err == cudaSuccess) err = cudaMalloc(reinterpret_cast<void**>(&table->rows_), row_bytes);
  if (err == cudaSuccess) err = cudaMalloc(&device_keys.ptr, std::max<int64_t>(n, 1) * sizeof(int64_t));
  if (err == cudaSuccess) err = cudaMalloc(&distinct.ptr, sizeof(unsigned long long));
  // All bits set: every row is kEmptyRow.
  if (err == cudaSuccess) err = cudaMemset(table->slots_, 0xff, num_slots * sizeof(Slot));
  if (err == cudaSuccess) err = cudaMemset(distinct.ptr, 0, sizeof(unsigned long long));
  if (err == cudaSuccess && n > 0) {
    err = cudaMemcpy(device_keys.ptr, keys, n * sizeof(int64_t), cudaMemcpyHostToDevice);
    if (err == cudaSuccess) err = cudaMemcpy(table->rows_, rows, n * dim * sizeof(float), cudaMemcpyHostToDevice);
    auto* slots = static_cast<Slot*>(table->slots_);
    const auto* k = static_cast<const int64_t*>(device_keys.ptr);
    if (err == cudaSuccess) {
      InsertKernel<<<table->Blocks(n), kThreadsPerBlock>>>(slots, table->slot_mask_, k, n,
                                                           static_cast<unsigned long long*>(distinct.ptr));
      err = cudaGetLastError();
    }
    if (err == cudaSuccess) {
      FillKeysKernel<<<table->Blocks(num_slots), kThreadsPerBlock>>>(slots, num_slots, k);
      err = cudaGetLastError();
    }
  }
  // The build ran on the legacy default stream: it must be done before any
  // stream, blocking or not, queries the table.
  if (err == cudaSuccess) err = cudaDeviceSynchronize();
  unsigned long long size = 0;
  if (err == cudaSuccess) err = cudaMemcpy(&size, distinct.ptr, sizeof(size), cudaMemcpyDeviceToHost);
  if (err != cudaSuccess) return err;
  table->size_ = static_cast<int64_t>(size);
  *out = table.release();
  return cudaSuccess;
}

GpuStaticTable::~GpuStaticTable() {
  ScopedDevice scope(device_);
  cudaFree(slots_);
  cudaFree(rows_);
}

int GpuStaticTable::Blocks(int64_t threads_needed) const {
  // Grid-stride kernels: at most one full wave of 2048 threads per multiprocessor.
  const int64_t blocks = (threads_needed + kThreadsPerBlock - 1) / kThreadsPerBlock;
  return static_cast<int>(std::max<int64_t>(
      1, std::min<int64_t>(blocks, int64_t{multiprocessors_} * (2048 / kThreadsPerBlock))));
}

cudaError_t GpuStaticTable::Query(const void* keys, int64_t n, const int64_t* d_n, const int32_t* out_rows,
                                  float* values, int64_t* missing_index, int64_t* missing_count,
                                  cudaStream_t stream) {
  if (n < 0) return cudaErrorInvalidValue;
  ScopedDevice scope(device_);
  cudaError_t err = cudaMemsetAsync(missing_count, 0, sizeof(int64_t), stream);
  if (err != cudaSuccess || n == 0) return err;
  const auto* slots = static_cast<const Slot*>(slots_);
  auto* count = reinterpret_cast<unsigned long long*>(missing_count);
  const int blocks = Blocks(n);
  const bool vector4 = dim_ % 4 == 0 && Aligned16(values);
  if (key_bytes_ == 8) {
    const auto* k = static_cast<const int64_t*>(keys);
    if (vector4) {
      QueryKernel<int64_t, float4><<<blocks, kThreadsPerBlock, 0, stream>>>(
          slots, slot_mask_, rows_, dim_, k, n, d_n, out_rows, values, missing_index, count);
    } else {
      QueryKernel<int64_t, float><<<blocks, kThreadsPerBlock, 0, stream>>>(
          slots, slot_mask_, rows_, dim_, k, n, d_n, out_rows, values, missing_index, count);
    }
  } else {
    const auto* k = static_cast<const int32_t*>(keys);
    if (vector4) {
      QueryKernel<int32_t, float4><<<blocks, kThreadsPerBlock, 0, stream>>>(
          slots, slot_mask_, rows_, dim_, k, n, d_n, out_rows, values, missing_index, count);
    } else {
      QueryKernel<int32_t, float><<<blocks, kThreadsPerBlock, 0, stream>>>(
          slots, slot_mask_, rows_, dim_, k, n, d_n, out_rows, values, missing_index, count);
    }
  }
  return cudaGetLastError();
}

cudaError_t GpuStaticTable::Update(const int64_t* keys, int64_t n, const float* values, cudaStream_t stream) {
  if (n < 0) return cudaErrorInvalidValue;
  if (n == 0) return cudaSuccess;
  ScopedDevice scope(device_);
  const auto* slots = static_cast<const Slot*>(slots_);
  const int blocks = Blocks(n * kLanes);
  if (dim_ % 4 == 0 && Aligned16(values)) {
    UpdateKernel<float4><<<blocks, kThreadsPerBlock, 0, stream>>>(slots, slot_mask_, rows_, dim_, keys, n, values);
  } else {
    UpdateKernel<float><<<blocks, kThreadsPerBlock, 0, stream>>>(slots, slot_mask_, rows_, dim_, keys, n, values);
  }
  return cudaGetLastError();
}

}  // namespace tf_hps
