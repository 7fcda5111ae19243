#include "core/unique_keys.h"

#include <algorithm>

#include "core/key_hash.h"
#include "core/scratch.h"

namespace tf_hps {

void Dedup(const int64_t* keys, int64_t n, UniqueKeys* out) {
  size_t capacity = 16;
  while (capacity < static_cast<size_t>(2 * n)) capacity <<= 1;
  const size_t mask = capacity - 1;
  thread_local ScratchBuffer<int64_t> scratch;
  int64_t* slot = scratch.Get(capacity);  // index into out->keys, or -1
  std::fill_n(slot, capacity, -1);
  out->keys.clear();
  out->keys.reserve(n);
  out->index.resize(n);
  for (int64_t i = 0; i < n; ++i) {
    size_t h = MixKey(static_cast<uint64_t>(keys[i])) & mask;
    while (slot[h] >= 0 && out->keys[slot[h]] != keys[i]) h = (h + 1) & mask;
    if (slot[h] < 0) {
      slot[h] = static_cast<int64_t>(out->keys.size());
      out->keys.push_back(keys[i]);
    }
    out->index[i] = slot[h];
  }
}

}  // namespace tf_hps
