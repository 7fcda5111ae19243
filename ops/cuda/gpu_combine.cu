#include "ops/cuda/gpu_combine.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cstring>
#include <map>
#include <string>
#include <type_traits>

#include "ops/sparse_combine.h"

namespace tf_hps {
namespace {

constexpr int kMaxThreadsPerBlock = 256;
constexpr int64_t kMaxBlocks = 1 << 20;

// float32 -> the output type, to nearest even.
template <class T>
__device__ T FromFloat(float x) {
  if constexpr (std::is_same_v<T, __half>) {
    return __float2half_rn(x);
  } else if constexpr (std::is_same_v<T, __nv_bfloat16>) {
    return __float2bfloat16_rn(x);
  } else {
    return x;
  }
}

// float32 arithmetic as TensorFlow's CPU kernels run it: with denormals
// flushed (TF sets flush-to-zero and denormals-are-zero on its threads), so
// a subnormal input counts as a zero of its sign and a subnormal result
// becomes one; .rn rounds to nearest even, and ptxas fuses no .rn operation
// into an FMA.
__device__ __forceinline__ float AddFtz(float a, float b) {
  float r;
  asm("add.rn.ftz.f32 %0, %1, %2;" : "=f"(r) : "f"(a), "f"(b));
  return r;
}
__device__ __forceinline__ float MulFtz(float a, float b) {
  float r;
  asm("mul.rn.ftz.f32 %0, %1, %2;" : "=f"(r) : "f"(a), "f"(b));
  return r;
}
__device__ __forceinline__ float DivFtz(float a, float b) {
  float r;
  asm("div.rn.ftz.f32 %0, %1, %2;" : "=f"(r) : "f"(a), "f"(b));
  return r;
}

// One block per output row (grid-stride), a thread per column: column d of
// row r combines rows[order[offsets[r] + k]][d] for k = 0 .. n-1 exactly as
// CombineRows does (a single key copied; else the first group left to right,
// times its scale, then groups of 8 summed first, then the divisor).
template <class T>
__global__ void CombineKernel(const float* rows, int64_t dim, const int64_t* offsets, const int64_t* order,
                              int64_t num_rows, Combiner combiner, T* out) {
  for (int64_t r = blockIdx.x; r < num_rows; r += gridDim.x) {
    const int64_t begin = offsets[r];
    const int64_t n = offsets[r + 1] - begin;
    const int64_t* positions = order + begin;
    const CombineScale scale = n >= 2 ? ScaleFor(combiner, n) : CombineScale{};
    const int64_t first = n >= 2 ? FirstGroupSize(n) : n;
    for (int64_t d = threadIdx.x; d < dim; d += blockDim.x) {
      const auto x = [&](int64_t k) { return rows[positions[k] * dim + d]; };
      float acc = 0.0f;
      if (n == 1) {
        acc = x(0);
      } else if (n >= 2) {
        acc = x(0);
        for (int64_t k = 1; k < first; ++k) acc = AddFtz(acc, x(k));
        if (scale.first_group != 1.0f) acc = MulFtz(acc, scale.first_group);
        for (int64_t k = first; k < n; k += 8) {
          float group = AddFtz(x(k), x(k + 1));
          for (int j = 2; j < 8; ++j) group = AddFtz(group, x(k + j));
          acc = AddFtz(acc, group);
        }
        if (scale.divide) acc = DivFtz(acc, scale.divisor);
      }
      out[r * dim + d] = FromFloat<T>(acc);
    }
  }
}

GpuLookupStatus CudaFailed(cudaError_t err, const std::string& what) {
  return GpuLookupStatus{static_cast<int>(err), what + ": " + cudaGetErrorString(err)};
}

// This thread's pinned copy of the last call's offsets and order, per device:
// an asynchronous copy reads it after the call returns, so the next call
// waits for the event recorded after that copy before it writes the buffer.
// (Never freed: a thread's buffers live as long as the process's GPU work.)
struct Staging {
  int64_t* host = nullptr;
  size_t capacity = 0;  // int64 values
  cudaEvent_t copied = nullptr;
  bool pending = false;  // `copied` was recorded after a copy from `host`
};

GpuLookupStatus Stage(const int64_t* offsets, int64_t num_rows, const int64_t* order, int64_t nnz,
                      int64_t* d_scratch, cudaStream_t stream) {
  int device = 0;
  cudaError_t err = cudaGetDevice(&device);
  if (err != cudaSuccess) return CudaFailed(err, "finding the current CUDA device");
  thread_local std::map<int, Staging> per_device;
  Staging& staging = per_device[device];
  if (staging.copied == nullptr) {
    err = cudaEventCreateWithFlags(&staging.copied, cudaEventDisableTiming);
    if (err != cudaSuccess) return CudaFailed(err, "creating the staging event");
  }
  if (staging.pending) {
    err = cudaEventSynchronize(staging.copied);
    if (err != cudaSuccess) return CudaFailed(err, "waiting for the previous copy of the segment order");
    staging.pending = false;
  }
  const size_t values = static_cast<size_t>(num_rows + 1 + nnz);
  if (values > staging.capacity) {
    const size_t capacity = std::max(values, 2 * staging.capacity);
    if (staging.host != nullptr) cudaFreeHost(staging.host);
    staging.host = nullptr;
    staging.capacity = 0;
    err = cudaHostAlloc(reinterpret_cast<void**>(&staging.host), capacity * sizeof(int64_t), cudaHostAllocDefault);
    if (err != cudaSuccess) return CudaFailed(err, "allocating pinned memory for the segment order");
    staging.capacity = capacity;
  }
  std::memcpy(staging.host, offsets, (num_rows + 1) * sizeof(int64_t));
  if (nnz > 0) std::memcpy(staging.host + num_rows + 1, order, nnz * sizeof(int64_t));
  err = cudaMemcpyAsync(d_scratch, staging.host, values * sizeof(int64_t), cudaMemcpyHostToDevice, stream);
  if (err != cudaSuccess) return CudaFailed(err, "copying the segment order to the device");
  err = cudaEventRecord(staging.copied, stream);
  if (err != cudaSuccess) return CudaFailed(err, "recording the copy of the segment order");
  staging.pending = true;
  return {};
}

}  // namespace

GpuLookupStatus CombineSegments(const float* d_rows, int64_t nnz, int64_t dim, const int64_t* offsets,
                                const int64_t* order, int64_t num_rows, int combiner, GpuOutputType out_type,
                                int64_t* d_scratch, void* d_out, cudaStream_t stream) {
  if (num_rows == 0) return {};
  int64_t* d_offsets = d_scratch;
  int64_t* d_order = d_scratch + num_rows + 1;
  const GpuLookupStatus staged = Stage(offsets, num_rows, order, nnz, d_scratch, stream);
  if (!staged.ok()) return staged;
  const int threads = static_cast<int>(std::min<int64_t>(kMaxThreadsPerBlock, (dim + 31) / 32 * 32));
  const int blocks = static_cast<int>(std::min<int64_t>(num_rows, kMaxBlocks));
  const Combiner how = static_cast<Combiner>(combiner);
  switch (out_type) {
    case GpuOutputType::kFloat32:
      CombineKernel<<<blocks, threads, 0, stream>>>(d_rows, dim, d_offsets, d_order, num_rows, how,
                                                    static_cast<float*>(d_out));
      break;
    case GpuOutputType::kFloat16:
      CombineKernel<<<blocks, threads, 0, stream>>>(d_rows, dim, d_offsets, d_order, num_rows, how,
                                                    static_cast<__half*>(d_out));
      break;
    case GpuOutputType::kBfloat16:
      CombineKernel<<<blocks, threads, 0, stream>>>(d_rows, dim, d_offsets, d_order, num_rows, how,
                                                    static_cast<__nv_bfloat16*>(d_out));
      break;
  }
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) return CudaFailed(err, "launching the combine kernel");
  return {};
}

}  // namespace tf_hps
