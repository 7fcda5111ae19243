#include "ops/cuda/gpu_lookup_c_api.h"

#include <cuda_runtime_api.h>

#include <memory>
#include <string>

#include "ops/cuda/gpu_combine.h"
#include "ops/cuda/gpu_lookup.h"
#include "ops/sparse_combine.h"

#define TF_HPS_EXPORT __attribute__((visibility("default")))

static_assert(HPS_GPU_LOOKUP_FETCH_FAILED == tf_hps::kGpuLookupFetchFailed, "codes of the C ABI and the pipeline");
static_assert(HPS_GPU_LOOKUP_INVALID_ARGUMENT == tf_hps::kGpuLookupInvalidArgument, "codes of the C ABI and the pipeline");
static_assert(HPS_GPU_LOOKUP_INTERNAL == tf_hps::kGpuLookupInternal, "codes of the C ABI and the pipeline");

static_assert(HPS_GPU_COMBINE_SUM == static_cast<int>(tf_hps::Combiner::kSum) &&
                  HPS_GPU_COMBINE_MEAN == static_cast<int>(tf_hps::Combiner::kMean) &&
                  HPS_GPU_COMBINE_SQRTN == static_cast<int>(tf_hps::Combiner::kSqrtn),
              "combiners of the C ABI and ops/sparse_combine.h");

struct hps_gpu_lookup {
  std::unique_ptr<tf_hps::GpuLookup> impl;
};

namespace {

thread_local std::string last_error;

int Fail(const char* function, int code, const std::string& message) {
  last_error = std::string(function) + ": " + message;
  return code;
}

int Report(const char* function, const tf_hps::GpuLookupStatus& status) {
  return status.ok() ? 0 : Fail(function, status.code, status.message);
}

int Invalid(const char* function, const std::string& message) {
  return Fail(function, HPS_GPU_LOOKUP_INVALID_ARGUMENT, message);
}

// The checks create_dynamic and create_static share; "" when all pass.
std::string CheckShape(int64_t dim, int key_bytes) {
  if (dim < 1) return "dim must be at least 1, got " + std::to_string(dim);
  if (key_bytes != 4 && key_bytes != 8) {
    return "key_bytes must be 4 (int32 keys) or 8 (int64 keys), got " + std::to_string(key_bytes);
  }
  return "";
}

}  // namespace

extern "C" {

TF_HPS_EXPORT int hps_gpu_lookup_create_dynamic(int64_t capacity_rows, int64_t dim, int key_bytes,
                                                hps_gpu_lookup** out) {
  const char* fn = "hps_gpu_lookup_create_dynamic";
  if (out == nullptr) return Invalid(fn, "out is NULL");
  *out = nullptr;
  if (capacity_rows < 0) return Invalid(fn, "capacity_rows must be >= 0, got " + std::to_string(capacity_rows));
  const std::string shape = CheckShape(dim, key_bytes);
  if (!shape.empty()) return Invalid(fn, shape);
  std::unique_ptr<tf_hps::GpuLookup> impl;
  const int rc = Report(fn, tf_hps::GpuLookup::CreateDynamic(capacity_rows, dim, key_bytes, &impl));
  if (rc != 0) return rc;
  *out = new hps_gpu_lookup{std::move(impl)};
  return 0;
}

TF_HPS_EXPORT int hps_gpu_lookup_create_static(const int64_t* keys, int64_t n, const float* rows, int64_t dim,
                                               int key_bytes, hps_gpu_lookup** out) {
  const char* fn = "hps_gpu_lookup_create_static";
  if (out == nullptr) return Invalid(fn, "out is NULL");
  *out = nullptr;
  if (n < 0) return Invalid(fn, "n must be >= 0, got " + std::to_string(n));
  if (n > 0 && (keys == nullptr || rows == nullptr)) {
    return Invalid(fn, std::string(keys == nullptr ? "keys" : "rows") + " is NULL with n = " + std::to_string(n));
  }
  const std::string shape = CheckShape(dim, key_bytes);
  if (!shape.empty()) return Invalid(fn, shape);
  std::unique_ptr<tf_hps::GpuLookup> impl;
  const int rc = Report(fn, tf_hps::GpuLookup::CreateStatic(keys, n, rows, dim, key_bytes, &impl));
  if (rc != 0) return rc;
  *out = new hps_gpu_lookup{std::move(impl)};
  return 0;
}

TF_HPS_EXPORT void hps_gpu_lookup_destroy(hps_gpu_lookup* lookup) { delete lookup; }

TF_HPS_EXPORT int hps_gpu_lookup_query(hps_gpu_lookup* lookup, const void* d_keys, int64_t n, float* d_out,
                                       hps_gpu_fetch_fn fetch, void* fetch_ctx, hps_gpu_insert_guard_fn guard,
                                       void* guard_ctx, void* stream, hps_gpu_lookup_counts* counts) {
  const char* fn = "hps_gpu_lookup_query";
  if (counts != nullptr) *counts = hps_gpu_lookup_counts{};
  if (lookup == nullptr) return Invalid(fn, "lookup is NULL");
  if (n < 0) return Invalid(fn, "n must be >= 0, got " + std::to_string(n));
  if (n > tf_hps::GpuLookup::kMaxKeys) {
    return Invalid(fn, "at most " + std::to_string(tf_hps::GpuLookup::kMaxKeys) + " keys per call, got " +
                           std::to_string(n));
  }
  if (n > 0) {
    if (d_keys == nullptr) return Invalid(fn, "d_keys is NULL with n = " + std::to_string(n));
    if (d_out == nullptr) return Invalid(fn, "d_out is NULL with n = " + std::to_string(n));
    if (fetch == nullptr) return Invalid(fn, "fetch is NULL: misses need a callback");
  }
  tf_hps::GpuLookupCounts c;
  const int rc = Report(fn, lookup->impl->Query(d_keys, n, d_out, fetch, fetch_ctx, guard, guard_ctx,
                                                static_cast<cudaStream_t>(stream), &c));
  if (counts != nullptr) *counts = hps_gpu_lookup_counts{c.keys, c.l1_hits, c.missed_keys, c.inserted, c.evicted};
  return rc;
}

TF_HPS_EXPORT int hps_gpu_lookup_query_l1(hps_gpu_lookup* lookup, const void* d_keys, int64_t n, float* d_values,
                                          int64_t* d_missing_index, int64_t* d_missing_count, void* stream) {
  const char* fn = "hps_gpu_lookup_query_l1";
  if (lookup == nullptr) return Invalid(fn, "lookup is NULL");
  if (n < 0) return Invalid(fn, "n must be >= 0, got " + std::to_string(n));
  if (d_missing_count == nullptr) return Invalid(fn, "d_missing_count is NULL");
  if (n > 0 && (d_keys == nullptr || d_values == nullptr || d_missing_index == nullptr)) {
    return Invalid(fn, "a device array is NULL with n = " + std::to_string(n));
  }
  return Report(fn, lookup->impl->QueryL1(d_keys, n, d_values, d_missing_index, d_missing_count,
                                          static_cast<cudaStream_t>(stream)));
}

TF_HPS_EXPORT int hps_gpu_lookup_update(hps_gpu_lookup* lookup, const int64_t* keys, int64_t m, const float* rows) {
  const char* fn = "hps_gpu_lookup_update";
  if (lookup == nullptr) return Invalid(fn, "lookup is NULL");
  if (m < 0) return Invalid(fn, "m must be >= 0, got " + std::to_string(m));
  if (m > 0 && (keys == nullptr || rows == nullptr)) {
    return Invalid(fn, std::string(keys == nullptr ? "keys" : "rows") + " is NULL with m = " + std::to_string(m));
  }
  return Report(fn, lookup->impl->Update(keys, m, rows));
}

TF_HPS_EXPORT int hps_gpu_lookup_refresh(hps_gpu_lookup* lookup, hps_gpu_fetch_fn fetch, void* fetch_ctx,
                                         hps_gpu_insert_guard_fn guard, void* guard_ctx, int64_t* refreshed) {
  const char* fn = "hps_gpu_lookup_refresh";
  if (refreshed != nullptr) *refreshed = 0;
  if (lookup == nullptr) return Invalid(fn, "lookup is NULL");
  if (fetch == nullptr) return Invalid(fn, "fetch is NULL: a refresh reads rows through it");
  int64_t rows = 0;
  const int rc = Report(fn, lookup->impl->Refresh(fetch, fetch_ctx, guard, guard_ctx, &rows));
  if (refreshed != nullptr) *refreshed = rows;
  return rc;
}

TF_HPS_EXPORT int64_t hps_gpu_lookup_size(hps_gpu_lookup* lookup) {
  const char* fn = "hps_gpu_lookup_size";
  if (lookup == nullptr) return Invalid(fn, "lookup is NULL"), -1;
  int64_t size = 0;
  return Report(fn, lookup->impl->Size(&size)) == 0 ? size : -1;
}

TF_HPS_EXPORT int64_t hps_gpu_lookup_evicted(hps_gpu_lookup* lookup) {
  const char* fn = "hps_gpu_lookup_evicted";
  if (lookup == nullptr) return Invalid(fn, "lookup is NULL"), -1;
  int64_t evicted = 0;
  return Report(fn, lookup->impl->EvictedTotal(&evicted)) == 0 ? evicted : -1;
}

TF_HPS_EXPORT int hps_gpu_combine_segments(const float* d_rows, int64_t nnz, int64_t dim, const int64_t* offsets,
                                           const int64_t* order, int64_t num_rows, int combiner, int out_type,
                                           int64_t* d_scratch, void* d_out, void* stream) {
  const char* fn = "hps_gpu_combine_segments";
  if (nnz < 0 || num_rows < 0) {
    return Invalid(fn, "nnz and num_rows must be >= 0, got " + std::to_string(nnz) + " and " +
                           std::to_string(num_rows));
  }
  if (dim < 1) return Invalid(fn, "dim must be at least 1, got " + std::to_string(dim));
  if (combiner < HPS_GPU_COMBINE_SUM || combiner > HPS_GPU_COMBINE_SQRTN)
    return Invalid(fn, "combiner must be 0 (sum), 1 (mean) or 2 (sqrtn), got " + std::to_string(combiner));
  if (out_type < HPS_GPU_OUT_FLOAT32 || out_type > HPS_GPU_OUT_BFLOAT16)
    return Invalid(fn, "out_type must be 0 (float32), 1 (float16) or 2 (bfloat16), got " + std::to_string(out_type));
  if (num_rows == 0) {
    if (nnz == 0) return 0;
    return Invalid(fn, "nnz = " + std::to_string(nnz) + " keys need an output row, but num_rows is 0");
  }
  if (offsets == nullptr || d_scratch == nullptr || d_out == nullptr)
    return Invalid(fn, "offsets, d_scratch and d_out must not be NULL with num_rows = " + std::to_string(num_rows));
  if (nnz > 0 && (order == nullptr || d_rows == nullptr))
    return Invalid(fn, "order and d_rows must not be NULL with nnz = " + std::to_string(nnz));
  if (offsets[0] != 0 || offsets[num_rows] != nnz)
    return Invalid(fn, "offsets must start at 0 and end at nnz = " + std::to_string(nnz) + ", got " +
                           std::to_string(offsets[0]) + " and " + std::to_string(offsets[num_rows]));
  for (int64_t r = 0; r < num_rows; ++r) {
    if (offsets[r + 1] < offsets[r])
      return Invalid(fn, "offsets must not decrease: offsets[" + std::to_string(r + 1) + "] = " +
                             std::to_string(offsets[r + 1]) + " < offsets[" + std::to_string(r) + "] = " +
                             std::to_string(offsets[r]));
  }
  for (int64_t k = 0; k < nnz; ++k) {
    if (order[k] < 0 || order[k] >= nnz)
      return Invalid(fn, "order[" + std::to_string(k) + "] = " + std::to_string(order[k]) + " is out of range [0, " +
                             std::to_string(nnz) + ")");
  }
  return Report(fn, tf_hps::CombineSegments(d_rows, nnz, dim, offsets, order, num_rows, combiner,
                                            static_cast<tf_hps::GpuOutputType>(out_type), d_scratch, d_out,
                                            static_cast<cudaStream_t>(stream)));
}

TF_HPS_EXPORT const char* hps_gpu_lookup_last_error(void) { return last_error.c_str(); }

}  // extern "C"
