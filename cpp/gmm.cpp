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
#include "interrupt.hpp"

namespace genfast::gmm {
namespace {

/// Points per batch of the M-step scatter: each accumulator is updated once per batch.
constexpr int kScatterBatch = 8;

/// Register tile of the fused EM step's scatter update: kRankRows rows of the scatter times
/// up to kRankVectors vectors of columns (8 accumulators; every point loads 2 vectors and
/// broadcasts 4 scalars for 8 FMAs).
constexpr int kRankRows = 4;
constexpr int kRankVectors = 2;

/// Independent partial sums in the M-step's loops over a tile's points (P is a multiple).
constexpr int kChains = 4;

/// The kChains partial sums added in a fixed order.
template <class V> V fold(const V* partial) { return (partial[0] + partial[1]) + (partial[2] + partial[3]); }

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

/// The means transposed and zero-padded to whole tiles, [D][K rounded up to the tile's
/// points], so that a tile's whitened means (EStepTile, tied) are vector operations.
template <class T>
std::vector<T> transposed_means(const Shape& s, const T* means) {
  const int64_t KP = (s.K + Tile<T>::points - 1) / Tile<T>::points * Tile<T>::points;
  std::vector<T> t(static_cast<size_t>(s.D * KP), T(0));
  for (int64_t k = 0; k < s.K; ++k)
    for (int64_t d = 0; d < s.D; ++d) t[size_t(d * KP + k)] = means[k * s.D + d];
  return t;
}

/// Y = diff^T P for the tile's points, one lane per point (P upper triangular):
/// y_j = sum_{d <= j} diff_d P[d][j]. Square: maha += sum_j y_j^2 instead of storing y.
/// @param[in]  diff  [D][vectors]
/// @param[out] out   Square: maha [vectors] (added to); else y [D][vectors]
template <bool Square, class T>
void factor_product(int64_t D, const T* P, const simd::vec_t<T>* diff, simd::vec_t<T>* out) {
  using V = simd::vec_t<T>;
  constexpr int R = Tile<T>::vectors;
  for (int64_t j = 0; j < D; ++j) {
    V y[R] = {};
    for (int64_t d = 0; d <= j; ++d) {
      const T p = P[d * D + j];
      for (int r = 0; r < R; ++r) y[r] += diff[d * R + r] * p;
    }
    for (int r = 0; r < R; ++r) {
      if constexpr (Square)
        out[r] += y[r] * y[r];
      else
        out[j * R + r] = y[r];
    }
  }
}

/// ||(x - mu_k)^T P_k||^2 for the tile's points, one lane per point.
/// @param[in]  xt    [D][vectors] the tile's points, transposed; tied: y = (x - c) P instead
/// @param[in]  nu    tied only: the whitened means (mu_k - c) P, [D][KP]
/// @param[out] diff  [D][vectors] scratch
/// @param[out] maha  [vectors]
template <class T>
void mahalanobis(const Shape& s, Covariance cov, int64_t k, const T* means, const T* P, const T* nu,
                 int64_t KP, const simd::vec_t<T>* xt, simd::vec_t<T>* diff, simd::vec_t<T>* maha) {
  using V = simd::vec_t<T>;
  constexpr int R = Tile<T>::vectors;
  const T* mu = means + k * s.D;
  for (int r = 0; r < R; ++r) maha[r] = V{};
  switch (cov) {
    case Covariance::full:
      for (int64_t d = 0; d < s.D; ++d)
        for (int r = 0; r < R; ++r) diff[d * R + r] = xt[d * R + r] - mu[d];
      factor_product<true>(s.D, P + k * s.D * s.D, diff, maha);
      break;
    case Covariance::tied: {
      // maha = ||y - nu_k||^2
      for (int64_t j = 0; j < s.D; ++j)
        for (int r = 0; r < R; ++r) {
          const V t = xt[j * R + r] - nu[j * KP + k];
          maha[r] += t * t;
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
      // maha = sum_d ((x_d - mu_d) / sigma)^2, scaled per element (||x - mu||^2 / sigma^2 can
      // overflow to inf times an underflowed 1 / sigma^2 = 0: NaN)
      const T p = P[k];
      for (int64_t d = 0; d < s.D; ++d)
        for (int r = 0; r < R; ++r) {
          const V t = (xt[d * R + r] - mu[d]) * p;
          maha[r] += t * t;
        }
      break;
    }
  }
}

/// The E-step of one tile of points: log w_k N(x_p | k) for every component and log p(x_p),
/// one lane per point. Holds the scratch of one thread.
template <class T> class EStepTile {
 public:
  using V = simd::vec_t<T>;
  static constexpr int L = Tile<T>::lanes, R = Tile<T>::vectors, P = Tile<T>::points;

  /// factors: the precision factors; constants: from component_constants; means_t: tied only,
  /// transposed_means.
  EStepTile(const Shape& s, Covariance cov, const T* means, const T* factors, const T* means_t,
            const double* constants)
      : s_(s), cov_(cov), means_(means), factors_(factors), means_t_(means_t), constants_(constants),
        KP_((s.K + P - 1) / P * P), xt_(size_t(s.D * R)), diff_(size_t(s.D * R)), joint_(size_t(s.K * R)),
        nu_(cov == Covariance::tied ? size_t(s.D * KP_) : 0),
        sq_dist_(cov == Covariance::spherical ? size_t(s.K * R) : 0),
        points_(cov == Covariance::tied ? size_t(s.D * R) : 0), x_far_(cov == Covariance::tied ? size_t(R) : 0),
        factor_norm_(cov == Covariance::tied ? frobenius_norm(factors, s.D * s.D) : 0) {}

  /// Computes joint(k, r) and log_prob(r) for the n <= P points starting at x (rows of D).
  /// A short tile repeats its last point in the unused lanes (their results are meaningless).
  void compute(const T* x, int64_t n) {
    const T neg_inf = -std::numeric_limits<T>::infinity();
    for (int p = 0; p < P; ++p) {
      const T* xp = x + std::min<int64_t>(p, n - 1) * s_.D;
      for (int64_t d = 0; d < s_.D; ++d) xt_[size_t(d * R + p / L)][p % L] = xp[d];
    }
    if (cov_ == Covariance::tied) {
      std::copy(xt_.begin(), xt_.end(), points_.begin());  // x, for the direct form below
      for (int r = 0; r < R; ++r) {  // ||x - c||^2, c = the tile's first point
        V sum{};
        for (int64_t d = 0; d < s_.D; ++d) {
          const V t = points_[size_t(d * R + r)] - x[d];
          sum += t * t;
        }
        x_far_[size_t(r)] = sum;
      }
      whiten(x);
    }
    // log w_k N(x | k) = constant_k - maha / 2
    for (int64_t k = 0; k < s_.K; ++k) {
      V maha[R];
      mahalanobis<T>(s_, cov_, k, means_, factors_, nu_.data(), KP_, xt_.data(), diff_.data(), maha);
      if (cov_ == Covariance::tied && !whitened_form_accurate(x, k, maha))
        mahalanobis<T>(s_, Covariance::full, 0, means_ + k * s_.D, factors_, nullptr, KP_, points_.data(),
                       diff_.data(), maha);
      for (int r = 0; r < R; ++r) joint_[size_t(k * R + r)] = T(constants_[k]) - T(0.5) * maha[r];
      if (cov_ == Covariance::spherical) std::copy(maha, maha + R, &sq_dist_[size_t(k * R)]);
    }
    // log p(x) = m + log sum_k exp(joint_k - m), m = max_k joint_k (lse_shift: 0 if all
    // are -inf).
    for (int r = 0; r < R; ++r) {
      V m = simd::broadcast<V>(neg_inf);
      for (int64_t k = 0; k < s_.K; ++k) m = joint_[size_t(k * R + r)] > m ? joint_[size_t(k * R + r)] : m;
      m = lse_shift<T>(m);
      V sum{};
      for (int64_t k = 0; k < s_.K; ++k) sum += vmath::exp_approx(joint_[size_t(k * R + r)] - m);
      log_prob_[r] = m + vmath::log_approx(sum);
    }
  }

  /// log w_k N(x | k) of the R point vectors, and log p(x).
  const V* joint(int64_t k) const { return &joint_[size_t(k * R)]; }
  const V* log_prob() const { return log_prob_; }
  /// Spherical only: ||x - mu_k||^2 / sigma_k^2 of the R point vectors.
  const V* sq_dist(int64_t k) const { return &sq_dist_[size_t(k * R)]; }

 private:
  /// Tied: ||(x - mu_k) P||^2 = ||y - nu_k||^2 with y = (x - c) P and nu_k = (mu_k - c) P, so
  /// the D^2 product is done once per point (xt <- y) and once per component per tile (nu),
  /// not once per point and component. The centre c is the tile's first point, so y and
  /// the nu_k of the nearby components stay at the scale of the tile's spread, never of
  /// the data's offset or of a far-away component.
  void whiten(const T* c) {
    for (int64_t d = 0; d < s_.D; ++d)
      for (int r = 0; r < R; ++r) diff_[size_t(d * R + r)] = xt_[size_t(d * R + r)] - c[d];
    factor_product<false>(s_.D, factors_, diff_.data(), xt_.data());
    std::vector<V> nu(size_t(s_.D * R));
    for (int64_t k0 = 0; k0 < KP_; k0 += P) {
      for (int64_t d = 0; d < s_.D; ++d)
        for (int r = 0; r < R; ++r)
          diff_[size_t(d * R + r)] = simd::load<V>(&means_t_[size_t(d * KP_ + k0 + r * L)]) - c[d];
      factor_product<false>(s_.D, factors_, diff_.data(), nu.data());
      for (int64_t d = 0; d < s_.D; ++d)
        for (int r = 0; r < R; ++r) simd::store(&nu_[size_t(d * KP_ + k0 + r * L)], nu[size_t(d * R + r)]);
    }
  }

  /// Tied: whether ||y - nu_k||^2 kept the accuracy of the direct ||(x - mu_k) P||^2 for
  /// every point of the tile. y = (x - c) P and nu_k = (mu_k - c) P carry rounding errors of
  /// about e = 2 sqrt(D + 2) eps ||P||_F (||x - c|| + ||mu_k - c||) (the probabilistic bound of
  /// a D-term dot product; the worst case has D + 2), which their difference keeps: a
  /// point far from the tile's first point c (an outlier in the tile), or y and nu_k
  /// overflowing to inf (inf - inf = NaN), can lose the whole term. Accurate enough when
  /// e^2 + 2 e sqrt(maha) <= b (1 + D + maha) with b = 2^10 eps: the log density's terms are
  /// then right to about 2^9 eps of their size (log det, D/2 log 2 pi and maha / 2), i.e.
  /// u = b (1 + D + maha) - e^2 >= 0 and 4 e^2 maha <= u^2 (no square roots; the bound
  /// e^2 <= 8 (D + 2) eps^2 ||P||_F^2 (||x - c||^2 + ||mu_k - c||^2) stands for e^2).
  bool whitened_form_accurate(const T* c, int64_t k, const V* maha) const {
    constexpr T eps = std::numeric_limits<T>::epsilon();
    const T* mu = means_ + k * s_.D;
    T mu_far = 0;  // ||mu_k - c||^2
    for (int64_t d = 0; d < s_.D; ++d) mu_far += (mu[d] - c[d]) * (mu[d] - c[d]);
    const T e_scale = T(2) * std::sqrt(T(s_.D + 2)) * eps * factor_norm_;
    auto ok = V{} == V{};  // lane masks (all set)
    for (int r = 0; r < R; ++r) {
      const V m = maha[r], e2 = T(2) * e_scale * e_scale * (x_far_[size_t(r)] + mu_far);
      const V u = T(1024) * eps * (m + T(1 + s_.D)) - e2, lhs = T(4) * e2 * m, rhs = u * u;
      // NaN fails every comparison; an infinite maha is rechecked
      ok &= (m < std::numeric_limits<T>::infinity()) & (u >= T(0)) & (lhs <= rhs);
    }
    for (int l = 0; l < L; ++l)
      if (!ok[l]) return false;
    return true;
  }

  static T frobenius_norm(const T* a, int64_t n) {
    T sum = 0;
    for (int64_t i = 0; i < n; ++i) sum += a[i] * a[i];
    return std::sqrt(sum);
  }

  Shape s_;
  Covariance cov_;
  const T *means_, *factors_, *means_t_;
  const double* constants_;
  int64_t KP_;  // components rounded up to whole tiles
  std::vector<V> xt_, diff_, joint_;  // [D][R] transposed points, [D][R] scratch, [K][R]
  std::vector<T> nu_;                 // tied: the tile's whitened means [D][KP]
  std::vector<V> sq_dist_;            // spherical: the Mahalanobis terms [K][R]
  std::vector<V> points_;             // tied: the tile's points before whitening [D][R]
  std::vector<V> x_far_;              // tied: ||x - c||^2 of the tile's points [R]
  T factor_norm_;                     // tied: ||P||_F
  V log_prob_[R];
};

/// Adds the lanes of v, widened to A, into the lane partials acc[0, lanes(T) / lanes(A)).
template <class A, class T> void add_widened(simd::vec_t<A>* acc, simd::vec_t<T> v) {
  constexpr int LA = simd::vector<A>::lanes, W = simd::vector<T>::lanes / LA;
  for (int w = 0; w < W; ++w) {
    simd::vec_t<A> part;
    for (int l = 0; l < LA; ++l) part[l] = A(v[w * LA + l]);
    acc[w] += part;
  }
}

/// One register tile of the rank update S[a][v] += sum_p rd[p][a] * dm[p][v] for the rows
/// a0 .. a0 + kRankRows - 1 and the C vectors of columns from v0 (rows of `stride` scalars).
template <int C, class A>
void rank_update_tile(int64_t n, int64_t stride, const A* rd, const A* dm, int64_t a0, int64_t v0,
                      simd::vec_t<A>* S, int64_t S_row_vectors) {
  using VA = simd::vec_t<A>;
  constexpr int LA = simd::vector<A>::lanes;
  VA c[kRankRows][C];
  for (int i = 0; i < kRankRows; ++i)
    for (int j = 0; j < C; ++j) c[i][j] = S[(a0 + i) * S_row_vectors + v0 + j];
  for (int64_t p = 0; p < n; ++p) {
    VA d[C];
    for (int j = 0; j < C; ++j) {
      d[j] = simd::load<VA>(dm + p * stride + (v0 + j) * LA);
      simd::keep_in_register(d[j]);
    }
    for (int i = 0; i < kRankRows; ++i) {
      const A b = rd[p * stride + a0 + i];
      for (int j = 0; j < C; ++j) c[i][j] += b * d[j];
    }
  }
  for (int i = 0; i < kRankRows; ++i)
    for (int j = 0; j < C; ++j) S[(a0 + i) * S_row_vectors + v0 + j] = c[i][j];
}

/// The rank update S[a][v] += sum_p rd[p][a] * dm[p][v] over n points for the vectors v
/// holding columns b >= a (the upper triangle, by whole vectors), in register tiles; rows of
/// `stride` scalars, S rows of `vectors` vectors.
template <class A>
void rank_update(int64_t n, int64_t rows, int64_t stride, int64_t vectors, const A* rd, const A* dm,
                 simd::vec_t<A>* S) {
  constexpr int LA = simd::vector<A>::lanes;
  for (int64_t a0 = 0; a0 < rows; a0 += kRankRows) {
    int64_t v = a0 / LA;
    for (; v + kRankVectors <= vectors; v += kRankVectors)
      rank_update_tile<kRankVectors>(n, stride, rd, dm, a0, v, S, vectors);
    for (; v < vectors; ++v) rank_update_tile<1>(n, stride, rd, dm, a0, v, S, vectors);
  }
}

}  // namespace

template <class T>
void log_resp(const Shape& s, Covariance cov, const T* X, const T* weights, const T* means,
              const T* prec_chol, T* log_prob, T* log_resp) {
  using Tl = EStepTile<T>;
  constexpr int L = Tl::L, P = Tl::P;
  if (s.K < 1) throw std::invalid_argument("need at least one component");
  const std::vector<double> constants = component_constants(s, cov, weights, prec_chol);
  if (s.N == 0) return;
  const std::vector<T> means_t = cov == Covariance::tied ? transposed_means(s, means) : std::vector<T>();
  const int64_t tiles = (s.N + P - 1) / P;
  const Interruption interruption;

#pragma omp parallel
  {
    Tl tile(s, cov, means, prec_chol, means_t.data(), constants.data());
#pragma omp for schedule(dynamic)
    for (int64_t t = 0; t < tiles; ++t) {
      if (interruption.requested()) continue;
      const int64_t i0 = t * P, n = std::min<int64_t>(P, s.N - i0);
      tile.compute(X + i0 * s.D, n);
      for (int64_t p = 0; p < n; ++p) {
        const T lpp = tile.log_prob()[p / L][p % L];
        log_prob[i0 + p] = lpp;
        if (log_resp) {
          T* out = log_resp + (i0 + p) * s.K;
          for (int64_t k = 0; k < s.K; ++k)
            out[k] = log_responsibility(tile.joint(k)[p / L][p % L], lpp);
        }
      }
    }
  }
}

template <class T>
void em_step(const Shape& s, Covariance cov, const T* X, const T* weights, const T* means,
             const T* prec_chol, T* log_prob, T* nk, T* sums, T* scatter) {
  using A = accumulate_t<T>;
  using VA = simd::vec_t<A>;
  using V = simd::vec_t<T>;
  using Tl = EStepTile<T>;
  constexpr int L = Tl::L, R = Tl::R, P = Tl::P;
  constexpr int LA = simd::vector<A>::lanes, W = L / LA;
  if (s.K < 1) throw std::invalid_argument("need at least one component");
  const std::vector<double> constants = component_constants(s, cov, weights, prec_chol);
  const bool tied = cov == Covariance::tied, full = cov == Covariance::full;
  const std::vector<T> means_t = tied ? transposed_means(s, means) : std::vector<T>();
  const int64_t K = s.K, D = s.D;
  // A tile's points are staged as rows of `stride` values (zero-padded past D, at least
  // `rows` = D rounded up to kRankRows): DV vectors of T, or DVA vectors of A for the tied
  // model's rank-1 update.
  const int64_t rows = (D + kRankRows - 1) / kRankRows * kRankRows;
  const int64_t stride = (rows + L - 1) / L * L, DV = stride / L;
  const int64_t strideA = (rows + LA - 1) / LA * LA, DVA = strideA / LA;
  // Each tile's sums are formed in T (at most P terms) and added into the block's, in A.
  // Block accumulators (A vectors): N_k lane partials [K][W], the sums centred on the shift
  // m_k, c_k = sum_n r_nk (x_n - m_k) [K][DV W], and the scatter about m_k (full:
  // [K][rows][DV W]; diag: its diagonal [K][DV W]; spherical: lane partials of its trace in
  // the first W of [K][DV W], from the E-step's Mahalanobis terms). m_k are the current means,
  // except for the tied model, whose one scatter [rows][DVA] is summed about c = the first
  // point: sum_k r_nk (x_n - c)(x_n - c)^T is one rank-1 update per point, weighted by
  // sum_k r_nk, kept in A throughout because it also holds the spread between the means.
  const int64_t row_vectors = tied ? DVA : DV * W;  // A vectors per row of the scatter
  const int64_t at_centred = K * W, at_scatter = at_centred + K * DV * W;
  const int64_t per_matrix = full || tied ? rows * row_vectors : row_vectors;
  const int64_t row = at_scatter + (tied ? 1 : K) * per_matrix;
  std::vector<T> m(static_cast<size_t>(K * stride), T(0));  // the shifts m_k, padded
  for (int64_t k = 0; k < K; ++k)
    for (int64_t d = 0; d < D; ++d) m[size_t(k * stride + d)] = !tied ? means[k * D + d] : s.N ? X[d] : T(0);

  int64_t unused = 0;
  const auto totals = blocked_sum<VA>(1, s.N, row, [&](int64_t, int64_t i0, int64_t i1, VA* acc) {
    Tl tile(s, cov, means, prec_chol, means_t.data(), constants.data());
    std::vector<T> resp(static_cast<size_t>(K * P));
    // The tile's points (x), minus m_k (dm), times r_nk (rd); padding lanes stay 0. St: a
    // component's scatter over the tile (full).
    std::vector<T> x(static_cast<size_t>(P * stride), T(0)), dm(x), rd(x);
    std::vector<V> St(full ? static_cast<size_t>(rows * DV) : 0);
    std::vector<A> dmA(tied ? static_cast<size_t>(P * strideA) : 0, A(0)), rdA(dmA), rsum(static_cast<size_t>(P));
    for (int64_t t0 = i0; t0 < i1; t0 += P) {
      const int64_t n = std::min<int64_t>(P, i1 - t0);
      tile.compute(X + t0 * D, n);
      for (int64_t p = 0; p < n; ++p) log_prob[t0 + p] = tile.log_prob()[p / L][p % L];
      // r_pk = exp(log w_k N(x_p | k) - log p(x_p)); 0 for a point of probability 0 (whose
      // joint values are all -inf) and for the lanes past the tile's n points.
      for (int r = 0; r < R; ++r) {
        const V lp = tile.log_prob()[r];
        const V shift = lse_shift<T>(lp);
        V valid;
        for (int l = 0; l < L; ++l) valid[l] = r * L + l < n ? T(1) : T(0);
        for (int64_t k = 0; k < K; ++k)
          simd::store(&resp[size_t(k * P + r * L)], valid * vmath::exp_approx(tile.joint(k)[r] - shift));
      }
      const int64_t n_chains = (n + kChains - 1) / kChains * kChains;
      for (int64_t p = 0; p < n; ++p) std::copy(X + (t0 + p) * D, X + (t0 + p + 1) * D, &x[size_t(p * stride)]);
      std::fill(x.begin() + n * stride, x.begin() + n_chains * stride, T(0));
      if (tied) {  // dm = x - c for every component, also in A for the rank-1 update
        for (int64_t p = 0; p < n; ++p)
          for (int64_t d = 0; d < D; ++d) {
            dm[size_t(p * stride + d)] = x[size_t(p * stride + d)] - m[size_t(d)];
            dmA[size_t(p * strideA + d)] = A(x[size_t(p * stride + d)]) - A(m[size_t(d)]);
          }
        std::fill(rsum.begin(), rsum.end(), A(0));
      }
      for (int64_t k = 0; k < K; ++k) {
        const T* rk = &resp[size_t(k * P)];
        for (int r = 0; r < R; ++r) add_widened<A, T>(acc + k * W, simd::load<V>(rk + r * L));
        bool any = false;  // a component with no weight in the tile adds exact zeros: skip it
        for (int64_t p = 0; p < n && !any; ++p) any = rk[p] != T(0);
        if (!any) continue;
        VA* centred = acc + at_centred + k * DV * W;
        VA* S = acc + at_scatter + (tied ? 0 : k) * per_matrix;
        // One vector of features at a time over the tile's points, the sums in registers:
        // d = x_p - m_k, c_k += r_p d; diag S_k += r_p d^2; full stages d and r_p d
        // for the rank update below; tied adds r_pk into the point's weight.
        for (int64_t v = 0; v < DV; ++v) {
          const V mkv = simd::load<V>(&m[size_t(k * stride + v * L)]);
          // kChains partial sums (point p into p % kChains), so that the FMAs do not wait on
          // each other's latency (15-20% faster for diag/spherical); rows past n have r = 0
          // and zero points.
          V sum_rd[kChains] = {}, sum_rdd[kChains] = {};
          for (int64_t p0 = 0; p0 < n_chains; p0 += kChains)
            for (int c = 0; c < kChains; ++c) {
              const int64_t p = p0 + c, at = p * stride + v * L;
              if (tied) {
                sum_rd[c] += rk[p] * simd::load<V>(&dm[size_t(at)]);
                continue;
              }
              const V d = simd::load<V>(&x[size_t(at)]) - mkv, q = rk[p] * d;
              sum_rd[c] += q;
              if (full) {
                simd::store(&dm[size_t(at)], d);
                simd::store(&rd[size_t(at)], q);
              } else if (cov == Covariance::diag) {
                sum_rdd[c] += q * d;
              }
            }
          if (cov == Covariance::diag) add_widened<A, T>(S + v * W, fold(sum_rdd));
          add_widened<A, T>(centred + v * W, fold(sum_rd));
        }
        if (cov == Covariance::spherical) {
          // sum_p r_p ||x_p - m_k||^2 = sum_p r_p maha_p sigma_k^2, from the E-step's terms;
          // a point with r_p = 0 adds 0 even where its maha overflowed (0 inf would be NaN)
          V sum_rm{};
          for (int r = 0; r < R; ++r) {
            const V rv = simd::load<V>(rk + r * L);
            sum_rm += rv == T(0) ? V{} : rv * tile.sq_dist(k)[r];
          }
          add_widened<A, T>(S, sum_rm / prec_chol[k] / prec_chol[k]);  // sigma^2 = 1 / P^2 may overflow
        }
        if (tied) {
          for (int64_t p = 0; p < n; ++p) rsum[size_t(p)] += A(rk[p]);
        } else if (full) {  // the tile's S_k, then into the block's
          std::fill(St.begin(), St.end(), V{});
          rank_update(n, rows, stride, DV, rd.data(), dm.data(), St.data());
          for (int64_t e = 0; e < rows * DV; ++e) add_widened<A, T>(S + e * W, St[size_t(e)]);
        }
      }
      if (tied) {  // S += sum_p (sum_k r_pk) (x_p - c)(x_p - c)^T
        for (int64_t p = 0; p < n; ++p)
          for (int64_t d = 0; d < D; ++d) rdA[size_t(p * strideA + d)] = rsum[size_t(p)] * dmA[size_t(p * strideA + d)];
        rank_update(n, rows, strideA, DVA, rdA.data(), dmA.data(), acc + at_scatter);
      }
    }
    return int64_t(0);
  }, unused);

  // Move the statistics from m_k to mu_k = sums_k / (N_k + 10 eps): with c_k = sums_k - N_k m_k
  // and delta_k = mu_k - m_k = (c_k - 10 eps m_k) / (N_k + 10 eps),
  //   sum_n r_nk (x_n - mu_k)(x_n - mu_k)^T = S_k(m_k) - c_k delta_k^T - delta_k c_k^T + N_k delta_k delta_k^T.
  const auto lane = [&](int64_t vector, int64_t l) { return totals[size_t(vector + l / LA)][l % LA]; };
  std::vector<A> tied_upper(tied ? static_cast<size_t>(D * D) : 0, A(0));
  std::vector<A> c(static_cast<size_t>(D)), delta(static_cast<size_t>(D));
  for (int64_t k = 0; k < K; ++k) {
    A n = 0;
    for (int64_t l = 0; l < L; ++l) n += lane(k * W, l);
    nk[k] = T(n);
    for (int64_t d = 0; d < D; ++d) {
      c[size_t(d)] = lane(at_centred + k * DV * W, d);
      const A mkd = m[size_t(k * stride + d)];
      sums[k * D + d] = T(c[size_t(d)] + n * mkd);
      delta[size_t(d)] = (c[size_t(d)] - empty_component_guard() * mkd) / (n + empty_component_guard());
    }
    const int64_t S0 = at_scatter + (tied ? 0 : k) * per_matrix;
    const auto corrected = [&](A S_ab, int64_t a, int64_t b) {
      return S_ab - c[size_t(a)] * delta[size_t(b)] - delta[size_t(a)] * c[size_t(b)] + n * delta[size_t(a)] * delta[size_t(b)];
    };
    switch (cov) {
      case Covariance::full:
        for (int64_t a = 0; a < D; ++a)
          for (int64_t b = a; b < D; ++b)
            scatter[(k * D + a) * D + b] = scatter[(k * D + b) * D + a] = T(corrected(lane(S0 + a * row_vectors, b), a, b));
        break;
      case Covariance::tied:  // the shared S(c) once, each component's correction after it
        for (int64_t a = 0; a < D; ++a)
          for (int64_t b = a; b < D; ++b)
            tied_upper[size_t(a * D + b)] = corrected(k == 0 ? lane(S0 + a * row_vectors, b) : tied_upper[size_t(a * D + b)], a, b);
        break;
      case Covariance::diag:
        for (int64_t d = 0; d < D; ++d) scatter[k * D + d] = T(corrected(lane(S0, d), d, d));
        break;
      case Covariance::spherical: {  // S0's lanes hold partial sums of the trace about m_k
        A trace = 0;
        for (int64_t l = 0; l < L; ++l) trace += lane(S0, l);
        for (int64_t d = 0; d < D; ++d) trace = corrected(trace, d, d);
        scatter[k] = T(trace);
        break;
      }
    }
  }
  if (cov == Covariance::tied)
    for (int64_t a = 0; a < D; ++a)
      for (int64_t b = a; b < D; ++b) scatter[a * D + b] = scatter[b * D + a] = T(tied_upper[size_t(a * D + b)]);
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
  template void suff_stats<T>(const Shape&, Covariance, const T*, const T*, bool, T*, T*, T*); \
  template void em_step<T>(const Shape&, Covariance, const T*, const T*, const T*, const T*, T*, \
                           T*, T*, T*);
GENFAST_INSTANTIATE(float)
GENFAST_INSTANTIATE(double)
#undef GENFAST_INSTANTIATE

}  // namespace genfast::gmm
