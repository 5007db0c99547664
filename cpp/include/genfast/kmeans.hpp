// genfast k-means: the per-element math shared by the CPU (cpp/kmeans.cpp) and CUDA
// (cuda/kmeans.cu) kernels, so CPU tests exercise the same formulas the GPU runs.
#pragma once

#include <genfast/common.hpp>

namespace genfast::kmeans {

/// Shapes of one (possibly batched) k-means problem: B independent problems of N points
/// and K centres in D dimensions. The same struct describes CPU and CUDA launches.
struct Shape {
  int64_t B = 1;  ///< number of independent problems (leading batch dimension)
  int64_t N = 0;  ///< points per problem
  int64_t K = 0;  ///< centres (clusters) per problem
  int64_t D = 0;  ///< features
};

/// Ordering of candidate centres for the nearest-centre search: a smaller score wins, and
/// equal scores break to the lower centre index (the same rule on every backend).
template <class T>
GENFAST_HD bool closer(T score, int64_t k, T best_score, int64_t best_k) {
  return score < best_score || (score == best_score && k < best_k);
}

/// Score used to rank centres for one point: ||x-c||^2 - ||x||^2 = ||c||^2 - 2 x.c
/// (the ||x||^2 term is the same for every centre, so the argmin never needs it).
/// The CUDA kernel evaluates it as written; the CPU kernel accumulates the same quantity as
/// ||c||^2 + sum_d x_d (-2 c_d) over panels pre-scaled by -2 (exact), saving the epilogue.
template <class T>
GENFAST_HD T rank_score(T center_sq_norm, T dot) {
  return center_sq_norm - 2 * dot;
}

/// Squared distance of the winning centre, summed directly as sum_d (x_d - c_d)^2 in the
/// accumulation type. The expanded ||x||^2 - 2 x.c + ||c||^2 cancels catastrophically in
/// float32 when x is near c and far from the origin; this costs O(D) per point, not O(KD).
/// Eight interleaved partial sums (d mod 8) keep the CPU loop vectorisable and give the
/// same rounding on every backend.
template <class T>
GENFAST_HD T exact_sq_dist(const T* x, const T* c, int64_t D) {
  using A = accumulate_t<T>;
  constexpr int kParts = 8;
  A part[kParts] = {};
  int64_t d = 0;
  for (; d + kParts <= D; d += kParts) {
    for (int j = 0; j < kParts; ++j) {
      const A diff = A(x[d + j]) - A(c[d + j]);
      part[j] += diff * diff;
    }
  }
  // Tail with compile-time indices, so part[] stays in registers on the GPU too.
  for (int j = 0; j < kParts; ++j) {
    if (d + j < D) {
      const A diff = A(x[d + j]) - A(c[d + j]);
      part[j] += diff * diff;
    }
  }
  // Pairwise combination of the partial sums, in a fixed order.
  for (int width = kParts / 2; width >= 1; width /= 2)
    for (int j = 0; j < width; ++j) part[j] += part[j + width];
  return T(part[0]);
}

/// One term of a squared norm: s + c_d^2 with c_d widened to the accumulation type.
/// sq_norm is a left fold of this step, so a kernel that streams c feature by feature (the
/// CUDA assign kernel) builds bit-for-bit the same sum.
template <class T>
GENFAST_HD accumulate_t<T> add_sq(accumulate_t<T> s, T c_d) {
  return s + accumulate_t<T>(c_d) * accumulate_t<T>(c_d);
}

/// ||c||^2 in the accumulation type, rounded once to T.
template <class T>
GENFAST_HD T sq_norm(const T* c, int64_t D) {
  accumulate_t<T> s = 0;
  for (int64_t d = 0; d < D; ++d) s = add_sq(s, c[d]);
  return T(s);
}

}  // namespace genfast::kmeans
