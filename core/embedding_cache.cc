#include "core/embedding_cache.h"

#include <algorithm>
#include <cstring>
#include <new>
#include <thread>

#include <sys/mman.h>

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
  const int64_t slot = home.set * kWays + home.first_slab * slab::kLanes;
  __builtin_prefetch(&seqs_[home.set]);
  for (int lane = 0; lane < slab::kLanes; lane += 64 / sizeof(int64_t)) {
    __builtin_prefetch(keys_.get() + slot + lane);
    __builtin_prefetch(stamps_.get() + slot + lane, 1);
  }
  return home;
}

void EmbeddingCache::Query(const int64_t* keys, int64_t n, float* values, uint64_t stamp,
                           std::vector<int64_t>* missing, const int64_t* value_rows) {
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
  const slab::HostLanes lanes;
  auto find = [&](int64_t j) {
    const slab::Home home = homes[j % kRing];
    const int64_t base = home.set * kWays;
    const uint32_t seq = seqs_[home.set].load(std::memory_order_acquire);
    const int way = slab::FindWay(lanes, keys_.get() + base, stamps_.get() + base, home.first_slab, keys[j]);
    if (way >= 0) {
      TouchRelaxed(&stamps_[base + way], stamp);
      const char* row = reinterpret_cast<const char*>(values_.get() + (base + way) * dim_);
      for (size_t b = 0; b < row_bytes_; b += 64) __builtin_prefetch(row + b);
    }
    ways[j % kRing] = way;
    seqs[j % kRing] = seq;
  };
  for (int64_t j = 0; j < std::min(n, 2 * kStage); ++j) homes[j % kRing] = Prefetch(keys[j]);
  for (int64_t j = 0; j < std::min(n, kStage); ++j) find(j);
  for (int64_t i = 0; i < n; ++i) {
    if (i + 2 * kStage < n) homes[(i + 2 * kStage) % kRing] = Prefetch(keys[i + 2 * kStage]);
    if (i + kStage < n) find(i + kStage);
    const slab::Home home = homes[i % kRing];
    const int64_t base = home.set * kWays;
    const int way = ways[i % kRing];
    const uint32_t seq = seqs[i % kRing];
    float* dest = values + (value_rows ? value_rows[i] : i) * dim_;
    if ((seq & 1) == 0) {
      if (way >= 0) std::memcpy(dest, values_.get() + (base + way) * dim_, row_bytes_);
      std::atomic_thread_fence(std::memory_order_acquire);
      if (seqs_[home.set].load(std::memory_order_relaxed) == seq) {
        if (way < 0) missing->push_back(i);
        continue;
      }
    }
    // A writer held or changed the set meanwhile: probe again, as a writer.
    SetLock lock(seqs_[home.set]);
    const int again = slab::FindWay(lanes, keys_.get() + base, stamps_.get() + base, home.first_slab, keys[i]);
    if (again < 0) {
      missing->push_back(i);
      continue;
    }
    slab::Touch(&stamps_[base + again], stamp);
    std::memcpy(dest, values_.get() + (base + again) * dim_, row_bytes_);
  }
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
