// How TfHpsSparseLookup combines the rows of one output row, in the order of
// TensorFlow's CPU kernels of tf.sparse.segment_{sum,mean,sqrt_n}, which
// tf.nn.embedding_lookup_sparse runs when it has no weights, so that both
// give the same float32 bits (float addition is not associative):
//
//   n == 1:  out = x0                                   (no scaling)
//   n >= 2:  a first group of g rows, g = n % 8, except 8 for n % 8 == 0 and
//            9 for n % 8 == 1, summed left to right and times a scale:
//              out = (((x0 + x1) + x2) + ... + x(g-1)) * scale
//            scale = 1 for sum; for n < 10, 1.0f / n (mean) or
//            1.0f / float(sqrt(double(n))) (sqrtn), else 1;
//            then each further group of 8, summed left to right first:
//              out = out + (((xk + xk+1) + ...) + xk+7)
//            and for n >= 10, out / float(n) (mean) or
//            out / float(sqrt(double(n))) (sqrtn).
//   n == 0:  zeros.
//
// Every element is independent, so any vector width gives these bits. The
// compiler must not contract a product and a sum into one FMA (the builds
// pass -ffp-contract=off; nvcc code uses this header's explicit forms).
// Header-only, so the GPU kernels can share it: ScaleFor and FirstGroupSize
// compile for the device too (ops/cuda/gpu_combine.cu, whose combine follows
// CombineRows element by element).
#ifndef TF_HPS_OPS_SPARSE_COMBINE_H_
#define TF_HPS_OPS_SPARSE_COMBINE_H_

#include <algorithm>
#include <cmath>
#include <cstdint>

#ifdef __CUDACC__
#define TF_HPS_HOST_DEVICE __host__ __device__
#else
#define TF_HPS_HOST_DEVICE
#endif

namespace tf_hps {

enum class Combiner { kSum, kMean, kSqrtn };

// The scale of the first group (applied to it alone) and the divisor applied
// at the end, for a row of n >= 2 keys.
struct CombineScale {
  float first_group = 1.0f;  // multiplies the first group's sum
  float divisor = 1.0f;      // divides the total when divide is set
  bool divide = false;
};

// float(sqrt(double(n))), correctly rounded on host and device alike.
TF_HPS_HOST_DEVICE inline float SqrtOfCount(int64_t n) {
#ifdef __CUDA_ARCH__
  return __double2float_rn(::sqrt(static_cast<double>(n)));
#else
  return static_cast<float>(std::sqrt(static_cast<double>(n)));
#endif
}

TF_HPS_HOST_DEVICE inline CombineScale ScaleFor(Combiner combiner, int64_t n) {
  CombineScale s;
  if (combiner == Combiner::kSum) return s;
  const float m = combiner == Combiner::kMean ? static_cast<float>(n) : SqrtOfCount(n);
  if (n < 10) {
#ifdef __CUDA_ARCH__
    s.first_group = __fdiv_rn(1.0f, m);
#else
    s.first_group = 1.0f / m;
#endif
  } else {
    s.divisor = m;
    s.divide = true;
  }
  return s;
}

// Size of the first group of a row of n >= 2 keys.
TF_HPS_HOST_DEVICE inline int64_t FirstGroupSize(int64_t n) {
  const int64_t r = n & 7;
  return r == 0 ? 8 : r == 1 ? 9 : r;
}

// Combines the rows row(0), ..., row(n-1) (each dim floats) into out, as the
// kernels above do. Row is callable: int64 position -> const float*.
template <class Row>
void CombineRows(Combiner combiner, int64_t n, int64_t dim, Row row, float* out) {
  if (n == 0) {
    for (int64_t d = 0; d < dim; ++d) out[d] = 0.0f;
    return;
  }
  if (n == 1) {
    const float* x = row(0);
    for (int64_t d = 0; d < dim; ++d) out[d] = x[d];
    return;
  }
  const CombineScale scale = ScaleFor(combiner, n);
  const int64_t first = FirstGroupSize(n);
  {
    const float* x0 = row(0);
    for (int64_t d = 0; d < dim; ++d) out[d] = x0[d];
    for (int64_t k = 1; k < first; ++k) {
      const float* x = row(k);
      for (int64_t d = 0; d < dim; ++d) out[d] += x[d];
    }
    if (scale.first_group != 1.0f)
      for (int64_t d = 0; d < dim; ++d) out[d] *= scale.first_group;
  }
  for (int64_t k = first; k < n; k += 8) {
    const float* x[8];
    for (int j = 0; j < 8; ++j) x[j] = row(k + j);
    for (int64_t d = 0; d < dim; ++d) {
      float group = x[0][d] + x[1][d];
      for (int j = 2; j < 8; ++j) group += x[j][d];
      out[d] += group;
    }
  }
  if (scale.divide)
    for (int64_t d = 0; d < dim; ++d) out[d] /= scale.divisor;
}


// Weighted rows and max_norm, in the order of the Eigen reductions behind TF's
// CPU kernels of tf.math.segment_sum and tf.clip_by_norm (the ops
// tf.nn.embedding_lookup_sparse runs with weights or max_norm). Their order
// depends on `lanes`, the float packet width TensorFlow was built with (8 for
// the x86 wheels, built for AVX); SparseLookupLayer measures it once per
// process against TF itself and uses TF's own ops where no width matches.
//
// segment_sum of n >= 2 rows t0..t(n-1): columns below v = dim / lanes * lanes
// go in packets; with n >= 16 four accumulators take rows k % 4 == 0..3 up to
// u = n / 4 * 4, are added as ((a0 + a1) + a2) + a3, then rows u.. follow;
// with n < 16, and for the columns from v on, one sum from 0 in row order.
// A single row is copied, no row gives zeros.
//
// The squared norm of one row of dim values (tf.reduce_sum over its last
// axis): four packet accumulators over blocks of 4 * lanes, added
// ((p0 + p1) + p2) + p3, further whole packets into p0, the rest one by one
// from 0 into s, then s + the packet folded in halves (p[i] + p[i + w/2],
// down to one value). Longer than lanes * 1024 values: split in two at a
// packet boundary (halves rounded up), each summed so, then added.

// The sum of the n squares x[i] * x[i], starting at flat index first.
inline float SquaredNormLikeTf(const float* x, int64_t n, int64_t first, int lanes) {
  if (n > static_cast<int64_t>(lanes) * 1024) {
    const int64_t split = lanes * ((first + (n + 1) / 2 + lanes - 1) / lanes);
    const int64_t left = std::min(split - first, n);
    float acc = 0.0f + SquaredNormLikeTf(x, left, first, lanes);
    if (left < n) acc = acc + SquaredNormLikeTf(x + left, n - left, split, lanes);
    return acc;
  }
  float p[4][16] = {};
  int64_t start = 0;
  if (n >= 4 * lanes) {
    const int64_t v4 = n / (4 * lanes) * (4 * lanes);
    for (int64_t j = 0; j < v4; j += 4 * lanes)
      for (int a = 0; a < 4; ++a)
        for (int l = 0; l < lanes; ++l) {
          const float e = x[j + a * lanes + l];
          p[a][l] = p[a][l] + e * e;
        }
    for (int a = 1; a < 4; ++a)
      for (int l = 0; l < lanes; ++l) p[0][l] = p[0][l] + p[a][l];
    start = v4;
  }
  if (start <= n - lanes) {
    const int64_t v = n / lanes * lanes;
    for (int64_t j = start; j < v; j += lanes)
      for (int l = 0; l < lanes; ++l) {
        const float e = x[j + l];
        p[0][l] = p[0][l] + e * e;
      }
    start = v;
  }
  float s = 0.0f;
  for (int64_t j = start; j < n; ++j) s = s + x[j] * x[j];
  for (int w = lanes / 2; w >= 1; w /= 2)
    for (int l = 0; l < w; ++l) p[0][l] = p[0][l] + p[0][l + w];
  return s + p[0][0];
}

// tf.clip_by_norm(x, c) of one row, in place: x * c / max(norm, c).
inline void ClipRowLikeTf(float* x, int64_t dim, float c, int lanes) {
  const float s = SquaredNormLikeTf(x, dim, 0, lanes);
  const float norm = s > 0.0f ? std::sqrt(s) : s;
  const float m = (std::isnan(norm) || std::isnan(c)) ? NAN : (norm > c ? norm : c);
  for (int64_t d = 0; d < dim; ++d) x[d] = (x[d] * c) / m;
}

// segment_sum of the rows row(k) * weight(k), k < n, into out (dim floats);
// scratch holds 3 * dim floats.
template <class Row, class Weight>
void WeightedSumLikeTf(int64_t n, int64_t dim, int lanes, Row row, Weight weight, float* out, float* scratch) {
  if (n == 0) {
    for (int64_t d = 0; d < dim; ++d) out[d] = 0.0f;
    return;
  }
  if (n == 1) {
    const float* x = row(0);
    const float w = weight(0);
    for (int64_t d = 0; d < dim; ++d) out[d] = x[d] * w;
    return;
  }
  for (int64_t d = 0; d < dim; ++d) out[d] = 0.0f;
  int64_t k = 0;
  if (n >= 16) {
    const int64_t v = dim / lanes * lanes;
    float* acc[4] = {out, scratch, scratch + dim, scratch + 2 * dim};
    for (int a = 1; a < 4; ++a)
      for (int64_t d = 0; d < v; ++d) acc[a][d] = 0.0f;
    const int64_t u = n / 4 * 4;
    for (; k < u; k += 4)
      for (int a = 0; a < 4; ++a) {
        const float* x = row(k + a);
        const float w = weight(k + a);
        float* dst = acc[a];
        for (int64_t d = 0; d < v; ++d) dst[d] = dst[d] + x[d] * w;
        for (int64_t d = v; d < dim; ++d) out[d] = out[d] + x[d] * w;
      }
    for (int a = 1; a < 4; ++a)
      for (int64_t d = 0; d < v; ++d) out[d] = out[d] + acc[a][d];
  }
  for (; k < n; ++k) {
    const float* x = row(k);
    const float w = weight(k);
    for (int64_t d = 0; d < dim; ++d) out[d] = out[d] + x[d] * w;
  }
}

// segment_sum of n scalars (one column: always one sum from 0, in order).
template <class Value>
float ScalarSumLikeTf(int64_t n, Value value) {
  if (n == 1) return value(0);
  float s = 0.0f;
  for (int64_t k = 0; k < n; ++k) s = s + value(k);
  return s;
}

}  // namespace tf_hps

#endif  // TF_HPS_OPS_SPARSE_COMBINE_H_
