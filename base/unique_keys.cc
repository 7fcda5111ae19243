#include "base/unique_keys.h"

#include <algorithm>
#include <memory>

#include "base/key_hash.h"

namespace tf_hps {
namespace {

// This thread's open-addressing table. A slot holds (generation << 32 |
// index into the distinct keys); a slot of an older generation is empty, so
// a call starts by bumping the generation instead of clearing the table.
class DedupTable {
 public:
  // A table of at least `capacity` slots (a power of two), empty.
  uint64_t* Start(size_t capacity, uint64_t* generation) {
    if (capacity > capacity_ || generation_ == UINT32_MAX) {
      capacity_ = std::max(capacity, capacity_);
      slots_.reset(new uint64_t[capacity_]);
      std::fill_n(slots_.get(), capacity_, 0);
      generation_ = 0;
    }
    *generation = ++generation_;
    return slots_.get();
  }

 private:
  std::unique_ptr<uint64_t[]> slots_;
  size_t capacity_ = 0;
  uint64_t generation_ = 0;
};

}  // namespace

void Dedup(const int64_t* keys, int64_t n, UniqueKeys* out) {
  size_t capacity = 16;
  while (capacity < static_cast<size_t>(2 * n)) capacity <<= 1;
  const size_t mask = capacity - 1;
  thread_local DedupTable table;
  uint64_t generation;
  uint64_t* slot = table.Start(capacity, &generation);
  const uint64_t tag = generation << 32;
  out->keys.clear();
  out->keys.reserve(n);
  out->index.resize(n);
  for (int64_t i = 0; i < n; ++i) {
    size_t h = MixKey(static_cast<uint64_t>(keys[i])) & mask;
    int64_t j;
    for (;; h = (h + 1) & mask) {
      if ((slot[h] >> 32) != generation) {  // empty: a new key
        j = static_cast<int64_t>(out->keys.size());
        slot[h] = tag | static_cast<uint64_t>(j);
        out->keys.push_back(keys[i]);
        break;
      }
      j = static_cast<int64_t>(slot[h] & 0xffffffffu);
      if (out->keys[j] == keys[i]) break;
    }
    out->index[i] = j;
  }
}

}  // namespace tf_hps
