#include "core/embedding_cache.h"

#include <algorithm>
#include <cstring>
#include <thread>
#include <vector>

#include "base/aligned_buffer.h"
#include "base/key_hash.h"
#include "base/position_dedup.h"
#include "base/row_copy.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define TF_HPS_CPU_RELAX() _mm_pause()
#else
#define TF_HPS_CPU_RELAX() ((void)0)
#endif

namespace tf_hps {

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

// The candidate way (CandidateWays) that holds `key`, the first in probe
// order, or -1; set_keys: the set's kWays keys.
inline int EmbeddingCache::FindCandidate(const int64_t* set_keys, int first_slab, uint64_t candidates,
                                         int64_t key) {
  for (; candidates != 0; candidates &= candidates - 1) {
    const int way = WayOfCandidate(first_slab, __builtin_ctzll(candidates));
    if (set_keys[way] == key) return way;
  }
  return -1;
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
    tf_hps::PrefetchRow(values_.get() + (base + way) * dim_, row_bytes_);
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

// What QueryPositions' probe finds for a distinct key of a range.
struct ProbedKey {
  enum State : uint8_t {
    kCached,   // `row` holds the key while the set's sequence word stays `seq`
    kAbsent,   // not cached when probed
    kUnknown,  // a writer changed the set during the probe: look again
  };
  int64_t key;
  int64_t set;
  const float* row;  // its row in the cache (kCached), read optimistically
  uint32_t seq;      // the set's sequence word, read before its tags
  uint8_t tag;
  uint8_t first_slab;
  State state;
  int64_t miss;  // its index in the misses' keys, or -1
};
using QueryDedup = PositionDedup<ProbedKey>;

// This thread's scratch. Not inlined: the query's loop then holds a plain
// pointer instead of resolving the thread-local's address at every use (a
// function call in a shared library).
__attribute__((noinline)) QueryDedup* ThisThreadDedup() {
  thread_local QueryDedup dedup;
  return &dedup;
}

}  // namespace

void EmbeddingCache::QueryPositions(const int64_t* keys, int64_t begin, int64_t end, float* values,
                                    uint64_t stamp, PositionMisses* misses, bool stream) {
  // Three passes, each a pipeline that starts loading what it needs a fixed
  // number of items ahead: (1) de-duplicate the positions; (2) probe the
  // cache once per distinct key: its set's tags (a byte per way, one cache
  // line) name the one way whose key is compared, and its row starts
  // loading; (3) copy each position's row. Most positions repeat a key, so
  // the probes, a few distinct keys, keep many set and row loads in flight,
  // and a repeated key costs a dedup lookup and a row copy. Probes and
  // copies read optimistically (see SetLock): a copy checks that the set's
  // sequence word is still the one read before its tags, and a key whose
  // set changed is looked up again.
  using Distinct = ProbedKey;
  const int64_t n = end - begin;
  if (n <= 0) return;
  stream = stream && CanStream(values);
  QueryDedup& dedup = *ThisThreadDedup();
  // The arrays as plain pointers: the loops' stores and atomic loads would
  // otherwise make the compiler reload them from *this at every position.
  const int64_t* const set_keys = keys_.get();
  uint64_t* const set_stamps = stamps_.get();
  const uint8_t* const set_tags = tags_.get();
  const float* const rows = values_.get();
  const std::atomic<uint32_t>* const seqs = seqs_.get();
  const int64_t dim = dim_;
  const size_t row_bytes = row_bytes_;
  const uint64_t count = static_cast<uint64_t>(n);

  // 1. De-duplicate.
  const int64_t u = dedup.Run(keys + begin, n, [&](Distinct& d, int64_t key, uint64_t mix) {
    const slab::Home home = slab::HomeOfMix(mix, num_sets_);
    d = {key, home.set, nullptr, 0, TagOfMix(mix), static_cast<uint8_t>(home.first_slab), ProbedKey::kUnknown, -1};
  });
  Distinct* const distinct = dedup.distinct();
  uint32_t* const of_position = dedup.of_position();

  // 2. Probe each distinct key, in three stages kStage keys apart: start
  //    loading its set's word and tags; read them and start loading the
  //    first candidate way's key, stamp and row; compare the key.
  {
    constexpr int64_t kStage = 8;
    constexpr int64_t kRing = 4 * kStage;  // > 2 * kStage keys in flight; a power of 2
    struct InFlight {
      uint64_t candidates;  // ways whose tag is the key's, in probe order (CandidateWays)
      uint32_t seq;
    };
    InFlight ring[kRing];
    auto locate = [&](int64_t j) __attribute__((always_inline)) {
      __builtin_prefetch(seqs + distinct[j].set);
      __builtin_prefetch(set_tags + distinct[j].set * kWays);
    };
    auto filter = [&](int64_t j) __attribute__((always_inline)) {
      const Distinct& d = distinct[j];
      InFlight& f = ring[j & (kRing - 1)];
      f.seq = seqs[d.set].load(std::memory_order_acquire);
      f.candidates = CandidateWays(set_tags + d.set * kWays, d.first_slab, d.tag);
      if (f.candidates == 0) return;
      const int64_t slot = d.set * kWays + WayOfCandidate(d.first_slab, __builtin_ctzll(f.candidates));
      __builtin_prefetch(set_keys + slot);
      __builtin_prefetch(set_stamps + slot, 1);
      tf_hps::PrefetchRow(rows + slot * dim, row_bytes);
    };
    for (int64_t j = 0; j < std::min(u, 2 * kStage); ++j) locate(j);
    for (int64_t j = 0; j < std::min(u, kStage); ++j) filter(j);
    for (int64_t j = 0; j < u; ++j) {
      if (j + 2 * kStage < u) locate(j + 2 * kStage);
      if (j + kStage < u) filter(j + kStage);
      Distinct& d = distinct[j];
      const InFlight& f = ring[j & (kRing - 1)];
      if ((f.seq & 1) != 0) continue;  // a writer holds the set: kUnknown
      const int64_t base = d.set * kWays;
      const int way = FindCandidate(set_keys + base, d.first_slab, f.candidates, d.key);
      if (way >= 0) {
        // The copies check the word after reading the row.
        TouchRelaxed(set_stamps + base + way, stamp);
        d.row = rows + (base + way) * dim;
        d.seq = f.seq;
        d.state = ProbedKey::kCached;
      } else {
        // A miss read while no writer held or changed the set is a miss.
        std::atomic_thread_fence(std::memory_order_acquire);
        if (seqs[d.set].load(std::memory_order_relaxed) == f.seq) d.state = ProbedKey::kAbsent;
      }
    }
  }

  // 3. Copy each position's row, loading the rows of keys met for the first
  //    time kAhead positions early (a repeated key's row is in the CPU cache).
  {
    constexpr uint64_t kAhead = 8;
    auto prefetch_first = [&](uint64_t r) __attribute__((always_inline)) {
      const uint32_t of = of_position[r];
      if ((of & QueryDedup::kFirst) == 0) return;
      const Distinct& d = distinct[of & ~QueryDedup::kFirst];
      if (d.state == ProbedKey::kCached) tf_hps::PrefetchRow(d.row, row_bytes);
    };
    for (uint64_t r = 0; r < std::min(count, kAhead); ++r) prefetch_first(r);
    for (uint64_t r = 0; r < count; ++r) {
      if (r + kAhead < count) prefetch_first(r + kAhead);
      Distinct& d = distinct[of_position[r] & ~QueryDedup::kFirst];
      const int64_t position = begin + static_cast<int64_t>(r);
      float* dest = values + position * dim;
      if (d.state == ProbedKey::kCached) {
        tf_hps::CopyRow(dest, d.row, dim, row_bytes, stream);
        std::atomic_thread_fence(std::memory_order_acquire);
        if (seqs[d.set].load(std::memory_order_relaxed) == d.seq) continue;
        d.state = ProbedKey::kUnknown;  // a writer changed the set since the probe
      }
      if (d.state == ProbedKey::kUnknown) {
        const slab::Home home{d.set, d.first_slab};
        uint32_t seq;
        const int way = FindOptimistic(d.key, home, stamp, &seq);
        if (CopyChecked(d.key, home, way, seq, stamp, dest, stream)) {
          // Later positions copy the row found now while the set's word
          // stays `seq`; if it moved already (or the copy was redone under
          // the lock), they look again.
          if (way >= 0 && seqs[d.set].load(std::memory_order_relaxed) == seq) {
            d.row = rows + (d.set * kWays + way) * dim;
            d.seq = seq;
            d.state = ProbedKey::kCached;
          }
          continue;
        }
        d.state = ProbedKey::kAbsent;
      }
      if (d.miss < 0) {  // the key's first missed position in this range
        d.miss = static_cast<int64_t>(misses->keys.size());
        misses->keys.push_back(d.key);
      }
      misses->positions.push_back(position);
      misses->key_of.push_back(d.miss);
    }
  }
  if (stream) StreamFence();
  misses->distinct += u;
}

// slab::ChooseWay for the CPU, with the tags: the key's way if cached
// (*cached), else the first empty way in probe order, else the least recently
// used one; only the keys whose tag matches are compared, and the stamps are
// read only to evict. The set must be locked.
inline int EmbeddingCache::ChooseWayTagged(int64_t base, slab::Home home, uint8_t tag, int64_t key,
                                           bool* cached) const {
  const uint8_t* set_tags = tags_.get() + base;
  const uint64_t candidates = CandidateWays(set_tags, home.first_slab, tag);
  const int way = FindCandidate(keys_.get() + base, home.first_slab, candidates, key);
  *cached = way >= 0;
  if (*cached) return way;
  for (int step = 0; step < slab::kSlabsPerSet; ++step) {
    const int slab_base = (home.first_slab ^ step) * slab::kLanes;
    const uint32_t empty = TagMask(set_tags + slab_base, 0);
    if (empty != 0) return slab_base + __builtin_ctz(empty);
  }
  return slab::LeastRecentWay(slab::HostLanes(), stamps_.get() + base, home.first_slab);
}

int64_t EmbeddingCache::Replace(const int64_t* keys, int64_t n, const float* values, uint64_t stamp,
                                const UpdateGuard* guard) {
  stamp = std::max<uint64_t>(stamp, 1);  // 0 would mark the way empty
  int64_t evicted = 0;
  // Sets lie at random in memory, so a key's set is loaded kStage keys
  // before it is written: its word and tags, then what its insert reads (the
  // key of a way whose tag matches, or a full set's stamps), read here
  // without the lock only to start the loads.
  constexpr int64_t kStage = 4;
  constexpr int64_t kRing = 4 * kStage;  // a power of 2
  struct Ahead {
    slab::Home home;
    uint8_t tag;
  };
  Ahead ring[kRing];
  auto locate = [&](int64_t i) {
    Ahead& a = ring[i & (kRing - 1)];
    const uint64_t mix = MixKey(static_cast<uint64_t>(keys[i]));
    a.home = slab::HomeOfMix(mix, num_sets_);
    a.tag = TagOfMix(mix);
    __builtin_prefetch(&seqs_[a.home.set], 1);
    __builtin_prefetch(tags_.get() + a.home.set * kWays, 1);
  };
  auto warm = [&](int64_t i) {
    const Ahead& a = ring[i & (kRing - 1)];
    const int64_t base = a.home.set * kWays;
    const uint8_t* set_tags = tags_.get() + base;
    const uint64_t candidates = CandidateWays(set_tags, a.home.first_slab, a.tag);
    if (candidates != 0) {
      __builtin_prefetch(keys_.get() + base + WayOfCandidate(a.home.first_slab, __builtin_ctzll(candidates)));
    } else if (TagMask(set_tags, 0) == 0 && TagMask(set_tags + slab::kLanes, 0) == 0) {
      // A full set: the insert evicts, reading every stamp.
      for (int way = 0; way < kWays; way += 64 / sizeof(uint64_t)) __builtin_prefetch(stamps_.get() + base + way, 1);
    }
  };
  for (int64_t i = 0; i < std::min(n, 2 * kStage); ++i) locate(i);
  for (int64_t i = 0; i < std::min(n, kStage); ++i) warm(i);
  for (int64_t i = 0; i < n; ++i) {
    if (i + 2 * kStage < n) locate(i + 2 * kStage);
    if (i + kStage < n) warm(i + kStage);
    const Ahead& a = ring[i & (kRing - 1)];
    const int64_t base = a.home.set * kWays;
    SetLock lock(seqs_[a.home.set]);
    if (guard && !guard->Holds()) break;
    bool cached;
    const int way = ChooseWayTagged(base, a.home, a.tag, keys[i], &cached);
    if (cached) {
      slab::Touch(&stamps_[base + way], stamp);
    } else {
      evicted += stamps_[base + way] != 0;  // the way held another key
      keys_[base + way] = keys[i];
      stamps_[base + way] = stamp;
      tags_[base + way] = a.tag;
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
