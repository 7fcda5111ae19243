// The CPU embedding cache behind a C ABI shaped like the GPU cache's
// (ops/cuda/gpu_cache_c_api.h), for tests and benchmarks through ctypes,
// without TensorFlow. Like the GPU cache, each query and each replace call is
// one batch: one tick of the LRU clock.
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

}  // extern "C"
