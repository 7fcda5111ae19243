// De-duplication of a range of a lookup's positions, shared by the L1 cache
// and the in-process hash map: each position learns the index of its key
// among the range's distinct keys, and the caller records what it needs of
// each distinct key (a Distinct) at the key's first position. Then the
// expensive part, a probe of a cache set or a hash-map slot, runs once per
// distinct key, and every position just copies its key's row.
#ifndef TF_HPS_BASE_POSITION_DEDUP_H_
#define TF_HPS_BASE_POSITION_DEDUP_H_

#include <algorithm>
#include <cstdint>
#include <memory>
#include <vector>

#include "base/key_hash.h"

namespace tf_hps {

// Scratch for one thread, reused from call to call: open addressing over a
// power of two of slots, each the key and (generation << 32 | the key's
// index among the distinct keys). A slot of an older generation is empty, so
// a call starts by bumping the generation instead of clearing the table.
template <class Distinct>
class PositionDedup {
 public:
  // A position's distinct key, with kFirst set at the key's first position.
  static constexpr uint32_t kFirst = 1u << 31;

  // De-duplicates keys[0, n) (n < 2^31): of_position()[r] is the index of
  // keys[r] among the distinct keys, in order of first appearance, with
  // kFirst at its first position, where on_new(distinct()[j], key, mix) is
  // called (mix: MixKey(key)). Returns the number of distinct keys. Each
  // key's slot is loaded kAhead positions early.
  template <class OnNew>
  int64_t Run(const int64_t* keys, int64_t n, OnNew&& on_new) {
    Start(n);
    uint32_t* const of_position = of_position_.data();
    Distinct* const distinct = distinct_.data();
    Slot* const slots = slots_.get();
    const size_t mask = mask_;
    const uint64_t generation = generation_;
    constexpr uint64_t kAhead = 16;
    constexpr uint64_t kRing = 2 * kAhead;  // a power of 2
    uint64_t mixes[kRing];
    const uint64_t count = static_cast<uint64_t>(n);
    auto hash = [&](uint64_t r) __attribute__((always_inline)) {
      const uint64_t mix = MixKey(static_cast<uint64_t>(keys[r]));
      mixes[r & (kRing - 1)] = mix;
      __builtin_prefetch(slots + (mix & mask));
    };
    for (uint64_t r = 0; r < std::min(count, kAhead); ++r) hash(r);
    int64_t u = 0;
    for (uint64_t r = 0; r < count; ++r) {
      if (r + kAhead < count) hash(r + kAhead);
      const int64_t key = keys[r];
      const uint64_t mix = mixes[r & (kRing - 1)];
      for (size_t slot = mix & mask;; slot = (slot + 1) & mask) {
        Slot& s = slots[slot];
        if ((s.tag >> 32) != generation) {  // a key met for the first time
          const int64_t j = u++;
          s = {key, (generation << 32) | static_cast<uint64_t>(j)};
          of_position[r] = static_cast<uint32_t>(j) | kFirst;
          on_new(distinct[j], key, mix);
          break;
        }
        if (s.key == key) {
          of_position[r] = static_cast<uint32_t>(s.tag & 0xffffffffu);
          break;
        }
      }
    }
    return u;
  }

  Distinct* distinct() { return distinct_.data(); }        // (n of the last Run)
  uint32_t* of_position() { return of_position_.data(); }  // (n of the last Run)

 private:
  struct Slot {
    int64_t key;
    uint64_t tag;
  };

  // Room for `n` positions and distinct keys (table load <= 1/2), empty.
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
    if (distinct_.size() < static_cast<size_t>(n)) distinct_.resize(n);
    if (of_position_.size() < static_cast<size_t>(n)) of_position_.resize(n);
  }

  std::unique_ptr<Slot[]> slots_;
  size_t capacity_ = 0;
  size_t mask_ = 0;
  uint64_t generation_ = 0;
  std::vector<Distinct> distinct_;
  std::vector<uint32_t> of_position_;
};

}  // namespace tf_hps

#endif  // TF_HPS_BASE_POSITION_DEDUP_H_
