// The 64-bit key mix shared by the hash-map partitions and the cache sets: a
// rotate-xor-multiply finaliser, so that sequential keys spread evenly.
#ifndef TF_HPS_BASE_KEY_HASH_H_
#define TF_HPS_BASE_KEY_HASH_H_

#include <cstdint>

// Functions marked TF_HPS_HOST_DEVICE compile for both the CPU and, under nvcc, the GPU.
#ifdef __CUDACC__
#define TF_HPS_HOST_DEVICE __host__ __device__
#else
#define TF_HPS_HOST_DEVICE
#endif

namespace tf_hps {

TF_HPS_HOST_DEVICE inline uint64_t MixKey(uint64_t v) {
  auto rotr = [](uint64_t x, int r) { return (x >> r) | (x << (64 - r)); };
  v ^= rotr(v, 25) ^ rotr(v, 50);
  v *= 0xA24BAED4963EE407ULL;
  v ^= rotr(v, 24) ^ rotr(v, 49);
  v *= 0x9FB21C651E98DF25ULL;
  return v ^ (v >> 28);
}

}  // namespace tf_hps

#endif  // TF_HPS_BASE_KEY_HASH_H_
