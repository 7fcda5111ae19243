// The L1 embedding cache on the CPU: set-associative, lock-striped, with a
// batch-grained LRU clock.
//
// Layout: `num_sets` sets of kWays slots. A key's set is a mix of its bits
// modulo num_sets; within the set the key may sit in any way. Each slot has
// a stamp: 0 means empty (so no key value is reserved as a sentinel, and
// every int64 key, -1 and INT64_MAX included, can be cached), otherwise the
// clock value of the last batch that touched it. The clock advances once per
// Query call, so all keys of one batch are equally recent. Replacement takes
// an empty way, else evicts the way with the oldest stamp in the set.
//
// Sets are guarded by a fixed pool of mutexes (set s uses mutex s % kStripes)
// so that concurrent callers rarely contend. Values live in host memory,
// packed per slot: (num_sets * kWays, dim).
#ifndef TF_HPS_CORE_EMBEDDING_CACHE_H_
#define TF_HPS_CORE_EMBEDDING_CACHE_H_

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <vector>

namespace tf_hps {

class EmbeddingCache {
 public:
  static constexpr int64_t kWays = 8;

  // Holds at least `capacity_rows` rows of `dim` floats.
  EmbeddingCache(int64_t capacity_rows, int64_t dim);

  int64_t capacity() const { return num_sets_ * kWays; }
  int64_t dim() const { return dim_; }

  // Starts a new batch: returns the stamp its Query and Replace calls use.
  uint64_t NextStamp() { return clock_.fetch_add(1, std::memory_order_relaxed) + 1; }

  // For each key found, copies its row into values[i] (values: (n, dim)) and
  // refreshes its stamp; appends the index of each key not found to `missing`.
  void Query(const int64_t* keys, int64_t n, float* values, uint64_t stamp,
             std::vector<int64_t>* missing);

  // Inserts rows (keys: (n), values: (n, dim)), overwriting the value of keys
  // already cached, evicting the least recently used way of a full set.
  void Replace(const int64_t* keys, int64_t n, const float* values, uint64_t stamp);

  // Overwrites the rows of the keys that are cached; ignores the others.
  void Update(const int64_t* keys, int64_t n, const float* values);

  // Number of cached rows (walks every set; for tests and metrics).
  int64_t Size() const;

 private:
  static constexpr int64_t kStripes = 1024;

  int64_t SetOf(int64_t key) const;
  std::mutex& LockOf(int64_t set) const { return locks_[set % kStripes]; }
  // Way of `key` in `set`, or -1.
  int64_t FindWay(int64_t set, int64_t key) const;

  const int64_t dim_;
  const int64_t num_sets_;
  std::vector<int64_t> keys_;     // (num_sets * kWays)
  std::vector<uint64_t> stamps_;  // (num_sets * kWays), 0 = empty
  std::vector<float> values_;     // (num_sets * kWays, dim)
  std::atomic<uint64_t> clock_{0};
  mutable std::unique_ptr<std::mutex[]> locks_;
};

}  // namespace tf_hps

#endif  // TF_HPS_CORE_EMBEDDING_CACHE_H_
