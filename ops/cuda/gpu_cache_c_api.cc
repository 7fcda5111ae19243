#include "ops/cuda/gpu_cache_c_api.h"

#include <cuda_runtime_api.h>

#include <cstring>

#include "ops/cuda/gpu_cache.h"

#define TF_HPS_EXPORT __attribute__((visibility("default")))

struct hps_gpu_cache {
  tf_hps::GpuCache* impl;
};

namespace {

cudaStream_t AsStream(void* stream) { return static_cast<cudaStream_t>(stream); }

}  // namespace

extern "C" {

TF_HPS_EXPORT int hps_gpu_cache_device_count(void) {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    cudaGetLastError();  // no driver or no device: not an error for the caller
    return 0;
  }
  return count;
}

TF_HPS_EXPORT const char* hps_gpu_error_string(int code) {
  return cudaGetErrorString(static_cast<cudaError_t>(code));
}

TF_HPS_EXPORT int hps_gpu_cache_create(int64_t capacity_rows, int64_t dim, int key_bytes, hps_gpu_cache** out) {
  if (out == nullptr) return cudaErrorInvalidValue;
  *out = nullptr;
  tf_hps::GpuCache* impl = nullptr;
  const cudaError_t err = tf_hps::GpuCache::Create(capacity_rows, dim, key_bytes, &impl);
  if (err != cudaSuccess) return err;
  *out = new hps_gpu_cache{impl};
  return cudaSuccess;
}

TF_HPS_EXPORT void hps_gpu_cache_destroy(hps_gpu_cache* cache) {
  if (cache == nullptr) return;
  delete cache->impl;
  delete cache;
}

TF_HPS_EXPORT int64_t hps_gpu_cache_capacity(const hps_gpu_cache* cache) { return cache->impl->capacity(); }

TF_HPS_EXPORT int64_t hps_gpu_cache_num_sets(const hps_gpu_cache* cache) { return cache->impl->num_sets(); }

TF_HPS_EXPORT int hps_gpu_cache_query(hps_gpu_cache* cache, const void* d_keys, int64_t n, float* d_values,
                                      int64_t* d_missing_index, int64_t* d_missing_count, void* stream) {
  return cache->impl->Query(d_keys, n, d_values, d_missing_index, d_missing_count, AsStream(stream));
}

TF_HPS_EXPORT int hps_gpu_cache_replace(hps_gpu_cache* cache, const void* d_keys, int64_t n,
                                        const float* d_values, void* stream) {
  return cache->impl->Replace(d_keys, n, d_values, AsStream(stream));
}

TF_HPS_EXPORT int hps_gpu_cache_update(hps_gpu_cache* cache, const void* d_keys, int64_t n,
                                       const float* d_values, void* stream) {
  return cache->impl->Update(d_keys, n, d_values, AsStream(stream));
}

TF_HPS_EXPORT int hps_gpu_cache_dump(hps_gpu_cache* cache, int64_t set_begin, int64_t set_end, void* d_keys_out,
                                     int64_t* d_count, void* stream) {
  return cache->impl->Dump(set_begin, set_end, d_keys_out, d_count, AsStream(stream));
}

TF_HPS_EXPORT int hps_gpu_malloc(size_t bytes, void** d_ptr) { return cudaMalloc(d_ptr, bytes); }

TF_HPS_EXPORT int hps_gpu_free(void* d_ptr) { return cudaFree(d_ptr); }

TF_HPS_EXPORT int hps_gpu_memcpy(void* dst, const void* src, size_t bytes) {
  return cudaMemcpy(dst, src, bytes, cudaMemcpyDefault);
}

TF_HPS_EXPORT int hps_gpu_synchronize(void) { return cudaDeviceSynchronize(); }

TF_HPS_EXPORT int hps_gpu_set_device(int device) { return cudaSetDevice(device); }

TF_HPS_EXPORT int hps_gpu_device_name(char* name, size_t size) {
  if (name == nullptr || size == 0) return cudaErrorInvalidValue;
  int device = 0;
  cudaDeviceProp prop;
  cudaError_t err = cudaGetDevice(&device);
  if (err == cudaSuccess) err = cudaGetDeviceProperties(&prop, device);
  if (err != cudaSuccess) return err;
  std::strncpy(name, prop.name, size - 1);
  name[size - 1] = '\0';
  return cudaSuccess;
}

}  // extern "C"
