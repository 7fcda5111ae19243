#include "core/embedding_cache.h"

#include <algorithm>
#include <cstring>
#include <new>
#include <thread>
#include <vector>

#include <sys/mman.h>

#include "base/key_hash.h"
#include "base/row_copy.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define TF_HPS_CPU_RELAX() _mm_pause()
#else
#define TF_HPS_CPU_RELAX() ((void)0)
#endif

namespace tf_hps {
namespace {

// Cache-line aligned; arrays of 2 MiB and more sit on huge pages where the
// kernel allows it, since probes land on random sets and rows (about 10%
// more lookups per second than with 4 KiB pages and their TLB misses).
template <class T>
T* AllocateAligned(int64_t count, bool zero) {
  constexpr size_t kHugePage = size_t{2} << 20;
  const size_t raw = std::max<size_t>(count * sizeof(T), 1);
  const size_t align = raw >= kHugePage ? kHugePage : 64;
  const size_t bytes = (raw + align - 1) / align * align;
  void* p = std::aligned_alloc(align, bytes);
  if (p == nullptr) throw std::bad_alloc();
#ifdef MADV_HUGEPAGE
  if (align == kHugePage) madvise(p, bytes, MADV_HUGEPAGE);
#endif
  if (zero) std::memset(p, 0, bytes);
  return static_cast<T*>(p);
}

}  // namespace

// Each set has a sequence word: even while the set is stable, odd while a
// writer holds it. Writers (Replace, Update, and the readers that fall back)
// take it by moving it from even to odd and leave by moving it to the next
// even value. A lookup takes nothing: it reads the word, probes the set and
// copies the row, then reads the word again; if the word moved, or was odd,
// what it read may be torn, and it redoes the key as a writer. So hits, by
// far the most common case, write no shared cache line but their stamps, and
// threads looking up the same hot sets do not serialise.
//
// The optimistic reads race with writers by design (the C++ model calls
// those reads racy; the sequence check discards their results), the standard
// sequence-lock pattern: acquire load of the word, the reads, an acquire
// fence, a relaxed load of the word.
class EmbeddingCache::SetLock {
 public:
  explicit SetLock(std::atomic<uint32_t>& word) : word_(word) {
    uint32_t seq = word_.load(std::memory_order_relaxed);
    for (int spins = 0;; ++spins) {
      if ((seq & 1) == 0 && word_.compare_exchange_weak(seq, seq + 1, std::memory_order_acquire,
                                                        std::memory_order_relaxed))
        break;
      // A writer holds the set for well under a microsecond; after many
      // spins yield the core, in case the holder was preempted.
      if (spins < 256) {
        TF_HPS_CPU_RELAX();
      } else {
        std::this_thread::yield();
      }
      seq = word_.load(std::memory_order_relaxed);
    }
    seq_ = seq + 1;
    // The odd word must be visible before any write to the set is.
    std::atomic_thread_fence(std::memory_order_release);
  }
  ~SetLock() { word_.store(seq_ + 1, std::memory_order_release); }
  SetLock(const SetLock&) = delete;
  SetLock& operator=(const SetLock&) = delete;

 private:
  std::atomic<uint32_t>& word_;
  uint32_t seq_;
};

namespace {

// Touch without a lock: stamps only grow and never return to 0 (empty), so
// a racing writer can at worst see a slightly different LRU age.
inline void TouchRelaxed(uint64_t* slot_stamp, uint64_t stamp) {
  if (__atomic_load_n(slot_stamp, __ATOMIC_RELAXED) < stamp) __atomic_store_n(slot_stamp, stamp, __ATOMIC_RELAXED);
}

}  // namespace

EmbeddingCache::EmbeddingCache(int64_t capacity_rows, int64_t dim)
    : dim_(dim),
      num_sets_(std::max<int64_t>(1, (capacity_rows + kWays - 1) / kWays)),
      row_bytes_(dim * sizeof(float)),
      keys_(AllocateAligned<int64_t>(num_sets_ * kWays, true)),
      stamps_(AllocateAligned<uint64_t>(num_sets_ * kWays, true)),
      // Rows are read only after they are written, so they need no zeroing
      // (and untouched pages of a large cache cost nothing).
      values_(AllocateAligned<float>(num_sets_ * kWays * dim, false)),
      seqs_(new std::atomic<uint32_t>[num_sets_]()) {}

slab::Home EmbeddingCache::Prefetch(int64_t key) const {
  const slab::Home home = slab::HomeOf(key, num_sets_);
  PrefetchSet(home);
  return home;
}

inline void EmbeddingCache::PrefetchSet(slab::Home home) const {
  const int64_t slot = home.set * kWays + home.first_slab * slab::kLanes;
  __builtin_prefetch(&seqs_[home.set]);
  for (int lane = 0; lane < slab::kLanes; lane += 64 / sizeof(int64_t)) {
    __builtin_prefetch(keys_.get() + slot + lane);
    __builtin_prefetch(stamps_.get() + slot + lane, 1);
  }
}

// Row copies: base/row_copy.h.
inline bool EmbeddingCache::CanStream(const float* values) const { return CanStreamRows(values, row_bytes_); }

inline void EmbeddingCache::CopyRow(float* dest, const float* source, bool stream) const {
  tf_hps::CopyRow(dest, source, dim_, row_bytes_, stream);
}

inline void EmbeddingCache::StreamFence() { tf_hps::StreamFence(); }

inline int EmbeddingCache::FindOptimistic(int64_t key, slab::Home home, uint64_t stamp, uint32_t* seq) {
  const slab::HostLanes lanes;
  const int64_t base = home.set * kWays;
  *seq = seqs_[home.set].load(std::memory_order_acquire);
  const int way = slab::FindWay(lanes, keys_.get() + base, stamps_.get() + base, home.first_slab, key);
  if (way >= 0) {
    TouchRelaxed(&stamps_[base + way], stamp);
    const char* row = reinterpret_cast<const char*>(values_.get() + (base + way) * dim_);
    for (size_t b = 0; b < row_bytes_; b += 64) __builtin_prefetch(row + b);
  }
  return way;
}

inline bool EmbeddingCache::CopyChecked(int64_t key, slab::Home home, int way, uint32_t seq, uint64_t stamp,
                                        float* dest, bool stream) {
  const int64_t base = home.set * kWays;
  if ((seq & 1) == 0) {
    if (way >= 0) CopyRow(dest, values_.get() + (base + way) * dim_, stream);
    std::atomic_thread_fence(std::memory_order_acquire);
    if (seqs_[home.set].load(std::memory_order_relaxed) == seq) return way >= 0;
  }
  // A writer held or changed the set meanwhile: probe again, as a writer.
  const slab::HostLanes lanes;
  SetLock lock(seqs_[home.set]);
  const int again = slab::FindWay(lanes, keys_.get() + base, stamps_.get() + base, home.first_slab, key);
  if (again < 0) return false;
  slab::Touch(&stamps_[base + again], stamp);
  std::memcpy(dest, values_.get() + (base + again) * dim_, row_bytes_);
  return true;
}

void EmbeddingCache::Query(const int64_t* keys, int64_t n, float* values, uint64_t stamp,
                           std::vector<int64_t>* missing) {
  // Sets and rows lie at random in memory, so one key at a time would pay a
  // memory latency per key. Instead a key goes through three stages kStage
  // keys apart: prefetch its set; find its way and prefetch its row; copy the
  // row. Both later stages read optimistically (see SetLock); the copy stage
  // checks the set's sequence word once for both, and a key whose set changed
  // in between is looked up again under the lock.
  constexpr int64_t kStage = 8;
  constexpr int64_t kRing = 4 * kStage;  // > 2 * kStage keys in flight; a power of 2
  slab::Home homes[kRing];
  int ways[kRing];
  uint32_t seqs[kRing];
  auto find = [&](int64_t j) { ways[j % kRing] = FindOptimistic(keys[j], homes[j % kRing], stamp, &seqs[j % kRing]); };
  for (int64_t j = 0; j < std::min(n, 2 * kStage); ++j) homes[j % kRing] = Prefetch(keys[j]);
  for (int64_t j = 0; j < std::min(n, kStage); ++j) find(j);
  for (int64_t i = 0; i < n; ++i) {
    if (i + 2 * kStage < n) homes[(i + 2 * kStage) % kRing] = Prefetch(keys[i + 2 * kStage]);
    if (i + kStage < n) find(i + kStage);
    float* dest = values + i * dim_;
    if (!CopyChecked(keys[i], homes[i % kRing], ways[i % kRing], seqs[i % kRing], stamp, dest, false))
      missing->push_back(i);
  }
}

namespace {

// This thread's table of the distinct keys met by QueryPositions: open
// addressing over a power of two of slots, each the key and (generation <<
// 32 | the key's index among the distinct keys). A slot of an older
// generation is empty, so a call starts by bumping the generation instead of
// clearing the table.
class PositionDedup {
 public:
  struct Slot {
    int64_t key;
    uint64_t tag;
  };
  // What the copy stage knows of a distinct key.
  struct Distinct {
    const float* row;  // its row in the cache, read optimistically
    int64_t set;
    uint32_t seq;      // the set's sequence word when `row` was found
    int64_t miss;      // its index in the misses' keys, or -1 if cached
  };

  // Room for `n` distinct keys at load <= 1/2, empty.
  void Start(int64_t n) {
    size_t capacity = 16;
    while (capacity < static_cast<size_t>(2 * n)) capacity <<= 1;
    if (capacity > capacity_ || generation_ == UINT32_MAX) {
      capacity_ = std::max(capacity, capacity_);
      slots_.reset(new Slot[capacity_]());
      generation_ = 0;
    }
    mask_ = capacity - 1;
    ++generation_;
    count_ = 0;
    if (distinct_.size() < static_cast<size_t>(n)) distinct_.resize(n);
  }
  // The index of `key` (whose MixKey is `mix`) among the distinct keys,
  // adding it if new; *added says which.
  int64_t Find(int64_t key, uint64_t mix, bool* added) {
    for (size_t slot = mix & mask_;; slot = (slot + 1) & mask_) {
      Slot& s = slots_[slot];
      if ((s.tag >> 32) != generation_) {
        const int64_t j = count_++;
        s = {key, (generation_ << 32) | static_cast<uint64_t>(j)};
        *added = true;
        return j;
      }
      if (s.key == key) {
        *added = false;
        return static_cast<int64_t>(s.tag & 0xffffffffu);
      }
    }
  }
  void Prefetch(uint64_t mix) const { __builtin_prefetch(&slots_[mix & mask_]); }
  int64_t count() const { return count_; }
  Distinct* distinct() { return distinct_.data(); }  // (count)

 private:
  std::unique_ptr<Slot[]> slots_;
  size_t capacity_ = 0;
  size_t mask_ = 0;
  uint64_t generation_ = 0;
  int64_t count_ = 0;
  std::vector<Distinct> distinct_;
};

// This thread's table. Not inlined: the query's loop then holds a plain
// pointer instead of resolving the thread-local's address at every use (a
// function call in a shared library).
__attribute__((noinline)) PositionDedup* ThisThreadDedup() {
  thread_local PositionDedup dedup;
  return &dedup;
}

}  // namespace

void EmbeddingCache::QueryPositions(const int64_t* keys, int64_t begin, int64_t end, float* values,
                                    uint64_t stamp, PositionMisses* misses, bool stream) {
  // Query's three stages, with the de-duplication in the first: a key is
  // probed in the cache only at its first position; a later position copies
  // the row found then, if the set's sequence word shows it is still there.
  const int64_t n = end - begin;
  if (n <= 0) return;
  stream = stream && CanStream(values);
  PositionDedup& dedup = *ThisThreadDedup();
  dedup.Start(n);
  PositionDedup::Distinct* distinct = dedup.distinct();
  // Stages run kStage positions apart; most positions repeat a key and cost
  // little, so the distance is wide enough for the memory loads of the few
  // new keys between them to arrive.
  constexpr int64_t kStage = 16;
  constexpr int64_t kRing = 4 * kStage;  // > 3 * kStage positions in flight; a power of 2
  struct InFlight {
    uint64_t mix;     // MixKey of the key
    slab::Home home;  // only for a key's first position
    int64_t index;    // among the distinct keys
    int way;          // -1: not cached; only for a key's first position
    uint32_t seq;
    bool first;
  };
  InFlight ring[kRing];
  // Stage 1: hash the key and start loading its slot of the dedup table.
  auto hash = [&](int64_t r) {
    InFlight& f = ring[r % kRing];
    f.mix = MixKey(static_cast<uint64_t>(keys[begin + r]));
    dedup.Prefetch(f.mix);
  };
  // Stage 2: de-duplicate; for a key met for the first time, start loading its set.
  auto dedup_and_prefetch = [&](int64_t r) {
    InFlight& f = ring[r % kRing];
    f.index = dedup.Find(keys[begin + r], f.mix, &f.first);
    if (f.first) {
      f.home = slab::HomeOfMix(f.mix, num_sets_);
      PrefetchSet(f.home);
    }
  };
  // Stage 3: for a key's first position, find its way and start loading its row.
  auto find = [&](int64_t r) {
    InFlight& f = ring[r % kRing];
    if (f.first) f.way = FindOptimistic(keys[begin + r], f.home, stamp, &f.seq);
  };
  // The first position of a key (or a later one whose set changed since):
  // copies its row and notes where it was found.
  auto first_copy = [&](int64_t key, slab::Home home, int way, uint32_t seq, float* dest,
                        PositionDedup::Distinct* d) {
    if (!CopyChecked(key, home, way, seq, stamp, dest, stream)) return false;
    // Later positions copy the row found now while the set's word stays
    // `seq`; if it moved already (or the copy was redone under the lock),
    // an odd word sends them back to the probe.
    const bool unchanged = way >= 0 && seqs_[home.set].load(std::memory_order_relaxed) == seq;
    *d = {unchanged ? values_.get() + (home.set * kWays + way) * dim_ : nullptr, home.set, unchanged ? seq : 1, -1};
    return true;
  };
  for (int64_t r = 0; r < std::min(n, 3 * kStage); ++r) hash(r);
  for (int64_t r = 0; r < std::min(n, 2 * kStage); ++r) dedup_and_prefetch(r);
  for (int64_t r = 0; r < std::min(n, kStage); ++r) find(r);
  for (int64_t r = 0; r < n; ++r) {
    if (r + 3 * kStage < n) hash(r + 3 * kStage);
    if (r + 2 * kStage < n) dedup_and_prefetch(r + 2 * kStage);
    if (r + kStage < n) find(r + kStage);
    const InFlight& f = ring[r % kRing];
    const int64_t position = begin + r;
    const int64_t key = keys[position];
    float* dest = values + position * dim_;
    PositionDedup::Distinct& d = distinct[f.index];
    if (f.first) {
      if (first_copy(key, f.home, f.way, f.seq, dest, &d)) continue;
    } else if (d.miss < 0) {
      if ((d.seq & 1) == 0) {
        CopyRow(dest, d.row, stream);
        std::atomic_thread_fence(std::memory_order_acquire);
        if (seqs_[d.set].load(std::memory_order_relaxed) == d.seq) continue;
      }
      // A writer changed the set since the key's first position: look again.
      const slab::Home home = slab::HomeOf(key, num_sets_);
      uint32_t seq;
      const int way = FindOptimistic(key, home, stamp, &seq);
      if (first_copy(key, home, way, seq, dest, &d)) continue;
    }
    if (f.first || d.miss < 0) {  // the key's first miss in this range
      d.miss = static_cast<int64_t>(misses->keys.size());
      misses->keys.push_back(key);
    }
    misses->positions.push_back(position);
    misses->key_of.push_back(d.miss);
  }
  if (stream) StreamFence();
  misses->distinct += dedup.count();
}

int64_t EmbeddingCache::Replace(const int64_t* keys, int64_t n, const float* values, uint64_t stamp,
                                const UpdateGuard* guard) {
  stamp = std::max<uint64_t>(stamp, 1);  // 0 would mark the way empty
  const slab::HostLanes lanes;
  int64_t evicted = 0;
  for (int64_t i = 0; i < n; ++i) {
    const slab::Home home = slab::HomeOf(keys[i], num_sets_);
    const int64_t base = home.set * kWays;
    SetLock lock(seqs_[home.set]);
    if (guard && !guard->Holds()) break;
    bool cached;
    const int way =
        slab::ChooseWay(lanes, keys_.get() + base, stamps_.get() + base, home.first_slab, keys[i], &cached);
    if (cached) {
      slab::Touch(&stamps_[base + way], stamp);
    } else {
      evicted += stamps_[base + way] != 0;  // the way held another key
      keys_[base + way] = keys[i];
      stamps_[base + way] = stamp;
    }
    std::memcpy(values_.get() + (base + way) * dim_, values + i * dim_, row_bytes_);
  }
  return evicted;
}

void EmbeddingCache::Update(const int64_t* keys, int64_t n, const float* values, const UpdateGuard* guard) {
  const slab::HostLanes lanes;
  for (int64_t i = 0; i < n; ++i) {
    const slab::Home home = slab::HomeOf(keys[i], num_sets_);
    const int64_t base = home.set * kWays;
    SetLock lock(seqs_[home.set]);
    if (guard && !guard->Holds()) break;
    const int way = slab::FindWay(lanes, keys_.get() + base, stamps_.get() + base, home.first_slab, keys[i]);
    if (way >= 0) std::memcpy(values_.get() + (base + way) * dim_, values + i * dim_, row_bytes_);
  }
}

void EmbeddingCache::Dump(int64_t set_begin, int64_t set_end, std::vector<int64_t>* keys) const {
  set_begin = std::max<int64_t>(set_begin, 0);
  set_end = std::min(set_end, num_sets_);
  for (int64_t set = set_begin; set < set_end; ++set) {
    SetLock lock(seqs_[set]);
    for (int64_t slot = set * kWays; slot < (set + 1) * kWays; ++slot) {
      if (stamps_[slot] != 0) keys->push_back(keys_[slot]);
    }
  }
}

int64_t EmbeddingCache::Size() const {
  int64_t size = 0;
  for (int64_t set = 0; set < num_sets_; ++set) {
    SetLock lock(seqs_[set]);
    for (int64_t slot = set * kWays; slot < (set + 1) * kWays; ++slot) size += stamps_[slot] != 0;
  }
  return size;
}

}  // namespace tf_hps
