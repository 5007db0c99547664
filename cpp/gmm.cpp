// genfast Gaussian-mixture CPU kernels: fused E-step (Mahalanobis terms, log determinants,
// log weights, log-sum-exp) and centred M-step statistics.
#include "gmm.hpp"

#include <genfast/simd.hpp>
#include <genfast/vmath.hpp>

#include <algorithm>
#include <cmath>
#include <limits>
#include <stdexcept>
#include <vector>

#include "blocked_sum.hpp"

namespace genfast::gmm {
namespace {

/// Points per batch of the M-step scatter: each accumulator is updated once per batch.
constexpr int kScatterBatch = 8;

/// E-step tile: `vectors` SIMD vectors of points, one point per lane, so that every
/// per-component step is a vector operation over points.
template <class T> struct Tile {
  using V = simd::vec_t<T>;
  static constexpr int lanes = simd::vector<T>::lanes;
  static constexpr int vectors = 8;
  static constexpr int points = lanes * vectors;
};

/// Checks weights and precision factors; returns each component's log w_k + log det P_k
/// - D/2 log(2 pi), the part of log w_k N(x | k) that does not depend on x.
template <class T>
std::vector<double> component_constants(const Shape& s, Covariance cov, const T* weights,
                                        const T* P) {
  std::vector<double> c(size_t(s.K));
  for (int64_t k = 0; k < s.K; ++k) {
    const auto fail = [&](Fault fault) {
      throw std::invalid_argument(fault_message(cov, k, fault, double(weights[k])));
    };
    if (!(weights[k] >= 0)) fail(Fault::negative_weight);
    switch (cov) {
      case Covariance::full:
      case Covariance::tied: {
        const T* Pk = P + (cov == Covariance::full ? k * s.D * s.D : 0);
        for (int64_t i = 0; i < s.D; ++i) {
          if (!(Pk[i * s.D + i] > 0)) fail(Fault::nonpositive_diagonal);
          for (int64_t j = 0; j < i; ++j)
            if (Pk[i * s.D + j] != 0) fail(Fault::not_upper_triangular);
        }
        break;
      }
      case Covariance::diag:
        for (int64_t d = 0; d < s.D; ++d)
          if (!(P[k * s.D + d] > 0)) fail(Fault::nonpositive_diagonal);
        break;
      case Covariance::spherical:
        if (!(P[k] > 0)) fail(Fault::nonpositive_diagonal);
        break;
    }
    c[size_t(k)] = component_constant(log_det_factor(cov, s.D, k, P), double(weights[k]), s.D);
  }
  return c;
}

/// ||(x - mu_k)^T P_k||^2 for the tile's points, one lane per point.
/// @param[in]  xt    [D][vectors] the tile's points, transposed
/// @param[out] diff  [D][vectors] scratch
/// @param[out] maha  [vectors]
template <class T>
void mahalanobis(const Shape& s, Covariance cov, int64_t k, const T* means, const T* P,
                 const simd::vec_t<T>* xt, simd::vec_t<T>* diff, simd::vec_t<T>* maha) {
  using V = simd::vec_t<T>;
  constexpr int R = Tile<T>::vectors;
  const T* mu = means + k * s.D;
  for (int r = 0; r < R; ++r) maha[r] = V{};
  switch (cov) {
    case Covariance::full:
    case Covariance::tied: {
      const T* Pk = P + (cov == Covariance::full ? k * s.D * s.D : 0);
      for (int64_t d = 0; d < s.D; ++d)
        for (int r = 0; r < R; ++r) diff[d * R + r] = xt[d * R + r] - mu[d];
      // y_j = sum_{d <= j} (x_d - mu_d) P[d][j] (P upper triangular); maha = sum_j y_j^2
      for (int64_t j = 0; j < s.D; ++j) {
        V y[R] = {};
        for (int64_t d = 0; d <= j; ++d) {
          const T p = Pk[d * s.D + j];
          for (int r = 0; r < R; ++r) y[r] += diff[d * R + r] * p;
        }
        for (int r = 0; r < R; ++r) maha[r] += y[r] * y[r];
      }
      break;
    }
    case Covariance::diag: {
      const T* p = P + k * s.D;
      // maha = sum_d ((x_d - mu_d) / sigma_d)^2
      for (int64_t d = 0; d < s.D; ++d)
        for (int r = 0; r < R; ++r) {
          const V t = (xt[d * R + r] - mu[d]) * p[d];
          maha[r] += t * t;
        }
      break;
    }
    case Covariance::spherical: {
      // maha = ||x - mu||^2 / sigma^2
      for (int64_t d = 0; d < s.D; ++d)
        for (int r = 0; r < R; ++r) {
          const V t = xt[d * R + r] - mu[d];
          maha[r] += t * t;
        }
      for (int r = 0; r < R; ++r) maha[r] *= P[k] * P[k];
      break;
    }
  }
}

}  // namespace

template <class T>
void log_resp(const Shape& s, Covariance cov, const T* X, const T* weights, const T* means,
              const T* prec_chol, T* log_prob, T* log_resp) {
  using V = simd::vec_t<T>;
  constexpr int L = Tile<T>::lanes, R = Tile<T>::vectors, P = Tile<T>::points;
  if (s.K < 1) throw std::invalid_argument("need at least one component");
  const std::vector<double> constants = component_constants(s, cov, weights, prec_chol);
  if (s.N == 0) return;
  const int64_t tiles = (s.N + P - 1) / P;
  const T neg_inf = -std::numeric_limits<T>::infinity();

#pragma omp parallel
  {
    std::vector<V> xt(size_t(s.D * R)), diff(size_t(s.D * R)), joint(size_t(s.K * R));
#pragma omp for schedule(dynamic)
    for (int64_t tile = 0; tile < tiles; ++tile) {
      const int64_t i0 = tile * P, n = std::min<int64_t>(P, s.N - i0);
      // Transpose the tile; a short last tile repeats its last point (results discarded).
      for (int p = 0; p < P; ++p) {
        const T* x = X + (i0 + std::min<int64_t>(p, n - 1)) * s.D;
        for (int64_t d = 0; d < s.D; ++d) xt[size_t(d * R + p / L)][p % L] = x[d];
      }
      // log w_k N(x | k) = constant_k - maha / 2
      for (int64_t k = 0; k < s.K; ++k) {
        V maha[R];
        mahalanobis<T>(s, cov, k, means, prec_chol, xt.data(), diff.data(), maha);
        for (int r = 0; r < R; ++r) joint[size_t(k * R + r)] = T(constants[size_t(k)]) - T(0.5) * maha[r];
      }
      // log p(x) = m + log sum_k exp(joint_k - m), m = max_k joint_k (lse_shift: 0 if all
      // are -inf).
      V lp[R];
      for (int r = 0; r < R; ++r) {
        V m = simd::broadcast<V>(neg_inf);
        for (int64_t k = 0; k < s.K; ++k) m = joint[size_t(k * R + r)] > m ? joint[size_t(k * R + r)] : m;
        m = lse_shift<T>(m);
        V sum{};
        for (int64_t k = 0; k < s.K; ++k) sum += vmath::exp_approx(joint[size_t(k * R + r)] - m);
        lp[r] = m + vmath::log_approx(sum);
      }
      for (int64_t p = 0; p < n; ++p) {
        const T lpp = lp[p / L][p % L];
        log_prob[i0 + p] = lpp;
        if (log_resp) {
          T* out = log_resp + (i0 + p) * s.K;
          for (int64_t k = 0; k < s.K; ++k) out[k] = log_responsibility(joint[size_t(k * R + p / L)][p % L], lpp);
        }
      }
    }
  }
}

template <class T>
void suff_stats(const Shape& s, Covariance cov, const T* X, const T* resp, bool resp_is_log,
                T* nk, T* sums, T* scatter) {
  using A = accumulate_t<T>;
  using VA = simd::vec_t<A>;
  constexpr int LA = simd::vector<A>::lanes;
  const int64_t K = s.K, D = s.D;
  // Components run across SIMD lanes (r_n is contiguous over k): KV vectors cover K, and
  // padding lanes carry r = 0, so every update below is one vector operation over components.
  const int64_t KV = (K + LA - 1) / LA;
  const A pad = resp_is_log ? -std::numeric_limits<A>::infinity() : A(0);  // r = 0 either way
  // r_i as KV vectors: a contiguous (vectorisable) widening copy of row i into a padded
  // scratch row, then whole-vector loads.
  const auto load_resp = [&](int64_t i, A* scratch, VA* r) {
    const T* row = resp + i * K;
    for (int64_t k = 0; k < K; ++k) scratch[k] = A(row[k]);
    for (int64_t k = K; k < KV * LA; ++k) scratch[k] = pad;
    for (int64_t v = 0; v < KV; ++v) {
      r[v] = simd::load<VA>(scratch + v * LA);
      if (resp_is_log) r[v] = vmath::exp_approx(r[v]);
    }
  };
  const auto lane = [&](const VA* v, int64_t k) { return v[k / LA][k % LA]; };
  int64_t unused = 0;

  // Pass 1: N_k = sum_n r_nk (row[0, KV)) and sums_dk = sum_n r_nk x_nd (row[KV + d KV + v]).
  const auto first = blocked_sum<VA>(1, s.N, KV + D * KV, [&](int64_t, int64_t i0, int64_t i1, VA* acc) {
    std::vector<VA> r(static_cast<size_t>(KV));
    std::vector<A> scratch(static_cast<size_t>(KV * LA));
    for (int64_t i = i0; i < i1; ++i) {
      load_resp(i, scratch.data(), r.data());
      const T* x = X + i * D;
      for (int64_t v = 0; v < KV; ++v) acc[v] += r[size_t(v)];
      for (int64_t d = 0; d < D; ++d) {
        const A xd = A(x[d]);
        for (int64_t v = 0; v < KV; ++v) acc[KV + d * KV + v] += r[size_t(v)] * xd;
      }
    }
    return int64_t(0);
  }, unused);
  // mu_dk = sums_dk / (N_k + 10 eps), kept transposed: muT[d KV + v] holds mu_d of KV lanes.
  std::vector<VA> muT(size_t(D * KV));
  for (int64_t k = 0; k < K; ++k) {
    const A n = lane(first.data(), k);
    nk[k] = T(n);
    for (int64_t d = 0; d < D; ++d) {
      const A sum = lane(&first[size_t(KV + d * KV)], k);
      sums[k * D + d] = T(sum);
      muT[size_t(d * KV + k / LA)][k % LA] = sum / (n + empty_component_guard());
    }
  }

  // Pass 2: the scatter about mu_k. full/tied accumulate the upper triangle (a <= b) packed
  // row by row, diag the D diagonal terms, spherical their sum; tied sums over k at the end.
  const bool matrix = cov == Covariance::full || cov == Covariance::tied;
  const int64_t terms = matrix ? D * (D + 1) / 2 : cov == Covariance::diag ? D : 1;
  // full/tied: S_ab += sum_p r_p (x_pa - mu_a)(x_pb - mu_b) for b >= a, over batches of
  // points: diff = x - mu_k and rdiff = r diff are staged for the batch, the batch's rdiff_a
  // stay in registers across the b loop, and each accumulator is loaded and stored once per
  // batch instead of once per point.
  const auto scatter_matrix = [&](int64_t i0, int64_t i1, VA* acc) {
    std::vector<VA> r(static_cast<size_t>(KV));
    std::vector<A> scratch(static_cast<size_t>(KV * LA));
    std::vector<VA> diff(static_cast<size_t>(kScatterBatch * D * KV));
    std::vector<VA> rdiff(static_cast<size_t>(kScatterBatch * D * KV));
    for (int64_t i = i0; i < i1; i += kScatterBatch) {
      const int64_t nb = std::min<int64_t>(kScatterBatch, i1 - i);
      std::fill(diff.begin() + nb * D * KV, diff.end(), VA{});  // a short last batch
      std::fill(rdiff.begin() + nb * D * KV, rdiff.end(), VA{});
      for (int64_t p = 0; p < nb; ++p) {
        load_resp(i + p, scratch.data(), r.data());
        const T* x = X + (i + p) * D;
        for (int64_t d = 0; d < D; ++d)
          for (int64_t v = 0; v < KV; ++v) {
            const size_t at = size_t((p * D + d) * KV + v);
            diff[at] = A(x[d]) - muT[size_t(d * KV + v)];
            rdiff[at] = r[size_t(v)] * diff[at];
          }
      }
      for (int64_t a = 0, row_start = 0; a < D; row_start += D - a, ++a)
        for (int64_t v = 0; v < KV; ++v) {
          VA rd[kScatterBatch];
          for (int p = 0; p < kScatterBatch; ++p) rd[p] = rdiff[size_t((p * D + a) * KV + v)];
          for (int64_t b = a; b < D; ++b) {
            VA sum = acc[(row_start + b - a) * KV + v];
            for (int p = 0; p < kScatterBatch; ++p) sum += rd[p] * diff[size_t((p * D + b) * KV + v)];
            acc[(row_start + b - a) * KV + v] = sum;
          }
        }
    }
  };
  // diag: r (x_d - mu_d)^2 per feature; spherical: the same summed over features.
  const auto scatter_diagonal = [&](int64_t i0, int64_t i1, VA* acc) {
    std::vector<VA> r(static_cast<size_t>(KV));
    std::vector<A> scratch(static_cast<size_t>(KV * LA));
    for (int64_t i = i0; i < i1; ++i) {
      load_resp(i, scratch.data(), r.data());
      const T* x = X + i * D;
      for (int64_t d = 0; d < D; ++d)
        for (int64_t v = 0; v < KV; ++v) {
          const VA t = A(x[d]) - muT[size_t(d * KV + v)];
          acc[(cov == Covariance::diag ? d * KV : 0) + v] += r[size_t(v)] * t * t;
        }
    }
  };
  const auto second = blocked_sum<VA>(1, s.N, terms * KV, [&](int64_t, int64_t i0, int64_t i1, VA* acc) {
    if (matrix)
      scatter_matrix(i0, i1, acc);
    else
      scatter_diagonal(i0, i1, acc);
    return int64_t(0);
  }, unused);

  if (matrix) {
    std::vector<A> upper(static_cast<size_t>(terms));  // the packed upper triangle of one output matrix
    for (int64_t m = 0; m < (cov == Covariance::full ? K : 1); ++m) {
      for (int64_t e = 0; e < terms; ++e) {
        A value = 0;  // tied: the components' scatters added in k order
        for (int64_t k = (cov == Covariance::full ? m : 0); k < (cov == Covariance::full ? m + 1 : K); ++k)
          value += lane(&second[size_t(e * KV)], k);
        upper[size_t(e)] = value;
      }
      for (int64_t a = 0, e = 0; a < D; ++a)
        for (int64_t b = a; b < D; ++b, ++e)
          scatter[m * D * D + a * D + b] = scatter[m * D * D + b * D + a] = T(upper[size_t(e)]);
    }
  } else {
    for (int64_t k = 0; k < K; ++k)
      for (int64_t t = 0; t < terms; ++t) scatter[k * terms + t] = T(lane(&second[size_t(t * KV)], k));
  }
}

#define GENFAST_INSTANTIATE(T)                                                                \
  template void log_resp<T>(const Shape&, Covariance, const T*, const T*, const T*, const T*, \
                            T*, T*);                                                          \
  template void suff_stats<T>(const Shape&, Covariance, const T*, const T*, bool, T*, T*, T*);
GENFAST_INSTANTIATE(float)
GENFAST_INSTANTIATE(double)
#undef GENFAST_INSTANTIATE

}  // namespace genfast::gmm
