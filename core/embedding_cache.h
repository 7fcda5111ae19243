// The L1 embedding cache on the CPU: the host execution of the slab-set
// cache that ops/cuda/gpu_cache.cu runs on the GPU.
//
// The set logic lives in core/slab_set.h and is shared with the GPU: sets of
// 2 slabs x 32 ways, stamp 0 = empty (no reserved key), a batch-grained LRU
// clock, eviction of the oldest way of a full set. Here it runs through the
// host lane adapter. Each set has a sequence word: writers hold it (odd) while
// they change the set; lookups take nothing and check the word before and
// after reading, redoing a key under the lock when a writer interfered, so
// rows are never torn and concurrent lookups of hot sets never serialise.
//
// Values live in host memory, one row per way: (num_sets * 64, dim) floats.
// The CPU adds a tag per way (a byte of the key's hash, 0 while empty), a
// cache line per set, which the lookup path compares before any key: the
// answers and LRU state are the set logic's, found with fewer memory reads.
#ifndef TF_HPS_CORE_EMBEDDING_CACHE_H_
#define TF_HPS_CORE_EMBEDDING_CACHE_H_

#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <vector>

#include "base/aligned_buffer.h"
#include "core/slab_set.h"

namespace tf_hps {

// Keeps rows read from the databases out of the cache when an update of the
// table may have overtaken them. The table's epoch is odd while an update is
// being applied (databases first, then the cache) and moves on after it. A
// reader notes the epoch before it reads the databases; its rows may go into
// the cache only while the epoch still has that even value, checked under
// each set's lock, so an update's own cache write always comes last.
struct UpdateGuard {
  const std::atomic<uint64_t>* epoch;
  uint64_t seen;  // the epoch before the databases were read
  bool Holds() const {
    return (seen & 1) == 0 && epoch->load(std::memory_order_acquire) == seen;
  }
};

class EmbeddingCache {
 public:
  static constexpr int64_t kWays = slab::kWays;

  // Holds at least `capacity_rows` rows of `dim` floats: whole sets of 64.
  EmbeddingCache(int64_t capacity_rows, int64_t dim);

  int64_t capacity() const { return num_sets_ * kWays; }
  int64_t num_sets() const { return num_sets_; }
  int64_t dim() const { return dim_; }

  // Starts a new batch: returns the stamp its Query and Replace calls use.
  uint64_t NextStamp() { return clock_.fetch_add(1, std::memory_order_relaxed) + 1; }

  // For each key found, copies its row into values[i] (values: (n, dim)) and
  // refreshes its stamp; appends the index of each key not found to `missing`
  // in increasing order. Rows of missed keys are left untouched.
  void Query(const int64_t* keys, int64_t n, float* values, uint64_t stamp, std::vector<int64_t>* missing);

  // What QueryPositions leaves to the lower tiers.
  struct PositionMisses {
    std::vector<int64_t> keys;       // the distinct keys L1 did not hold, each once
    std::vector<int64_t> positions;  // every position that asked for one of them
    std::vector<int64_t> key_of;     // for each of those positions, its key's index in `keys`
    int64_t distinct = 0;            // distinct keys among the positions queried
    void Clear() {
      keys.clear();
      positions.clear();
      key_of.clear();
      distinct = 0;
    }
    // Adds the misses of another range of positions (its key indices shifted past ours).
    void Append(const PositionMisses& other) {
      const int64_t offset = static_cast<int64_t>(keys.size());
      keys.insert(keys.end(), other.keys.begin(), other.keys.end());
      positions.insert(positions.end(), other.positions.begin(), other.positions.end());
      for (int64_t k : other.key_of) key_of.push_back(offset + k);
      distinct += other.distinct;
    }
  };

  // The L1 part of a lookup, for positions [begin, end) of a batch: writes
  // the row of every position whose key is cached into values[position]
  // (values: (batch, dim)), probing the cache once per distinct key (its
  // later positions copy the row found then). Appends the keys not cached,
  // each once, and their positions to `misses` (which it does not clear). With `stream`, rows are written with non-temporal stores (for
  // outputs much larger than the CPU caches). Several threads may query
  // disjoint ranges of one batch at once.
  void QueryPositions(const int64_t* keys, int64_t begin, int64_t end, float* values, uint64_t stamp,
                      PositionMisses* misses, bool stream = false);

  // Inserts rows (keys: (n), values: (n, dim)): a cached key gets the new row
  // and a fresh stamp; another takes an empty way of its set, else evicts the
  // least recently used one. Keys should be distinct (the last row wins).
  // Returns how many cached rows were evicted to make room. With a guard,
  // stops at the first key for which it no longer holds.
  int64_t Replace(const int64_t* keys, int64_t n, const float* values, uint64_t stamp,
                  const UpdateGuard* guard = nullptr);

  // Overwrites the rows of the keys that are cached; ignores the others.
  // Stamps are left as they are. With a guard, stops like Replace.
  void Update(const int64_t* keys, int64_t n, const float* values, const UpdateGuard* guard = nullptr);

  // Appends the keys cached in sets [set_begin, set_end) to `keys`, set by
  // set, in way order (for refreshing the cache from the lower tiers).
  void Dump(int64_t set_begin, int64_t set_end, std::vector<int64_t>* keys) const;

  // Number of cached rows (walks every set; for tests and metrics).
  int64_t Size() const;

 private:
  template <class T>
  using Buffer = AlignedBuffer<T>;

  class SetLock;
  // Computes the home of `key` and starts loading its lock and first slab.
  slab::Home Prefetch(int64_t key) const;
  void PrefetchSet(slab::Home home) const;
  // The first two stages of a query of `key`, read optimistically: finds its
  // way (-1: not cached), refreshes its stamp and starts loading its row.
  // Returns the way; *seq is the set's sequence word it read.
  int FindOptimistic(int64_t key, slab::Home home, uint64_t stamp, uint32_t* seq);
  // The last stage: copies the row of `way` (if >= 0) to dest and checks the
  // set did not change since *seq was read; redoes the probe under the set's
  // lock if it did. True if the key is cached.
  bool CopyChecked(int64_t key, slab::Home home, int way, uint32_t seq, uint64_t stamp, float* dest, bool stream);
  // QueryPositions' filter: ways whose tag matches (see tags_), and the way of a candidate's bit.
  static uint64_t CandidateWays(const uint8_t* set_tags, int first_slab, uint8_t tag);
  // Replace's slab::ChooseWay, through the tags.
  int ChooseWayTagged(int64_t base, slab::Home home, uint8_t tag, int64_t key, bool* cached) const;
  static int WayOfCandidate(int first_slab, int bit);
  static int FindCandidate(const int64_t* set_keys, int first_slab, uint64_t candidates, int64_t key);
  // Row copies of QueryPositions: whether rows into `values` can be streamed
  // (16-byte aligned rows), one row, and the fence after streamed rows.
  bool CanStream(const float* values) const;
  void CopyRow(float* dest, const float* source, bool stream) const;
  static void StreamFence();

  const int64_t dim_;
  const int64_t num_sets_;
  const size_t row_bytes_;
  Buffer<int64_t> keys_;                // (num_sets * kWays)
  Buffer<uint64_t> stamps_;             // (num_sets * kWays), 0 = empty
  // (num_sets * kWays): a byte of each key's hash, 0 = empty, one cache line
  // per set, so a probe compares a key only with the ways whose tag matches.
  Buffer<uint8_t> tags_;
  Buffer<float> values_;                // (num_sets * kWays, dim)
  mutable std::unique_ptr<std::atomic<uint32_t>[]> seqs_;  // (num_sets), odd = a writer holds the set
  std::atomic<uint64_t> clock_{0};
};

}  // namespace tf_hps

#endif  // TF_HPS_CORE_EMBEDDING_CACHE_H_
