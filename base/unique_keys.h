// De-duplication of a batch of keys, shared by the lookup session and the
// storage backends whose per-key cost is high (a network round trip, a
// RocksDB block search): each distinct key is looked up once.
#ifndef TF_HPS_BASE_UNIQUE_KEYS_H_
#define TF_HPS_BASE_UNIQUE_KEYS_H_

#include <cstdint>
#include <cstring>
#include <vector>

namespace tf_hps {

// The distinct keys of a batch, in order of first appearance, and for each
// input position the index of its key among them.
struct UniqueKeys {
  std::vector<int64_t> keys;   // (u)
  std::vector<int64_t> index;  // (n), values in [0, u)
};

// Open addressing over a power-of-two table at load <= 0.5; O(n). n < 2^32.
void Dedup(const int64_t* keys, int64_t n, UniqueKeys* out);

// Runs fetch(u, unique_keys, unique_values (u, dim), &unique_missing) on the
// distinct keys only, then copies each row to every position of its key and
// reports missing positions in order, as DatabaseBackend::Fetch does.
// Returns the number of positions found. Without duplicates it calls fetch
// on the caller's buffers directly.
template <class FetchFn>
int64_t FetchEachKeyOnce(int64_t n, const int64_t* keys, float* values, int64_t dim, std::vector<int64_t>* missing,
                         FetchFn&& fetch) {
  UniqueKeys unique;
  Dedup(keys, n, &unique);
  const int64_t u = static_cast<int64_t>(unique.keys.size());
  if (u == n) return fetch(n, keys, values, missing);
  std::vector<float> rows(u * dim);
  std::vector<int64_t> unique_missing;
  fetch(u, unique.keys.data(), rows.data(), &unique_missing);
  std::vector<char> absent(u, 0);
  for (int64_t j : unique_missing) absent[j] = 1;
  int64_t found = 0;
  for (int64_t i = 0; i < n; ++i) {
    const int64_t j = unique.index[i];
    if (absent[j]) {
      missing->push_back(i);
      continue;
    }
    std::memcpy(values + i * dim, rows.data() + j * dim, dim * sizeof(float));
    ++found;
  }
  return found;
}

}  // namespace tf_hps

#endif  // TF_HPS_BASE_UNIQUE_KEYS_H_
