// The device combine of TfHpsSparseLookup's GPU kernel: the rows of a ragged
// batch, already looked up (one per key, in key order), combined into one
// output row per segment in the order of the CPU kernel (ops/sparse_combine.h,
// CombineRows), element by element with explicitly rounded operations, so
// both give the same bits. C ABI: hps_gpu_combine_segments (gpu_lookup_c_api.h).
#ifndef TF_HPS_OPS_CUDA_GPU_COMBINE_H_
#define TF_HPS_OPS_CUDA_GPU_COMBINE_H_

#include <cuda_runtime_api.h>

#include <cstdint>

#include "ops/cuda/gpu_lookup.h"

namespace tf_hps {

enum class GpuOutputType { kFloat32 = 0, kFloat16 = 1, kBfloat16 = 2 };

// See hps_gpu_combine_segments; arguments are checked by the caller.
GpuLookupStatus CombineSegments(const float* d_rows, int64_t nnz, int64_t dim, const int64_t* offsets,
                                const int64_t* order, int64_t num_rows, int combiner, GpuOutputType out_type,
                                int64_t* d_scratch, void* d_out, cudaStream_t stream);

}  // namespace tf_hps

#endif  // TF_HPS_OPS_CUDA_GPU_COMBINE_H_
