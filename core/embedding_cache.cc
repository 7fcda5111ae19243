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

// TouchRelaxed that tells whether it moved the stamp to `stamp`, so the first
// position of a batch that hits a key is told apart from its repeats. Two
// threads touching a way at once may both say so (a locked exchange would
// settle it, but would also wait for every store before it, the row copies
// included): the count is exact on one thread and at most a little high
// across threads, which only the batch's hit rate reads.
inline bool TouchCounted(uint64_t* slot_stamp, uint64_t stamp) {
  if (__atomic_load_n(slot_stamp, __ATOMIC_RELAXED) >= stamp) return false;
  __atomic_store_n(slot_stamp, stamp, __ATOMIC_RELAXED);
  return true;
}

// A way's tag: one byte of its key's mix (not the bits that pick the set or
// the first slab), never 0, which marks an empty way.
inline uint8_t TagOfMix(uint64_t mix) {
  const uint8_t tag = static_cast<uint8_t>(mix >> 8);
  return tag == 0 ? 1 : tag;
}

// Lanes of a slab (32 tags) whose tag is `tag`.
inline uint32_t TagMask(const uint8_t* tags, uint8_t tag) {
#ifdef TF_HPS_SLAB_SSE2
  const __m128i want = _mm_set1_epi8(static_cast<char>(tag));
  const __m128i low = _mm_load_si128(reinterpret_cast<const __m128i*>(tags));
  const __m128i high = _mm_load_si128(reinterpret_cast<const __m128i*>(tags + 16));
  return static_cast<uint32_t>(_mm_movemask_epi8(_mm_cmpeq_epi8(low, want))) |
         (static_cast<uint32_t>(_mm_movemask_epi8(_mm_cmpeq_epi8(high, want))) << 16);
#else
  uint32_t mask = 0;
  for (int lane = 0; lane < slab::kLanes; ++lane) mask |= static_cast<uint32_t>(tags[lane] == tag) << lane;
  return mask;
#endif
}

}  // namespace

EmbeddingCache::EmbeddingCache(int64_t capacity_rows, int64_t dim)
    : dim_(dim),
      num_sets_(std::max<int64_t>(1, (capacity_rows + kWays - 1) / kWays)),
      row_bytes_(dim * sizeof(float)),
      keys_(AllocateAligned<int64_t>(num_sets_ * kWays, true)),
      stamps_(AllocateAligned<uint64_t>(num_sets_ * kWays, true)),
      tags_(AllocateAligned<uint8_t>(num_sets_ * kWays, true)),
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

// The ways of a set (its tags: kWays bytes) whose tag is `tag`, as bits in
// probe order: bit i < 32 is lane i of the first slab, bit 32 + i lane i of
// the other. As in slab::FindWay, a first slab with an empty way is the only
// one the key can be in. Every way holding the key is a candidate; the
// caller compares keys.
inline uint64_t EmbeddingCache::CandidateWays(const uint8_t* set_tags, int first_slab, uint8_t tag) {
  const uint8_t* first = set_tags + first_slab * slab::kLanes;
  const uint32_t match = TagMask(first, tag);
  if (TagMask(first, 0) != 0) return match;
  return match | (static_cast<uint64_t>(TagMask(set_tags + (first_slab ^ 1) * slab::kLanes, tag)) << 32);
}

inline int EmbeddingCache::WayOfCandidate(int first_slab, int bit) {
  return ((bit >> 5) ^ first_slab) * slab::kLanes + (bit & (slab::kLanes - 1));
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
  bool advanced;
  return CopyLocked(key, home, stamp, dest, &advanced);
}

bool EmbeddingCache::CopyLocked(int64_t key, slab::Home home, uint64_t stamp, float* dest, bool* advanced) {
  const int64_t base = home.set * kWays;
  const slab::HostLanes lanes;
  SetLock lock(seqs_[home.set]);
  const int way = slab::FindWay(lanes, keys_.get() + base, stamps_.get() + base, home.first_slab, key);
  *advanced = false;
  if (way < 0) return false;
  *advanced = stamps_[base + way] < stamp;
  slab::Touch(&stamps_[base + way], stamp);
  std::memcpy(dest, values_.get() + (base + way) * dim_, row_bytes_);
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

// This thread's table of the distinct keys QueryPositions missed: open
// addressing over a power of two of slots, each the key and (generation <<
// 32 | the key's index among the distinct keys). A slot of an older
// generation is empty, so a call starts by bumping the generation instead of
// clearing the table.
class MissDedup {
 public:
  struct Slot {
    int64_t key;
    uint64_t tag;
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
  }
  // The index of `key` among the distinct keys, adding it if new.
  int64_t Find(int64_t key) {
    for (size_t slot = MixKey(static_cast<uint64_t>(key)) & mask_;; slot = (slot + 1) & mask_) {
      Slot& s = slots_[slot];
      if ((s.tag >> 32) != generation_) {
        const int64_t j = count_++;
        s = {key, (generation_ << 32) | static_cast<uint64_t>(j)};
        return j;
      }
      if (s.key == key) return static_cast<int64_t>(s.tag & 0xffffffffu);
    }
  }
  int64_t count() const { return count_; }
  std::vector<int64_t>& missed() { return missed_; }

 private:
  std::unique_ptr<Slot[]> slots_;
  size_t capacity_ = 0;
  size_t mask_ = 0;
  uint64_t generation_ = 0;
  int64_t count_ = 0;
  std::vector<int64_t> missed_;  // positions of the range missed, for QueryPositions
};

// This thread's table. Not inlined: the query's loop then holds a plain
// pointer instead of resolving the thread-local's address at every use (a
// function call in a shared library).
__attribute__((noinline)) MissDedup* ThisThreadMisses() {
  thread_local MissDedup dedup;
  return &dedup;
}

}  // namespace

void EmbeddingCache::QueryPositions(const int64_t* keys, int64_t begin, int64_t end, float* values,
                                    uint64_t stamp, PositionMisses* misses, bool stream) {
  // Every position is probed, in three stages kStage positions apart: locate
  // the key's set and start loading its sequence word and tags; filter the
  // set's ways by tag and start loading the key, stamp and row of the first
  // candidate; check the key and copy the row. A hot key's set and row stay
  // in the CPU cache, so a repeated key costs one compare of tags and of its
  // key; a cold one costs four lines of set data and its row, loaded while
  // the positions before it are copied. Probes and copies read
  // optimistically (see SetLock): a copy checks that the set's sequence word
  // is still the one read before its tags, and a key whose set changed is
  // looked up again under the lock. Only the misses, a few positions, are
  // de-duplicated afterwards.
  const int64_t n = end - begin;
  if (n <= 0) return;
  stream = stream && CanStream(values);
  MissDedup& dedup = *ThisThreadMisses();
  std::vector<int64_t>& missed = dedup.missed();
  missed.clear();
  constexpr uint64_t kStage = 16;
  constexpr uint64_t kRing = 4 * kStage;  // > 2 * kStage positions in flight; a power of 2
  struct InFlight {
    int64_t key;
    int64_t set;
    int first_slab;
    int way;              // the first way whose tag is the key's (-1: none)
    uint64_t candidates;  // all of them, in probe order (CandidateWays)
    uint32_t seq;         // the set's sequence word, read before its tags
    uint8_t tag;
  };
  InFlight ring[kRing];
  // The arrays as plain pointers: the loop's stores and atomic loads would
  // otherwise make the compiler reload them from *this at every position.
  const int64_t* const set_keys = keys_.get();
  uint64_t* const set_stamps = stamps_.get();
  const uint8_t* const set_tags = tags_.get();
  const float* const rows = values_.get();
  const std::atomic<uint32_t>* const seqs = seqs_.get();
  const int64_t dim = dim_;
  const int64_t num_sets = num_sets_;
  const size_t row_bytes = row_bytes_;
  int64_t hit_keys = 0;  // keys whose stamp this query moved to `stamp`
  const uint64_t count = static_cast<uint64_t>(n);
  // Stage 1: hash the key, find its set and start loading its word and tags.
  auto locate = [&](uint64_t r) __attribute__((always_inline)) {
    InFlight& f = ring[r & (kRing - 1)];
    f.key = keys[begin + r];
    const uint64_t mix = MixKey(static_cast<uint64_t>(f.key));
    const slab::Home home = slab::HomeOfMix(mix, num_sets);
    f.set = home.set;
    f.first_slab = home.first_slab;
    f.tag = TagOfMix(mix);
    __builtin_prefetch(seqs + f.set);
    __builtin_prefetch(set_tags + f.set * kWays);
  };
  // Stage 2: read the word, then the tags; start loading the first candidate's key, stamp and row.
  auto filter = [&](uint64_t r) __attribute__((always_inline)) {
    InFlight& f = ring[r & (kRing - 1)];
    f.seq = seqs[f.set].load(std::memory_order_acquire);
    f.candidates = CandidateWays(set_tags + f.set * kWays, f.first_slab, f.tag);
    f.way = -1;
    if (f.candidates == 0) return;
    f.way = WayOfCandidate(f.first_slab, __builtin_ctzll(f.candidates));
    const int64_t slot = f.set * kWays + f.way;
    __builtin_prefetch(set_keys + slot);
    __builtin_prefetch(set_stamps + slot, 1);
    const char* row = reinterpret_cast<const char*>(rows + slot * dim);
    for (size_t b = 0; b < row_bytes; b += 64) __builtin_prefetch(row + b);
  };
  for (uint64_t r = 0; r < std::min(count, 2 * kStage); ++r) locate(r);
  for (uint64_t r = 0; r < std::min(count, kStage); ++r) filter(r);
  for (uint64_t r = 0; r < count; ++r) {
    if (r + 2 * kStage < count) locate(r + 2 * kStage);
    if (r + kStage < count) filter(r + kStage);
    // Stage 3: compare the key with the candidates' (almost always one), copy the row, check the word.
    const InFlight& f = ring[r & (kRing - 1)];
    const int64_t base = f.set * kWays;
    float* dest = values + (begin + static_cast<int64_t>(r)) * dim;
    int way = f.way;
    if (way >= 0 && set_keys[base + way] != f.key) {
      way = -1;
      for (uint64_t c = f.candidates & (f.candidates - 1); c != 0; c &= c - 1) {
        const int w = WayOfCandidate(f.first_slab, __builtin_ctzll(c));
        if (set_keys[base + w] == f.key) {
          way = w;
          break;
        }
      }
    }
    if ((f.seq & 1) == 0) {
      if (way >= 0) {
        hit_keys += TouchCounted(set_stamps + base + way, stamp);
        tf_hps::CopyRow(dest, rows + (base + way) * dim, dim, row_bytes, stream);
      }
      std::atomic_thread_fence(std::memory_order_acquire);
      if (seqs[f.set].load(std::memory_order_relaxed) == f.seq) {
        if (way < 0) missed.push_back(static_cast<int64_t>(r));
        continue;
      }
    }
    // A writer held or changed the set meanwhile: look again, as a writer.
    bool advanced = false;
    if (CopyLocked(f.key, {f.set, f.first_slab}, stamp, dest, &advanced)) {
      hit_keys += advanced;
    } else {
      missed.push_back(static_cast<int64_t>(r));
    }
  }
  if (stream) StreamFence();
  // The misses, each distinct key once, in order of first appearance.
  dedup.Start(static_cast<int64_t>(missed.size()));
  const int64_t offset = static_cast<int64_t>(misses->keys.size());
  for (int64_t r : missed) {
    const int64_t key = keys[begin + r];
    const int64_t j = dedup.Find(key);
    if (offset + j == static_cast<int64_t>(misses->keys.size())) misses->keys.push_back(key);
    misses->positions.push_back(begin + r);
    misses->key_of.push_back(offset + j);
  }
  misses->distinct += hit_keys + dedup.count();
}

int64_t EmbeddingCache::Replace(const int64_t* keys, int64_t n, const float* values, uint64_t stamp,
                                const UpdateGuard* guard) {
  stamp = std::max<uint64_t>(stamp, 1);  // 0 would mark the way empty
  const slab::HostLanes lanes;
  int64_t evicted = 0;
  for (int64_t i = 0; i < n; ++i) {
    const uint64_t mix = MixKey(static_cast<uint64_t>(keys[i]));
    const slab::Home home = slab::HomeOfMix(mix, num_sets_);
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
      tags_[base + way] = TagOfMix(mix);
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
