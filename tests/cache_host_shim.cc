// The CPU embedding cache behind a C ABI shaped like the GPU cache's
// (ops/cuda/gpu_cache_c_api.h), for tests and benchmarks through ctypes,
// without TensorFlow. Like the GPU cache, each query and each replace call is
// one batch: one tick of the LRU clock.
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "core/embedding_cache.h"
#include "core/slab_set.h"

using tf_hps::EmbeddingCache;

extern "C" {

void* hps_cache_host_create(int64_t capacity_rows, int64_t dim) { return new EmbeddingCache(capacity_rows, dim); }

void hps_cache_host_destroy(void* cache) { delete static_cast<EmbeddingCache*>(cache); }

int64_t hps_cache_host_capacity(void* cache) { return static_cast<EmbeddingCache*>(cache)->capacity(); }

int64_t hps_cache_host_num_sets(void* cache) { return static_cast<EmbeddingCache*>(cache)->num_sets(); }

int64_t hps_cache_host_size(void* cache) { return static_cast<EmbeddingCache*>(cache)->Size(); }

// Rows of hits go to values (n, dim); returns the number of misses, whose
// positions (increasing) go to missing_index (n).
int64_t hps_cache_host_query(void* cache, const int64_t* keys, int64_t n, float* values, int64_t* missing_index) {
  auto* c = static_cast<EmbeddingCache*>(cache);
  std::vector<int64_t> missing;
  c->Query(keys, n, values, c->NextStamp(), &missing);
  if (!missing.empty()) std::memcpy(missing_index, missing.data(), missing.size() * sizeof(int64_t));
  return static_cast<int64_t>(missing.size());
}

void hps_cache_host_replace(void* cache, const int64_t* keys, int64_t n, const float* values) {
  auto* c = static_cast<EmbeddingCache*>(cache);
  c->Replace(keys, n, values, c->NextStamp());
}

// The lookup path's protocol: one stamp per batch for its Query and the
// Replace of its misses (hps_cache_host_next_stamp gives a batch's stamp).
uint64_t hps_cache_host_next_stamp(void* cache) { return static_cast<EmbeddingCache*>(cache)->NextStamp(); }

int64_t hps_cache_host_query_at(void* cache, const int64_t* keys, int64_t n, float* values, int64_t* missing_index,
                                uint64_t stamp) {
  auto* c = static_cast<EmbeddingCache*>(cache);
  std::vector<int64_t> missing;
  c->Query(keys, n, values, stamp, &missing);
  if (!missing.empty()) std::memcpy(missing_index, missing.data(), missing.size() * sizeof(int64_t));
  return static_cast<int64_t>(missing.size());
}

// EmbeddingCache::QueryPositions of positions [begin, end) of a batch of n
// keys (values: (n, dim)) with the given stamp. The keys missed go to
// miss_keys (n), their positions to miss_positions (n) and each position's
// index into miss_keys to miss_key_of (n). counts (3 int64): missed keys,
// missed positions, distinct keys of the range.
void hps_cache_host_query_positions(void* cache, const int64_t* keys, int64_t begin, int64_t end, float* values,
                                    uint64_t stamp, int64_t* miss_keys, int64_t* miss_positions,
                                    int64_t* miss_key_of, int64_t* counts) {
  EmbeddingCache::PositionMisses misses;
  static_cast<EmbeddingCache*>(cache)->QueryPositions(keys, begin, end, values, stamp, &misses);
  std::copy(misses.keys.begin(), misses.keys.end(), miss_keys);
  std::copy(misses.positions.begin(), misses.positions.end(), miss_positions);
  std::copy(misses.key_of.begin(), misses.key_of.end(), miss_key_of);
  counts[0] = static_cast<int64_t>(misses.keys.size());
  counts[1] = static_cast<int64_t>(misses.positions.size());
  counts[2] = misses.distinct;
}

void hps_cache_host_replace_at(void* cache, const int64_t* keys, int64_t n, const float* values, uint64_t stamp) {
  static_cast<EmbeddingCache*>(cache)->Replace(keys, n, values, stamp);
}

void hps_cache_host_update(void* cache, const int64_t* keys, int64_t n, const float* values) {
  static_cast<EmbeddingCache*>(cache)->Update(keys, n, values);
}

// Keys of sets [set_begin, set_end) in set and way order into keys_out
// (room for (set_end - set_begin) * 64); returns their number.
int64_t hps_cache_host_dump(void* cache, int64_t set_begin, int64_t set_end, int64_t* keys_out) {
  std::vector<int64_t> keys;
  static_cast<EmbeddingCache*>(cache)->Dump(set_begin, set_end, &keys);
  if (!keys.empty()) std::memcpy(keys_out, keys.data(), keys.size() * sizeof(int64_t));
  return static_cast<int64_t>(keys.size());
}

// Where the cache puts `key`: its set and the slab probed first.
void hps_cache_host_home(int64_t key, int64_t num_sets, int64_t* set, int32_t* first_slab) {
  const tf_hps::slab::Home home = tf_hps::slab::HomeOf(key, num_sets);
  *set = home.set;
  *first_slab = home.first_slab;
}

// A dense table for benchmarks: key k is row k for 0 <= k < num_rows; other
// keys get `default_value` (found = 0).
struct DenseTable {
  const float* rows;  // (num_rows, dim)
  int64_t num_rows;
  int64_t dim;
  float default_value;
};

// The GPU pipeline's fetch callback (hps_gpu_fetch_fn of
// ops/cuda/gpu_lookup_c_api.h) over a DenseTable, in C++, so benchmarks time
// the pipeline rather than a Python callback.
int hps_cache_host_dense_fetch(void* ctx, const int64_t* keys, int64_t m, float* rows, int8_t* found) {
  const auto* table = static_cast<const DenseTable*>(ctx);
  const int64_t dim = table->dim;
  for (int64_t j = 0; j < m; ++j) {
    float* row = rows + j * dim;
    found[j] = keys[j] >= 0 && keys[j] < table->num_rows;
    if (found[j]) {
      std::memcpy(row, table->rows + keys[j] * dim, dim * sizeof(float));
    } else {
      for (int64_t d = 0; d < dim; ++d) row[d] = table->default_value;
    }
  }
  return 0;
}

// The CPU lookup path on one thread, the baseline of benchmarks/gpu_lookup.py
// and the host twin of hps_gpu_lookup_query, as ParameterServer runs it: L1
// query of every position (EmbeddingCache::QueryPositions: each distinct key
// probed once) -> the missed keys from `table` (through
// hps_cache_host_dense_fetch, as the GPU pipeline's benchmark does) -> their
// rows to their positions -> Replace of the rows found, with the batch's
// stamp. counts (5 int64): keys, l1_hits, missed_keys, inserted, evicted.
// Scratch is per thread and reused.
void hps_cache_host_lookup(void* cache, const int64_t* keys, int64_t n, float* out, const DenseTable* table,
                           int64_t* counts) {
  auto* c = static_cast<EmbeddingCache*>(cache);
  const int64_t dim = c->dim();
  const size_t row_bytes = dim * sizeof(float);
  thread_local EmbeddingCache::PositionMisses misses;
  thread_local std::vector<float> fetched, insert_rows;
  thread_local std::vector<int64_t> insert_keys;
  thread_local std::vector<int8_t> found;
  misses.Clear();
  const uint64_t stamp = c->NextStamp();
  c->QueryPositions(keys, 0, n, out, stamp, &misses);
  const int64_t m = static_cast<int64_t>(misses.keys.size());
  fetched.resize(m * dim);
  found.resize(m);
  if (m > 0) hps_cache_host_dense_fetch(const_cast<DenseTable*>(table), misses.keys.data(), m, fetched.data(),
                                        found.data());
  const int64_t missed_positions = static_cast<int64_t>(misses.positions.size());
  for (int64_t p = 0; p < missed_positions; ++p)
    std::memcpy(out + misses.positions[p] * dim, fetched.data() + misses.key_of[p] * dim, row_bytes);
  insert_keys.clear();
  insert_rows.clear();
  for (int64_t j = 0; j < m; ++j) {
    if (!found[j]) continue;
    insert_keys.push_back(misses.keys[j]);
    insert_rows.insert(insert_rows.end(), fetched.data() + j * dim, fetched.data() + (j + 1) * dim);
  }
  const int64_t inserted = static_cast<int64_t>(insert_keys.size());
  const int64_t evicted = inserted > 0 ? c->Replace(insert_keys.data(), inserted, insert_rows.data(), stamp) : 0;
  counts[0] = n;
  counts[1] = n - missed_positions;
  counts[2] = m;
  counts[3] = inserted;
  counts[4] = evicted;
}

}  // extern "C"
