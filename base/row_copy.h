// Copies of embedding rows into a lookup's output, shared by L1 and the
// in-process VDB path. Short rows (most embedding widths) are copied inline,
// not by a call to memcpy per position. Rows written into a large output are
// not read again soon (they are written once, repeats copy from the source
// row), so there they go around the CPU caches: non-temporal stores skip the
// read of each output line that a plain store makes, and leave the caches to
// the hot rows. Streamed rows need StreamFence() before the output is handed
// on (non-temporal stores are weakly ordered).
#ifndef TF_HPS_BASE_ROW_COPY_H_
#define TF_HPS_BASE_ROW_COPY_H_

#include <cstddef>
#include <cstdint>
#include <cstring>

#ifdef __SSE2__
#include <immintrin.h>
#endif

namespace tf_hps {

// Whether rows of row_bytes can be streamed into `dest` (16-byte aligned rows).
inline bool CanStreamRows(const float* dest, size_t row_bytes) {
#ifdef __SSE2__
  return row_bytes % 16 == 0 && reinterpret_cast<uintptr_t>(dest) % 16 == 0;
#else
  (void)dest;
  (void)row_bytes;
  return false;
#endif
}

// Copies one row of dim floats (row_bytes = dim * 4); stream only where CanStreamRows.
inline void CopyRow(float* dest, const float* source, int64_t dim, size_t row_bytes, bool stream) {
#ifdef __SSE2__
  if (stream) {
    for (int64_t k = 0; k < dim; k += 4) _mm_stream_ps(dest + k, _mm_loadu_ps(source + k));
    return;
  }
  if (row_bytes % 16 == 0 && row_bytes <= 256) {
    for (int64_t k = 0; k < dim; k += 4) _mm_storeu_ps(dest + k, _mm_loadu_ps(source + k));
    return;
  }
#else
  (void)dim;
  (void)stream;
#endif
  std::memcpy(dest, source, row_bytes);
}

// Starts loading a row of row_bytes into the CPU caches, a prefetch per line.
inline void PrefetchRow(const float* row, size_t row_bytes) {
  const char* bytes = reinterpret_cast<const char*>(row);
  for (size_t b = 0; b < row_bytes; b += 64) __builtin_prefetch(bytes + b);
}

inline void StreamFence() {
#ifdef __SSE2__
  _mm_sfence();
#endif
}

}  // namespace tf_hps

#endif  // TF_HPS_BASE_ROW_COPY_H_
