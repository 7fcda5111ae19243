#include "storage/hash_map_backend.h"

#include <algorithm>
#include <cstring>
#include <ctime>
#include <mutex>
#include <random>
#include <shared_mutex>

#include <pthread.h>

#include "base/aligned_buffer.h"
#include "base/error.h"
#include "base/key_hash.h"
#include "base/position_dedup.h"
#include "base/row_copy.h"

namespace tf_hps {
namespace {

constexpr uint32_t kEmptySlot = UINT32_MAX;
// Rows per full page: 4096, or more for short rows, so that a full page's
// values fill a huge page (2 MiB) at least: lookups read rows at random, and
// on 4 KiB pages most of those reads would also miss the TLB.
int PageShiftFor(int64_t dim) {
  int shift = 12;
  while ((int64_t{1} << shift) * dim * static_cast<int64_t>(sizeof(float)) < static_cast<int64_t>(kHugePageBytes))
    ++shift;
  return shift;
}
constexpr double kMaxLoad = 0.75;

uint32_t NowSeconds() { return static_cast<uint32_t>(std::time(nullptr)); }

// A partition's reader-writer lock, which lets a waiting writer in before
// new readers. glibc's default lets readers in first, and a fetch holds
// every partition's read lock for a chunk of keys, so a steady stream of
// lookups on a few threads could otherwise keep an online update, or a
// write-back, waiting indefinitely. Readers take partitions in increasing
// order and writers hold one at a time, so waiting writers cannot deadlock
// them. Not recursive: a thread never read-locks a partition it holds.
class PartitionMutex {
 public:
  PartitionMutex() {
    pthread_rwlockattr_t attr;
    pthread_rwlockattr_init(&attr);
#ifdef __GLIBC__
    pthread_rwlockattr_setkind_np(&attr, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
#endif
    pthread_rwlock_init(&lock_, &attr);
    pthread_rwlockattr_destroy(&attr);
  }
  ~PartitionMutex() { pthread_rwlock_destroy(&lock_); }
  PartitionMutex(const PartitionMutex&) = delete;
  PartitionMutex& operator=(const PartitionMutex&) = delete;

  void lock() { pthread_rwlock_wrlock(&lock_); }
  void unlock() { pthread_rwlock_unlock(&lock_); }
  void lock_shared() { pthread_rwlock_rdlock(&lock_); }
  void unlock_shared() { pthread_rwlock_unlock(&lock_); }

 private:
  pthread_rwlock_t lock_;
};

enum class Policy { kRandom, kLeastUsed, kOldest };

Policy PolicyOf(const std::string& name) {
  if (name == "evict_least_used") return Policy::kLeastUsed;
  if (name == "evict_oldest") return Policy::kOldest;
  return Policy::kRandom;
}

// Positions [0, n) grouped by partition: order[begin[p] .. begin[p + 1]).
struct PartitionGroups {
  std::vector<int64_t> order;
  std::vector<int64_t> begin;
  std::vector<uint64_t> hash;  // (n) MixKey of each key
};

// The partition of the key whose MixKey is `hash`: its high bits scaled to
// [0, num_partitions), a multiply instead of a division (a partition's index
// uses the low bits). Only this process's map uses it (Redis: PartitionOf).
inline int64_t PartitionIndex(uint64_t hash, int64_t num_partitions) {
  return static_cast<int64_t>((static_cast<unsigned __int128>(hash) * static_cast<uint64_t>(num_partitions)) >> 64);
}

void GroupByPartition(const int64_t* keys, int64_t n, int64_t num_partitions, PartitionGroups* g) {
  g->hash.resize(n);
  g->begin.assign(num_partitions + 1, 0);
  g->order.resize(n);
  for (int64_t i = 0; i < n; ++i) {
    g->hash[i] = MixKey(static_cast<uint64_t>(keys[i]));
    ++g->begin[PartitionIndex(g->hash[i], num_partitions) + 1];
  }
  for (int64_t p = 0; p < num_partitions; ++p) g->begin[p + 1] += g->begin[p];
  std::vector<int64_t> next(g->begin.begin(), g->begin.end() - 1);
  for (int64_t i = 0; i < n; ++i) g->order[next[PartitionIndex(g->hash[i], num_partitions)]++] = i;
}

}  // namespace

class HashMapBackend::Partition {
 public:
  Partition(int64_t dim, bool track_meta)
      : dim_(dim),
        track_meta_(track_meta),
        page_shift_(PageShiftFor(dim)),
        page_mask_((int64_t{1} << page_shift_) - 1) {}

  mutable PartitionMutex mutex;

  int64_t size() const { return size_; }

  int64_t MemoryBytes() const {
    int64_t bytes = static_cast<int64_t>(index_.capacity() * sizeof(uint32_t));
    for (const Page& page : pages_) bytes += page.capacity * (dim_ * 4 + 8 + (track_meta_ ? 4 : 0));
    return bytes;
  }

  // The row of `key`, or -1.
  int64_t Find(int64_t key, uint64_t hash) const {
    const int64_t slot = FindSlot(key, hash);
    return slot < 0 ? -1 : static_cast<int64_t>(index_[slot]);
  }

  // Fetch's pipeline, a few keys ahead of the key it copies: start loading
  // the key's home slot; then, once that has arrived, the key and row it names.
  void PrefetchSlot(uint64_t hash) const {
    if (!index_.empty()) __builtin_prefetch(&index_[(hash >> 8) & mask_]);
  }
  void PrefetchRow(uint64_t hash) const {
    if (index_.empty()) return;
    const uint32_t row = index_[(hash >> 8) & mask_];
    if (row == kEmptySlot) return;
    const Page& page = PageOf(row);
    __builtin_prefetch(&page.keys[(row & page_mask_)]);
    tf_hps::PrefetchRow(page.values.get() + (row & page_mask_) * dim_, dim_ * sizeof(float));
  }

  const float* Values(int64_t row) const { return PageOf(row).values.get() + (row & page_mask_) * dim_; }
  int64_t KeyAt(int64_t row) const { return PageOf(row).keys[(row & page_mask_)]; }
  uint32_t* Meta(int64_t row) { return &pages_[row >> page_shift_].meta[(row & page_mask_)]; }

  // Inserts or overwrites a row; returns true if the key was new.
  bool Upsert(int64_t key, uint64_t hash, const float* values, uint32_t meta) {
    int64_t slot = FindSlot(key, hash);
    if (slot >= 0) {
      std::memcpy(MutableValues(index_[slot]), values, dim_ * sizeof(float));
      return false;
    }
    if (static_cast<double>(size_ + 1) > kMaxLoad * static_cast<double>(index_.size())) Grow();
    slot = static_cast<int64_t>((hash >> 8) & mask_);
    while (index_[slot] != kEmptySlot) slot = (slot + 1) & mask_;
    const int64_t row = size_++;
    index_[slot] = static_cast<uint32_t>(row);
    EnsureRowCapacity(row);
    Page& page = pages_[row >> page_shift_];
    page.keys[(row & page_mask_)] = key;
    if (track_meta_) page.meta[(row & page_mask_)] = meta;
    std::memcpy(MutableValues(row), values, dim_ * sizeof(float));
    return true;
  }

  // Removes a key; returns whether it was present. The last row moves into
  // its place, so rows stay dense.
  bool Erase(int64_t key, uint64_t hash) {
    const int64_t slot = FindSlot(key, hash);
    if (slot < 0) return false;
    const int64_t row = index_[slot];
    const int64_t last = size_ - 1;
    if (row != last) {
      // Find the last row's slot before its key is copied over `row`.
      const int64_t last_key = KeyAt(last);
      const int64_t last_slot = FindSlot(last_key, MixKey(static_cast<uint64_t>(last_key)));
      std::memcpy(MutableValues(row), Values(last), dim_ * sizeof(float));
      pages_[row >> page_shift_].keys[(row & page_mask_)] = last_key;
      if (track_meta_) *Meta(row) = *Meta(last);
      index_[last_slot] = static_cast<uint32_t>(row);
    }
    RemoveSlot(slot);
    --size_;
    return true;
  }

 private:
  // Rows [k * R, (k + 1) * R) of page k, R = 2^page_shift_ (PageShiftFor).
  // Only the last page may hold fewer than R rows; the first page grows by
  // doubling up to R, later ones have room for R from the start.
  struct Page {
    int64_t capacity = 0;
    AlignedBuffer<float> values;  // a full page's on huge pages
    std::unique_ptr<int64_t[]> keys;
    std::unique_ptr<uint32_t[]> meta;
  };

  const Page& PageOf(int64_t row) const { return pages_[row >> page_shift_]; }
  float* MutableValues(int64_t row) { return pages_[row >> page_shift_].values.get() + (row & page_mask_) * dim_; }

  int64_t FindSlot(int64_t key, uint64_t hash) const {
    if (index_.empty()) return -1;
    for (uint64_t slot = (hash >> 8) & mask_;; slot = (slot + 1) & mask_) {
      const uint32_t row = index_[slot];
      if (row == kEmptySlot) return -1;
      if (KeyAt(row) == key) return static_cast<int64_t>(slot);
    }
  }

  uint64_t HomeOf(uint32_t row) const { return (MixKey(static_cast<uint64_t>(KeyAt(row))) >> 8) & mask_; }

  // Backward-shift deletion: later slots of the same probe run move up.
  void RemoveSlot(int64_t hole) {
    uint64_t i = hole;
    for (uint64_t j = (i + 1) & mask_; index_[j] != kEmptySlot; j = (j + 1) & mask_) {
      const uint64_t home = HomeOf(index_[j]);
      const bool stays = i <= j ? (i < home && home <= j) : (i < home || home <= j);
      if (stays) continue;
      index_[i] = index_[j];
      i = j;
    }
    index_[i] = kEmptySlot;
  }

  void Grow() {
    const size_t capacity = index_.empty() ? 16 : index_.size() * 2;
    std::vector<uint32_t> old;
    old.swap(index_);
    index_.assign(capacity, kEmptySlot);
    mask_ = capacity - 1;
    for (const uint32_t row : old) {
      if (row == kEmptySlot) continue;
      uint64_t slot = HomeOf(row);
      while (index_[slot] != kEmptySlot) slot = (slot + 1) & mask_;
      index_[slot] = row;
    }
  }

  void EnsureRowCapacity(int64_t row) {
    const int64_t page_index = row >> page_shift_;
    if (page_index == static_cast<int64_t>(pages_.size())) pages_.emplace_back();
    Page& page = pages_[page_index];
    const int64_t needed = (row & page_mask_) + 1;
    if (needed <= page.capacity) return;
    // The first page grows by doubling (small tables stay small); later
    // ones are whole from the start (no copies, no freed halves).
    const int64_t capacity =
        page_index == 0 ? std::min(page_mask_ + 1, std::max<int64_t>(16, page.capacity * 2)) : page_mask_ + 1;
    Page grown;
    grown.capacity = capacity;
    grown.values = AllocateAligned<float>(capacity * dim_, /*zero=*/false);
    grown.keys.reset(new int64_t[capacity]);
    if (track_meta_) grown.meta.reset(new uint32_t[capacity]);
    const int64_t used = row & page_mask_;  // rows already in this page
    if (used > 0) {
      std::memcpy(grown.values.get(), page.values.get(), used * dim_ * sizeof(float));
      std::memcpy(grown.keys.get(), page.keys.get(), used * sizeof(int64_t));
      if (track_meta_) std::memcpy(grown.meta.get(), page.meta.get(), used * sizeof(uint32_t));
    }
    page = std::move(grown);
  }

  const int64_t dim_;
  const bool track_meta_;
  const int page_shift_;
  const int64_t page_mask_;
  int64_t size_ = 0;
  std::vector<uint32_t> index_;  // row of each slot, kEmptySlot when free; power-of-two size
  uint64_t mask_ = 0;
  std::vector<Page> pages_;
};

struct HashMapBackend::Table {
  Table(int64_t dim, int64_t num_partitions, bool track_meta, uint64_t seed) : dim(dim), rng(seed) {
    for (int64_t p = 0; p < num_partitions; ++p) partitions.push_back(std::make_unique<Partition>(dim, track_meta));
  }
  const int64_t dim;
  std::vector<std::unique_ptr<Partition>> partitions;
  std::mutex rng_mutex;
  std::mt19937_64 rng;  // victims of evict_random
};

HashMapBackend::HashMapBackend(const VolatileDbConfig& config) : config_(config) {
  if (config_.num_partitions < 1) ThrowInvalidArgument("hash_map: num_partitions must be at least 1");
}

HashMapBackend::~HashMapBackend() = default;

HashMapBackend::Table* HashMapBackend::FindTable(const std::string& table, int64_t dim, bool create) const {
  if (dim < 1) ThrowInvalidArgument("hash_map: dimension must be at least 1, got " + std::to_string(dim));
  {
    std::shared_lock<std::shared_mutex> lock(tables_mutex_);
    auto it = tables_.find(table);
    if (it != tables_.end()) {
      if (it->second->dim != dim)
        ThrowInvalidArgument("hash_map: table '" + table + "' holds rows of dimension " +
                             std::to_string(it->second->dim) + ", not " + std::to_string(dim));
      return it->second.get();
    }
    if (!create) return nullptr;
  }
  std::unique_lock<std::shared_mutex> lock(tables_mutex_);
  auto& slot = tables_[table];
  if (!slot) {
    const bool track_meta = config_.overflow_margin != UINT64_MAX && config_.overflow_policy != "evict_random";
    slot = std::make_unique<Table>(dim, config_.num_partitions, track_meta, std::hash<std::string>()(table));
  }
  return slot.get();
}

void HashMapBackend::Insert(const std::string& table, int64_t n, const int64_t* keys, const float* values,
                            int64_t dim) {
  if (n <= 0) return;
  Table* t = FindTable(table, dim, /*create=*/true);
  PartitionGroups groups;
  GroupByPartition(keys, n, config_.num_partitions, &groups);
  const Policy policy = PolicyOf(config_.overflow_policy);
  const uint64_t margin = config_.overflow_margin;
  const int64_t keep =
      static_cast<int64_t>(static_cast<double>(margin) * config_.overflow_resolution_target);
  const uint32_t now = NowSeconds();
  for (int64_t p = 0; p < config_.num_partitions; ++p) {
    if (groups.begin[p] == groups.begin[p + 1]) continue;
    Partition& part = *t->partitions[p];
    std::unique_lock<PartitionMutex> lock(part.mutex);
    for (int64_t j = groups.begin[p]; j < groups.begin[p + 1]; ++j) {
      const int64_t i = groups.order[j];
      const uint64_t hash = groups.hash[i];
      if (static_cast<uint64_t>(part.size()) >= margin && part.Find(keys[i], hash) < 0) {
        // Full: make room before the new row goes in.
        const int64_t victims = part.size() - std::max<int64_t>(0, std::min<int64_t>(keep, part.size() - 1));
        std::vector<int64_t> doomed;
        if (policy == Policy::kRandom) {
          std::lock_guard<std::mutex> rng_lock(t->rng_mutex);
          std::vector<int64_t> rows(part.size());
          for (int64_t r = 0; r < part.size(); ++r) rows[r] = r;
          for (int64_t v = 0; v < victims; ++v) {
            std::swap(rows[v], rows[v + t->rng() % (rows.size() - v)]);
            doomed.push_back(part.KeyAt(rows[v]));
          }
        } else {
          std::vector<std::pair<uint32_t, int64_t>> by_meta(part.size());
          for (int64_t r = 0; r < part.size(); ++r) by_meta[r] = {*part.Meta(r), r};
          std::nth_element(by_meta.begin(), by_meta.begin() + (victims - 1), by_meta.end());
          for (int64_t v = 0; v < victims; ++v) doomed.push_back(part.KeyAt(by_meta[v].second));
        }
        for (int64_t key : doomed) part.Erase(key, MixKey(static_cast<uint64_t>(key)));
        if (policy == Policy::kLeastUsed) {
          // Halve the survivors' counts so old popularity fades.
          for (int64_t r = 0; r < part.size(); ++r) *part.Meta(r) >>= 1;
        }
      }
      part.Upsert(keys[i], hash, values + i * dim, policy == Policy::kOldest ? now : 0);
    }
  }
}

int64_t HashMapBackend::Fetch(const std::string& table, int64_t n, const int64_t* keys, float* values,
                              int64_t dim, std::vector<int64_t>* missing) {
  return FetchRows(table, n, keys, values, dim, missing, /*stream=*/false);
}

namespace {

// What FetchRows finds for a distinct key of a chunk.
struct FetchedKey {
  int64_t key;
  uint64_t hash;  // MixKey(key)
  HashMapBackend::Partition* part;
  int64_t row;         // its row in the partition, or -1
  const float* values;  // the row's values, while the chunk holds the read locks
  uint32_t uses;       // positions of the chunk that asked for it
};

// Every partition's read lock, taken in partition order, for one chunk of a
// fetch; released however the chunk ends (missing->push_back may throw).
class ReadLocks {
 public:
  explicit ReadLocks(const std::vector<std::unique_ptr<HashMapBackend::Partition>>& partitions)
      : partitions_(partitions) {
    for (const auto& part : partitions_) part->mutex.lock_shared();
  }
  ~ReadLocks() {
    for (const auto& part : partitions_) part->mutex.unlock_shared();
  }
  ReadLocks(const ReadLocks&) = delete;
  ReadLocks& operator=(const ReadLocks&) = delete;

 private:
  const std::vector<std::unique_ptr<HashMapBackend::Partition>>& partitions_;
};

__attribute__((noinline)) PositionDedup<FetchedKey>* ThisThreadFetchDedup() {
  thread_local PositionDedup<FetchedKey> dedup;
  return &dedup;
}

}  // namespace

int64_t HashMapBackend::FetchRows(const std::string& table, int64_t n, const int64_t* keys, float* values,
                                  int64_t dim, std::vector<int64_t>* missing, bool stream) {
  Table* t = n > 0 ? FindTable(table, dim, /*create=*/false) : nullptr;
  if (t == nullptr) {
    for (int64_t i = 0; i < n; ++i) missing->push_back(i);
    return 0;
  }
  const int64_t num_partitions = config_.num_partitions;
  const bool count_uses = config_.overflow_margin != UINT64_MAX && config_.overflow_policy == "evict_least_used";
  const bool stamp_uses = config_.overflow_margin != UINT64_MAX && config_.overflow_policy == "evict_oldest";
  const uint32_t now = stamp_uses ? NowSeconds() : 0;
  const size_t row_bytes = dim * sizeof(float);
  stream = stream && CanStreamRows(values, row_bytes);
  // The keys in their own order, in chunks. A chunk takes three passes, as
  // an L1 query does: de-duplicate its positions; then, under the read locks
  // of every partition (taken in partition order; writers hold one partition
  // at a time, so this never deadlocks, and they wait at most one chunk),
  // find each distinct key, three stages kStage keys apart (hash it and load
  // its home slot; read the slot and load the key and row it names; compare
  // the key), and copy each position's row, loading the rows of keys met for
  // the first time kStage positions early.
  constexpr int64_t kChunk = 4096;
  constexpr int64_t kStage = 8;
  PositionDedup<FetchedKey>& dedup = *ThisThreadFetchDedup();
  int64_t hits = 0;
  for (int64_t begin = 0; begin < n; begin += kChunk) {
    const int64_t m = std::min(n, begin + kChunk) - begin;
    const int64_t u = dedup.Run(keys + begin, m, [&](FetchedKey& d, int64_t key, uint64_t hash) {
      d = {key, hash, t->partitions[PartitionIndex(hash, num_partitions)].get(), -1, nullptr, 0};
    });
    const ReadLocks locks(t->partitions);
    FetchedKey* const distinct = dedup.distinct();
    const uint32_t* const of_position = dedup.of_position();
    for (int64_t j = 0; j < std::min(u, 2 * kStage); ++j) distinct[j].part->PrefetchSlot(distinct[j].hash);
    for (int64_t j = 0; j < std::min(u, kStage); ++j) distinct[j].part->PrefetchRow(distinct[j].hash);
    for (int64_t j = 0; j < u; ++j) {
      if (j + 2 * kStage < u) distinct[j + 2 * kStage].part->PrefetchSlot(distinct[j + 2 * kStage].hash);
      if (j + kStage < u) distinct[j + kStage].part->PrefetchRow(distinct[j + kStage].hash);
      FetchedKey& d = distinct[j];
      d.row = d.part->Find(d.key, d.hash);
      if (d.row >= 0) d.values = d.part->Values(d.row);
    }
    auto prefetch_first = [&](int64_t r) __attribute__((always_inline)) {
      const uint32_t of = of_position[r];
      if ((of & PositionDedup<FetchedKey>::kFirst) == 0) return;
      const FetchedKey& d = distinct[of & ~PositionDedup<FetchedKey>::kFirst];
      if (d.values != nullptr) PrefetchRow(d.values, row_bytes);
    };
    for (int64_t r = 0; r < std::min(m, kStage); ++r) prefetch_first(r);
    for (int64_t r = 0; r < m; ++r) {
      if (r + kStage < m) prefetch_first(r + kStage);
      FetchedKey& d = distinct[of_position[r] & ~PositionDedup<FetchedKey>::kFirst];
      if (d.values == nullptr) {
        missing->push_back(begin + r);
        continue;
      }
      CopyRow(values + (begin + r) * dim, d.values, dim, row_bytes, stream);
      ++d.uses;
      ++hits;
    }
    // Metadata writes race only with each other under the shared lock.
    if (count_uses || stamp_uses) {
      for (int64_t j = 0; j < u; ++j) {
        const FetchedKey& d = distinct[j];
        if (d.row < 0) continue;
        if (count_uses) __atomic_fetch_add(d.part->Meta(d.row), d.uses, __ATOMIC_RELAXED);
        if (stamp_uses) __atomic_store_n(d.part->Meta(d.row), now, __ATOMIC_RELAXED);
      }
    }
  }
  if (stream) StreamFence();
  return hits;
}

template <class Fn>
int64_t HashMapBackend::SumOverPartitions(const std::string& table, Fn&& fn) const {
  std::shared_lock<std::shared_mutex> lock(tables_mutex_);
  auto it = tables_.find(table);
  if (it == tables_.end()) return 0;
  int64_t sum = 0;
  for (const auto& p : it->second->partitions) {
    std::shared_lock<PartitionMutex> part_lock(p->mutex);
    sum += fn(*p);
  }
  return sum;
}

int64_t HashMapBackend::Size(const std::string& table) const {
  return SumOverPartitions(table, [](const Partition& p) { return p.size(); });
}

int64_t HashMapBackend::MemoryBytes(const std::string& table) const {
  return SumOverPartitions(table, [](const Partition& p) { return p.MemoryBytes(); });
}

int64_t HashMapBackend::Evict(const std::string& table, int64_t n, const int64_t* keys) {
  Table* t = nullptr;
  {
    std::shared_lock<std::shared_mutex> lock(tables_mutex_);
    auto it = tables_.find(table);
    if (it == tables_.end()) return 0;
    t = it->second.get();
  }
  PartitionGroups groups;
  GroupByPartition(keys, n, config_.num_partitions, &groups);
  int64_t evicted = 0;
  for (int64_t p = 0; p < config_.num_partitions; ++p) {
    if (groups.begin[p] == groups.begin[p + 1]) continue;
    Partition& part = *t->partitions[p];
    std::unique_lock<PartitionMutex> lock(part.mutex);
    for (int64_t j = groups.begin[p]; j < groups.begin[p + 1]; ++j) {
      const int64_t i = groups.order[j];
      evicted += part.Erase(keys[i], groups.hash[i]);
    }
  }
  return evicted;
}

void HashMapBackend::EvictTable(const std::string& table) {
  std::unique_lock<std::shared_mutex> lock(tables_mutex_);
  tables_.erase(table);
}

std::vector<std::string> HashMapBackend::ListTables() const {
  std::shared_lock<std::shared_mutex> lock(tables_mutex_);
  std::vector<std::string> names;
  for (const auto& [name, table] : tables_) names.push_back(name);
  return names;
}

}  // namespace tf_hps
