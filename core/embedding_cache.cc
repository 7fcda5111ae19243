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

// A set's one-byte spin lock: a probe holds it for well under a microsecond,
// far less than a mutex's sleep and wake-up; after many spins it yields the
// core, in case the holder was preempted.
class EmbeddingCache::SetLock {
 public:
  explicit SetLock(std::atomic<uint8_t>& flag) : flag_(flag) {
    while (flag_.exchange(1, std::memory_order_acquire) != 0) {
      for (int spins = 0; flag_.load(std::memory_order_relaxed) != 0; ++spins) {
        if (spins < 256) {
          TF_HPS_CPU_RELAX();
        } else {
          std::this_thread::yield();
        }
      }
    }
  }
  ~SetLock() { flag_.store(0, std::memory_order_release); }
  SetLock(const SetLock&) = delete;
  SetLock& operator=(const SetLock&) = delete;

 private:
  std::atomic<uint8_t>& flag_;
};

EmbeddingCache::EmbeddingCache(int64_t capacity_rows, int64_t dim)
    : dim_(dim),
      num_sets_(std::max<int64_t>(1, (capacity_rows + kWays - 1) / kWays)),
      row_bytes_(dim * sizeof(float)),
      keys_(AllocateAligned<int64_t>(num_sets_ * kWays, true)),
      stamps_(AllocateAligned<uint64_t>(num_sets_ * kWays, true)),
      // Rows are read only after they are written, so they need no zeroing
      // (and untouched pages of a large cache cost nothing).
      values_(AllocateAligned<float>(num_sets_ * kWays * dim, false)),
      locks_(new std::atomic<uint8_t>[num_sets_]()) {}

slab::Home EmbeddingCache::Prefetch(int64_t key) const {
  const slab::Home home = slab::HomeOf(key, num_sets_);
  const int64_t slot = home.set * kWays + home.first_slab * slab::kLanes;
  __builtin_prefetch(&locks_[home.set], 1);
  for (int lane = 0; lane < slab::kLanes; lane += 64 / sizeof(int64_t)) {
    __builtin_prefetch(keys_.get() + slot + lane);
    __builtin_prefetch(stamps_.get() + slot + lane, 1);
  }
  return home;
}

void EmbeddingCache::Query(const int64_t* keys, int64_t n, float* values, uint64_t stamp,
                           std::vector<int64_t>* missing) {
  // Sets and rows lie at random in memory, and each set lock is a full
  // memory fence, so one key at a time would pay a memory latency per key.
  // Instead a key goes through three stages kStage keys apart: prefetch its
  // set; find its way (under the lock) and prefetch its row; copy the row
  // (under the lock again, after checking that the way still holds the key).
  constexpr int64_t kStage = 8;
  constexpr int64_t kRing = 4 * kStage;  // > 2 * kStage keys in flight; a power of 2
  slab::Home homes[kRing];
  int ways[kRing];
  const slab::HostLanes lanes;
  auto find = [&](int64_t j) {
    const slab::Home home = homes[j % kRing];
    const int64_t base = home.set * kWays;
    int way;
    {
      SetLock lock(locks_[home.set]);
      way = slab::FindWay(lanes, keys_.get() + base, stamps_.get() + base, home.first_slab, keys[j]);
      if (way >= 0) slab::Touch(&stamps_[base + way], stamp);
    }
    ways[j % kRing] = way;
    if (way >= 0) {
      const char* row = reinterpret_cast<const char*>(values_.get() + (base + way) * dim_);
      for (size_t b = 0; b < row_bytes_; b += 64) __builtin_prefetch(row + b);
    }
  };
  for (int64_t j = 0; j < std::min(n, 2 * kStage); ++j) homes[j % kRing] = Prefetch(keys[j]);
  for (int64_t j = 0; j < std::min(n, kStage); ++j) find(j);
  for (int64_t i = 0; i < n; ++i) {
    if (i + 2 * kStage < n) homes[(i + 2 * kStage) % kRing] = Prefetch(keys[i + 2 * kStage]);
    if (i + kStage < n) find(i + kStage);
    int way = ways[i % kRing];
    if (way < 0) {
      missing->push_back(i);
      continue;
    }
    const slab::Home home = homes[i % kRing];
    const int64_t base = home.set * kWays;
    SetLock lock(locks_[home.set]);
    if (keys_[base + way] != keys[i] || stamps_[base + way] == 0) {
      // A Replace took the way in between: probe again.
      way = slab::FindWay(lanes, keys_.get() + base, stamps_.get() + base, home.first_slab, keys[i]);
      if (way < 0) {
        missing->push_back(i);
        continue;
      }
      slab::Touch(&stamps_[base + way], stamp);
    }
    std::memcpy(values + i * dim_, values_.get() + (base + way) * dim_, row_bytes_);
  }
}

int64_t EmbeddingCache::Replace(const int64_t* keys, int64_t n, const float* values, uint64_t stamp) {
  stamp = std::max<uint64_t>(stamp, 1);  // 0 would mark the way empty
  const slab::HostLanes lanes;
  int64_t evicted = 0;
  for (int64_t i = 0; i < n; ++i) {
    const slab::Home home = slab::HomeOf(keys[i], num_sets_);
    const int64_t base = home.set * kWays;
    SetLock lock(locks_[home.set]);
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

void EmbeddingCache::Update(const int64_t* keys, int64_t n, const float* values) {
  const slab::HostLanes lanes;
  for (int64_t i = 0; i < n; ++i) {
    const slab::Home home = slab::HomeOf(keys[i], num_sets_);
    const int64_t base = home.set * kWays;
    SetLock lock(locks_[home.set]);
    const int way = slab::FindWay(lanes, keys_.get() + base, stamps_.get() + base, home.first_slab, keys[i]);
    if (way >= 0) std::memcpy(values_.get() + (base + way) * dim_, values + i * dim_, row_bytes_);
  }
}

void EmbeddingCache::Dump(int64_t set_begin, int64_t set_end, std::vector<int64_t>* keys) const {
  set_begin = std::max<int64_t>(set_begin, 0);
  set_end = std::min(set_end, num_sets_);
  for (int64_t set = set_begin; set < set_end; ++set) {
    SetLock lock(locks_[set]);
    for (int64_t slot = set * kWays; slot < (set + 1) * kWays; ++slot) {
      if (stamps_[slot] != 0) keys->push_back(keys_[slot]);
    }
  }
}

int64_t EmbeddingCache::Size() const {
  int64_t size = 0;
  for (int64_t set = 0; set < num_sets_; ++set) {
    SetLock lock(locks_[set]);
    for (int64_t slot = set * kWays; slot < (set + 1) * kWays; ++slot) size += stamps_[slot] != 0;
  }
  return size;
}

}  // namespace tf_hps
