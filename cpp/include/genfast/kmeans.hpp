// genfast k-means: the per-element math shared by the CPU (cpp/kmeans.cpp) and CUDA
// (cuda/kmeans.cu) kernels, so CPU tests exercise the same formulas the GPU runs.
#pragma once

#include <genfast/common.hpp>

#include <cmath>
#include <limits>

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
  // Pairwise combination of the partial sums, in a fixed order: (0+4 + 2+6) + (1+5 + 3+7).
  // Written out so that the CPU keeps it in registers (a vectorised loop over part[] read the
  // tail's scalar stores back as one vector: a store-forwarding stall on every point).
  const A q0 = part[0] + part[4], q1 = part[1] + part[5];
  const A q2 = part[2] + part[6], q3 = part[3] + part[7];
  return T((q0 + q2) + (q1 + q3));
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

// ---- near ties of the rank score ---------------------------------------------------------
// The kernels rank centres by rank_score, whose rounding error grows with ||x|| and ||c||,
// not with ||x-c||: in float32 two centres whose true distances differ by less than that
// error can swap. A point whose runner-up score lies within the error bound of its best is
// therefore re-ranked by exact_sq_dist (nearest_exact); the bound is rarely reached, so the
// common case keeps the fast expanded form.

/// Bound on |computed - true| rank score of any centre for one point, for any order of
/// summation of the D products and the norm (as long as each step rounds once to T):
/// gamma_{D+2} (||c||^2 + 2 ||x|| ||c||) with gamma_n = n u / (1 - n u), u = eps(T) / 2,
/// taking the largest centre norm so that one bound covers every centre (Cauchy-Schwarz:
/// sum_d |x_d c_d| <= ||x|| ||c||). ||x|| is bounded by ||x - c_best|| + ||c_best|| from the
/// winner's exact distance, which the kernels compute anyway (summing ||x||^2 would cost a
/// serial O(D) chain per point). +inf when n u >= 1/2 (every point is re-ranked).
/// @param[in] best_sq_dist exact_sq_dist of the point to the best-scoring centre
/// @param[in] max_c_norm   largest ||c|| over the centres of the problem
template <class T>
GENFAST_HD accumulate_t<T> rank_score_error(T best_sq_dist, accumulate_t<T> max_c_norm, int64_t D) {
  using A = accumulate_t<T>;
  const A x_norm = std::sqrt(A(best_sq_dist)) + max_c_norm;
  const A u = A(std::numeric_limits<T>::epsilon()) / 2;
  const A nu = A(D + 2) * u;
  if (!(nu < A(0.5))) return std::numeric_limits<A>::infinity();
  return nu / (1 - nu) * max_c_norm * (max_c_norm + 2 * x_norm);
}

/// Whether the runner-up score may belong to a truly nearer centre than the best one: both
/// true scores lie within `error` of the computed ones, so a gap of up to 2 error is a tie.
template <class T>
GENFAST_HD bool near_tie(T best_score, T runner_up_score, accumulate_t<T> error) {
  using A = accumulate_t<T>;
  return A(runner_up_score) - A(best_score) <= 2 * error;
}

/// Nearest of K centres by exact_sq_dist, lowest index on ties; writes that distance.
/// Re-ranking all K (rather than only the near-tied candidates) gives the same label: a centre
/// outside the tie window is farther than the best by more than exact_sq_dist's rounding.
/// @param[in]  x       [D] the point
/// @param[in]  C       [K, D] the centres of its problem
/// @param[out] sq_dist squared distance to the returned centre
template <class T>
GENFAST_HD int64_t nearest_exact(const T* x, const T* C, int64_t K, int64_t D, T* sq_dist) {
  int64_t best_k = 0;
  T best = exact_sq_dist(x, C, D);
  for (int64_t k = 1; k < K; ++k) {
    const T d = exact_sq_dist(x, C + k * D, D);
    if (d < best) {
      best = d;
      best_k = k;
    }
  }
  *sq_dist = best;
  return best_k;
}

}  // namespace genfast::kmeans
