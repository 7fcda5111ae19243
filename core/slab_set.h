// The embedding cache's set logic, written once for the CPU cache
// (core/embedding_cache.cc) and the GPU cache (ops/cuda/gpu_cache.cu).
//
// Layout. The cache is `num_sets` sets; a set is kSlabsPerSet slabs of kLanes
// slots, so kWays = 64 ways. Way w of a set is slab w / 32, lane w % 32. Each
// slot has a key and an LRU stamp; stamp 0 means empty, so no key value is
// reserved and every int64 key (-1 and INT64_MAX included) can be cached.
// Callers sign-extend int32 keys to int64.
//
// Placement. MixKey(key) picks the set (its high bits: mix * num_sets / 2^64,
// a multiply instead of a division) and the slab probed first (bit 0); the
// probe then goes on to the other slab.
//
// Invariant. An insert takes the first empty way in probe order, and ways
// are never emptied again, so a key sits in its second slab only if its
// first slab was full when it went in, and still is. A probe can therefore
// stop at the first slab that holds an empty way: the key is not cached.
//
// Replacement. A key that is absent from a full set evicts the way with the
// smallest stamp; ties go to the way that comes first in probe order. Stamps
// come from a clock that the cache advances once per batch (one Query or one
// Replace call), so all keys of a batch are equally recent.
//
// Lanes. Every step that looks at a whole slab goes through a lane adapter:
// WarpLanes runs it on the 32 threads of a CUDA warp (one slot per lane, with
// __ballot_sync and __shfl_xor_sync); HostLanes runs the same step on the CPU
// by looping over the 32 lanes. Both give bit-identical answers, so the CPU
// cache is a faithful host execution of the GPU cache, and host tests of it
// test the GPU's set logic too.
//
// Locking is the caller's job: every function here expects the set locked.
#ifndef TF_HPS_CORE_SLAB_SET_H_
#define TF_HPS_CORE_SLAB_SET_H_

#include <cstdint>

#include "base/key_hash.h"

#if !defined(__CUDA_ARCH__) && defined(__SSE2__)
#define TF_HPS_SLAB_SSE2 1
#include <emmintrin.h>
#endif

namespace tf_hps {
namespace slab {

constexpr int kLanes = 32;        // slots per slab = threads per warp
constexpr int kSlabsPerSet = 2;
constexpr int kWays = kLanes * kSlabsPerSet;
constexpr uint32_t kAllLanes = 0xffffffffu;

// Where a key lives: its set, and the slab its probe starts with.
struct Home {
  int64_t set;
  int first_slab;
};

// The home of the key whose MixKey is `mix`.
TF_HPS_HOST_DEVICE inline Home HomeOfMix(uint64_t mix, int64_t num_sets) {
#ifdef __CUDA_ARCH__
  const uint64_t set = __umul64hi(mix, static_cast<uint64_t>(num_sets));
#else
  const uint64_t set =
      static_cast<uint64_t>((static_cast<unsigned __int128>(mix) * static_cast<uint64_t>(num_sets)) >> 64);
#endif
  return {static_cast<int64_t>(set), static_cast<int>(mix & 1)};
}

TF_HPS_HOST_DEVICE inline Home HomeOf(int64_t key, int64_t num_sets) {
  return HomeOfMix(MixKey(static_cast<uint64_t>(key)), num_sets);
}

TF_HPS_HOST_DEVICE inline int LowestLane(uint32_t mask) {  // mask != 0
#ifdef __CUDA_ARCH__
  return __ffs(mask) - 1;
#else
  return __builtin_ctz(mask);
#endif
}

// An eviction candidate: a way's stamp and its position in probe order
// (probe step * kLanes + lane). The smaller (stamp, order) loses its way.
struct Candidate {
  uint64_t stamp;
  int order;
};

TF_HPS_HOST_DEVICE inline bool EvictsFirst(Candidate a, Candidate b) {
  return a.stamp < b.stamp || (a.stamp == b.stamp && a.order < b.order);
}

// ---------------------------------------------------------------------------
// Lane adapters. Each operation takes the slab's lane values (or a function
// of the lane) and answers for the whole slab, identically on every lane.

// CPU: one thread plays all 32 lanes.
struct HostLanes {
  template <class Pred>
  uint32_t Ballot(Pred pred) const {
    uint32_t mask = 0;
    for (int lane = 0; lane < kLanes; ++lane) mask |= static_cast<uint32_t>(pred(lane) ? 1 : 0) << lane;
    return mask;
  }

  // Lanes whose slot holds `key` (occupied and equal).
  uint32_t MatchMask(const int64_t* keys, const uint64_t* stamps, int64_t key) const {
    uint32_t equal = EqualMask(keys, key);
    uint32_t hit = 0;
    while (equal != 0) {  // almost always 0 or 1 lane: check stamps only there
      const int lane = LowestLane(equal);
      equal &= equal - 1;
      if (stamps[lane] != 0) hit |= 1u << lane;
    }
    return hit;
  }

  // Lanes whose slot is empty.
  uint32_t EmptyMask(const uint64_t* stamps) const {
    return EqualMask(reinterpret_cast<const int64_t*>(stamps), 0);
  }

  // The smallest candidate(lane) over the lanes.
  template <class F>
  Candidate MinCandidate(F candidate) const {
    Candidate best = candidate(0);
    for (int lane = 1; lane < kLanes; ++lane) {
      const Candidate c = candidate(lane);
      if (EvictsFirst(c, best)) best = c;
    }
    return best;
  }

 private:
  // Lanes whose key equals `key`, whatever their stamp (and, with stamps and
  // 0, the empty lanes): the hot compare of a lookup, 16 SSE2 compares of
  // two slots each.
  static uint32_t EqualMask(const int64_t* keys, int64_t key) {
#ifdef TF_HPS_SLAB_SSE2
    const __m128i want = _mm_set1_epi64x(key);
    uint32_t mask = 0;
    for (int lane = 0; lane < kLanes; lane += 2) {
      const __m128i got = _mm_loadu_si128(reinterpret_cast<const __m128i*>(keys + lane));
      const __m128i eq32 = _mm_cmpeq_epi32(got, want);  // both 32-bit halves must match
      const __m128i eq64 = _mm_and_si128(eq32, _mm_shuffle_epi32(eq32, _MM_SHUFFLE(2, 3, 0, 1)));
      mask |= static_cast<uint32_t>(_mm_movemask_pd(_mm_castsi128_pd(eq64))) << lane;
    }
    return mask;
#else
    uint32_t mask = 0;
    for (int lane = 0; lane < kLanes; ++lane) mask |= static_cast<uint32_t>(keys[lane] == key) << lane;
    return mask;
#endif
  }
};

#ifdef __CUDACC__
// GPU: the 32 threads of a warp, all active, each holding lane `lane`. Slot
// loads go to L2 (__ldcg): other multiprocessors write the slots.
struct WarpLanes {
  int lane;

  static __device__ int64_t Load(const int64_t* p) { return __ldcg(reinterpret_cast<const long long*>(p)); }
  static __device__ uint64_t Load(const uint64_t* p) {
    return __ldcg(reinterpret_cast<const unsigned long long*>(p));
  }

  template <class Pred>
  __device__ uint32_t Ballot(Pred pred) const {
    return __ballot_sync(kAllLanes, pred(lane));
  }

  __device__ uint32_t MatchMask(const int64_t* keys, const uint64_t* stamps, int64_t key) const {
    return Ballot([&](int l) { return Load(keys + l) == key && Load(stamps + l) != 0; });
  }

  __device__ uint32_t EmptyMask(const uint64_t* stamps) const {
    return Ballot([&](int l) { return Load(stamps + l) == 0; });
  }

  template <class F>
  __device__ Candidate MinCandidate(F candidate) const {
    Candidate best = candidate(lane);
    for (int offset = kLanes / 2; offset > 0; offset /= 2) {  // butterfly: every lane ends with the minimum
      const Candidate other{__shfl_xor_sync(kAllLanes, best.stamp, offset),
                            __shfl_xor_sync(kAllLanes, best.order, offset)};
      if (EvictsFirst(other, best)) best = other;
    }
    return best;
  }
};
#endif  // __CUDACC__

// ---------------------------------------------------------------------------
// Set operations. `keys` and `stamps` point at one set's kWays slots.

// The way that holds `key`, or -1.
template <class Lanes>
TF_HPS_HOST_DEVICE inline int FindWay(const Lanes& lanes, const int64_t* keys, const uint64_t* stamps,
                                      int first_slab, int64_t key) {
  for (int step = 0; step < kSlabsPerSet; ++step) {
    const int base = (first_slab ^ step) * kLanes;
    const uint32_t hit = lanes.MatchMask(keys + base, stamps + base, key);
    if (hit != 0) return base + LowestLane(hit);
    if (lanes.EmptyMask(stamps + base) != 0) return -1;  // see the invariant above
  }
  return -1;
}

// The way a full set evicts: the smallest stamp, ties to the way that comes
// first in probe order.
template <class Lanes>
TF_HPS_HOST_DEVICE inline int LeastRecentWay(const Lanes& lanes, const uint64_t* stamps, int first_slab) {
  static_assert(kSlabsPerSet == 2, "the eviction scan below looks at two slabs per lane");
  const int first = first_slab * kLanes, second = (first_slab ^ 1) * kLanes;
  const Candidate victim = lanes.MinCandidate([&](int lane) {
    const Candidate a{stamps[first + lane], lane};
    const Candidate b{stamps[second + lane], kLanes + lane};
    return EvictsFirst(b, a) ? b : a;
  });
  return victim.order < kLanes ? first + victim.order : second + victim.order - kLanes;
}

// Where Replace puts `key`: its own way if cached (*cached = true), else the
// first empty way in probe order, else the least recently used way.
template <class Lanes>
TF_HPS_HOST_DEVICE inline int ChooseWay(const Lanes& lanes, const int64_t* keys, const uint64_t* stamps,
                                        int first_slab, int64_t key, bool* cached) {
  *cached = false;
  for (int step = 0; step < kSlabsPerSet; ++step) {
    const int base = (first_slab ^ step) * kLanes;
    const uint32_t hit = lanes.MatchMask(keys + base, stamps + base, key);
    if (hit != 0) {
      *cached = true;
      return base + LowestLane(hit);
    }
    const uint32_t empty = lanes.EmptyMask(stamps + base);
    if (empty != 0) return base + LowestLane(empty);
  }
  return LeastRecentWay(lanes, stamps, first_slab);
}

// Marks a way as used by the batch with `stamp`; stamps never go back, so a
// late batch cannot make a way look older than an earlier batch left it.
TF_HPS_HOST_DEVICE inline void Touch(uint64_t* slot_stamp, uint64_t stamp) {
  if (*slot_stamp < stamp) *slot_stamp = stamp;
}

}  // namespace slab
}  // namespace tf_hps

#endif  // TF_HPS_CORE_SLAB_SET_H_
