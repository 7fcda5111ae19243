// The static L1 table on the GPU (HPS's `embedding_cache_type: "static"`,
// `use_static_table`): every row of a table in device memory, read-only
// apart from Update. TF-free; ops/cuda/gpu_lookup.h puts it behind the lookup
// pipeline's C ABI.
//
// Layout. The rows stay a dense (n, dim) array in the order they were given;
// a hash index maps each key to its row. The index is open addressing with
// linear probing over a power-of-two number of 16-byte slots (key, row), at
// most half full, with row -1 marking an empty slot: emptiness lives in the
// row, so no key value is reserved (int32 -1, INT64_MAX and INT64_MIN are
// ordinary keys). int32 keys are sign-extended to int64 before hashing.
//
// Build. On the device, in bulk: each key claims a slot with a CAS on the
// slot's row, and compares itself with the slot's current holder by reading
// the holder's key from the (immutable) input array, so no slot ever has to
// be read half-written. For a key given twice the last row wins. A second
// pass copies each holder's key into its slot, so queries read one slot per
// probe and never touch the input again.
//
// Query. A warp takes 32 keys, each lane probes for its own key, then the
// warp copies the 32 rows one after the other with all lanes (coalesced).
#ifndef TF_HPS_OPS_CUDA_GPU_STATIC_TABLE_H_
#define TF_HPS_OPS_CUDA_GPU_STATIC_TABLE_H_

#include <cuda_runtime_api.h>

#include <cstdint>

namespace tf_hps {

// Makes `device` current for the lifetime of the scope, then restores the
// caller's device (the calls of one object run on the device it lives on).
class ScopedDevice {
 public:
  explicit ScopedDevice(int device);
  ~ScopedDevice();
  ScopedDevice(const ScopedDevice&) = delete;
  ScopedDevice& operator=(const ScopedDevice&) = delete;

 private:
  int previous_ = 0;
  bool restore_ = false;
};

class GpuStaticTable {
 public:
  // A table of the n rows given (host keys int64 (n), host rows (n, dim)
  // float32) on the current device, for queries with keys of `key_bytes`
  // (4: int32, 8: int64). n may be 0 (every key misses). Synchronous. On
  // failure returns the error and sets *out = null.
  static cudaError_t Create(const int64_t* keys, int64_t n, const float* rows, int64_t dim, int key_bytes,
                            GpuStaticTable** out);
  ~GpuStaticTable();
  GpuStaticTable(const GpuStaticTable&) = delete;
  GpuStaticTable& operator=(const GpuStaticTable&) = delete;

  int64_t size() const { return size_; }  // distinct keys
  int64_t dim() const { return dim_; }
  int key_bytes() const { return key_bytes_; }
  int device() const { return device_; }

  // Like GpuCache::Query (device arrays, asynchronous on `stream`): rows of
  // the keys held go to values, the indices of the others to missing_index
  // in unspecified order and their number to *missing_count. Keys may repeat.
  // With d_n, the key count is *d_n (device, at most n); with out_rows, key
  // i's row goes to values[out_rows[i]] (device int32).
  cudaError_t Query(const void* keys, int64_t n, const int64_t* d_n, const int32_t* out_rows, float* values,
                    int64_t* missing_index, int64_t* missing_count, cudaStream_t stream);

  // Overwrites the rows of the keys held (device keys int64 (n), device rows
  // (n, dim)); ignores the others. For a key given twice, either row may win.
  cudaError_t Update(const int64_t* keys, int64_t n, const float* values, cudaStream_t stream);

 private:
  GpuStaticTable() = default;
  int Blocks(int64_t threads_needed) const;

  int device_ = 0;
  int multiprocessors_ = 1;
  int key_bytes_ = 8;
  int64_t dim_ = 0;
  int64_t size_ = 0;
  uint64_t slot_mask_ = 0;   // slots - 1
  void* slots_ = nullptr;    // device: (slots) x {int64 key, int64 row}
  float* rows_ = nullptr;    // device: (n, dim)
};

}  // namespace tf_hps

#endif  // TF_HPS_OPS_CUDA_GPU_STATIC_TABLE_H_
