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
// Header-only, so the GPU kernels can share it.
#ifndef TF_HPS_OPS_SPARSE_COMBINE_H_
#define TF_HPS_OPS_SPARSE_COMBINE_H_

#include <cmath>
#include <cstdint>

namespace tf_hps {

enum class Combiner { kSum, kMean, kSqrtn };

// The scale of the first group (applied to it alone) and the divisor applied
// at the end, for a row of n >= 2 keys.
struct CombineScale {
  float first_group = 1.0f;  // multiplies the first group's sum
  float divisor = 1.0f;      // divides the total when divide is set
  bool divide = false;
};

inline CombineScale ScaleFor(Combiner combiner, int64_t n) {
  CombineScale s;
  if (combiner == Combiner::kSum) return s;
  const float m = combiner == Combiner::kMean ? static_cast<float>(n)
                                              : static_cast<float>(std::sqrt(static_cast<double>(n)));
  if (n < 10) {
    s.first_group = 1.0f / m;
  } else {
    s.divisor = m;
    s.divide = true;
  }
  return s;
}

// Size of the first group of a row of n >= 2 keys.
inline int64_t FirstGroupSize(int64_t n) {
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

}  // namespace tf_hps

#endif  // TF_HPS_OPS_SPARSE_COMBINE_H_
