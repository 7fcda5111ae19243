#include "core/embedding_cache.h"

#include <algorithm>
#include <cstring>

#include "core/key_hash.h"

namespace tf_hps {

EmbeddingCache::EmbeddingCache(int64_t capacity_rows, int64_t dim)
    : dim_(dim),
      num_sets_(std::max<int64_t>(1, (capacity_rows + kWays - 1) / kWays)),
      keys_(num_sets_ * kWays, 0),
      stamps_(num_sets_ * kWays, 0),
      values_(num_sets_ * kWays * dim, 0.0f),
      locks_(new std::mutex[kStripes]) {}

int64_t EmbeddingCache::SetOf(int64_t key) const {
  // The high bits of the mix select the set; the partitioning of the hash-map
  // backend uses the same mix modulo a small number, so the two stay uncorrelated.
  return static_cast<int64_t>((MixKey(static_cast<uint64_t>(key)) >> 16) % num_sets_);
}

int64_t EmbeddingCache::FindWay(int64_t set, int64_t key) const {
  const int64_t base = set * kWays;
  for (int64_t w = 0; w < kWays; ++w) {
    if (stamps_[base + w] != 0 && keys_[base + w] == key) return w;
  }
  return -1;
}

void EmbeddingCache::Query(const int64_t* keys, int64_t n, float* values, uint64_t stamp,
                           std::vector<int64_t>* missing) {
  const size_t row_bytes = dim_ * sizeof(float);
  for (int64_t i = 0; i < n; ++i) {
    const int64_t set = SetOf(keys[i]);
    std::lock_guard<std::mutex> lock(LockOf(set));
    const int64_t way = FindWay(set, keys[i]);
    if (way < 0) {
      missing->push_back(i);
      continue;
    }
    const int64_t slot = set * kWays + way;
    stamps_[slot] = std::max(stamps_[slot], stamp);
    std::memcpy(values + i * dim_, values_.data() + slot * dim_, row_bytes);
  }
}

void EmbeddingCache::Replace(const int64_t* keys, int64_t n, const float* values, uint64_t stamp) {
  const size_t row_bytes = dim_ * sizeof(float);
  for (int64_t i = 0; i < n; ++i) {
    const int64_t set = SetOf(keys[i]);
    const int64_t base = set * kWays;
    std::lock_guard<std::mutex> lock(LockOf(set));
    int64_t way = FindWay(set, keys[i]);
    if (way < 0) {
      // An empty way if there is one, else the least recently used.
      way = 0;
      for (int64_t w = 0; w < kWays; ++w) {
        if (stamps_[base + w] < stamps_[base + way]) way = w;
        if (stamps_[base + w] == 0) break;
      }
    }
    const int64_t slot = base + way;
    keys_[slot] = keys[i];
    stamps_[slot] = std::max<uint64_t>(stamp, 1);
    std::memcpy(values_.data() + slot * dim_, values + i * dim_, row_bytes);
  }
}

void EmbeddingCache::Update(const int64_t* keys, int64_t n, const float* values) {
  const size_t row_bytes = dim_ * sizeof(float);
  for (int64_t i = 0; i < n; ++i) {
    const int64_t set = SetOf(keys[i]);
    std::lock_guard<std::mutex> lock(LockOf(set));
    const int64_t way = FindWay(set, keys[i]);
    if (way >= 0) std::memcpy(values_.data() + (set * kWays + way) * dim_, values + i * dim_, row_bytes);
  }
}

int64_t EmbeddingCache::Size() const {
  int64_t size = 0;
  for (int64_t set = 0; set < num_sets_; ++set) {
    std::lock_guard<std::mutex> lock(LockOf(set));
    for (int64_t w = 0; w < kWays; ++w) size += stamps_[set * kWays + w] != 0;
  }
  return size;
}

}  // namespace tf_hps
