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

/// How the fused EM step sums the tied scatter sum_k sum_n r_nk (x_n - m_k)(x_n - m_k)^T.
enum class TiedSum {
  /// About one centre c for every point and component: one rank update per point, then
  /// moved to each component. Cancels where the means lie far apart (or an outlier has its
  /// own component), by about eps_A S(c): the first pass's way, kept unless it cancelled.
  shared_shift,
  /// About each point's most responsible component (tied_scatter_tile): one or two rank
  /// updates per point and K x K between-means weights; exact for any spread of the means.
  dominant,
  /// Each component's scatter about its own mean into the shared matrix, as for full: K rank
  /// updates per tile, exact; where K is too large for dominant's weights.
  per_component,
};

/// Most components for which the dominant tied sum keeps its K x K between-means weights
/// (8 MB per block in double).
constexpr int64_t kTiedBetweenMaxComponents = 1024;

/// shared_shift is kept while S(c) is at most this many times the scatter about the new
/// means on every diagonal entry, which keeps its error near 2^-32 of the scatter for float
/// data and 2^-42 for double.
template <class T> constexpr double kSharedShift = std::numeric_limits<T>::digits >= 53 ? 1024.0 : 1048576.0;

/// Rows staged per rank update when expanding the between-means weights.
constexpr int64_t kBetweenBatch = 256;

/// The fused EM step sums each tile about shifts m_k (first the given means) in T. When a
/// component's new mean lies more than sqrt(kFarShift) standard deviations from its shift,
/// the statistics are summed again about the new means, at most kMaxShiftPasses passes in
/// all (each pass cuts a far shift's error by about 1 / eps_T, so four reach the spread from
/// any float32 shift). kFarShift keeps the error from the shift, about eps_T kFarShift of the
/// scatter, near 2^-18 (float) or 2^-40 (double).
template <class T> constexpr double kFarShift = std::numeric_limits<T>::digits >= 53 ? 8192.0 : 64.0;
constexpr int kMaxShiftPasses = 4;
/// A move below this fraction of |m_kd| is only the rounding of the mean: not worth a pass.
template <class T> const double kShiftRounding = std::sqrt(std::numeric_limits<T>::epsilon());

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

/// g[v0 LA, (v0 + NV) LA) = sum_c r[c] (m_{k[c]} - m_j) over `count` components, in NV
/// register accumulators (means and m_j: rows of `stride` A, zero past D).
template <int NV, class A>
void add_mean_offsets(int64_t count, const int64_t* k, const A* r, const A* means, int64_t stride,
                      const A* mj, int64_t v0, A* g) {
  using VA = simd::vec_t<A>;
  constexpr int LA = simd::vector<A>::lanes;
  VA sum[NV] = {}, base[NV];
  for (int i = 0; i < NV; ++i) base[i] = simd::load<VA>(mj + (v0 + i) * LA);
  for (int64_t c = 0; c < count; ++c) {
    const A* mk = means + k[c] * stride + v0 * LA;
    for (int i = 0; i < NV; ++i) sum[i] += r[c] * (simd::load<VA>(mk + i * LA) - base[i]);
  }
  for (int i = 0; i < NV; ++i) simd::store(g + (v0 + i) * LA, sum[i]);
}

/// The tied scatter of one tile's points about the current means,
///   sum_p sum_k r_pk (x_p - m_k)(x_p - m_k)^T,
/// without one rank update per component. About each point's most responsible component j
/// (u = x - m_j, v_k = m_k - m_j, R = sum_k r_k, g = sum_k r_k v_k = R (mbar - m_j)):
///   sum_k r_k (x - m_k)(x - m_k)^T = R (x - mbar)(x - mbar)^T - g g^T / R + sum_k r_k v_k v_k^T.
/// The first two terms are rank-1 updates of S; the last depends on the point only through
/// r_k, so it is added into between[j K + k] and expanded once for all points
/// (expand_between). Every term is small where the point is near m_j, so no term cancels
/// against another's spread, as one shared shift would for a point far from the rest.
/// @param n          points in the tile (rows of x past n are not read)
/// @param resp       [K][P] the tile's responsibilities in T
/// @param x          [P][stride] the tile's points, zero past D
/// @param means      [K][stride] the current means m_k in A, zero past D
/// @param staged_d   [2P][stride] scratch, zero past D; staged_r the same
/// @param others     [K] scratch: the components other than j with r_k > 0, and r_others their r_k
/// @param g          [stride] scratch
/// @param S          the scatter's upper triangle, rows of `vectors` A vectors
/// @param between    [K][K] the between-means weights, A lanes of an accumulator row
template <class T, class A>
void tied_scatter_tile(int64_t n, int64_t K, int64_t D, int64_t rows, int64_t stride, int64_t P,
                       const T* resp, const T* x, const A* means, A* staged_d, A* staged_r,
                       int64_t* others, A* r_others, A* g, simd::vec_t<A>* S, int64_t vectors,
                       simd::vec_t<A>* between) {
  constexpr int LA = simd::vector<A>::lanes;
  int64_t staged = 0;
  for (int64_t p = 0; p < n; ++p) {
    int64_t j = 0;
    A R = 0;
    for (int64_t k = 0; k < K; ++k) {
      const T r = resp[k * P + p];
      R += A(r);
      if (r > resp[j * P + p]) j = k;
    }
    if (R == A(0)) continue;  // a point of probability 0 has no term
    int64_t count = 0;
    for (int64_t k = 0; k < K; ++k) {
      const A r = A(resp[k * P + p]);
      if (k == j || r == A(0)) continue;
      others[count] = k;
      r_others[count++] = r;
      const int64_t e = j * K + k;
      between[e / LA][e % LA] += r;
    }
    const A* mj = means + j * stride;
    int64_t v0 = 0;
    for (; v0 + 8 <= vectors; v0 += 8) add_mean_offsets<8>(count, others, r_others, means, stride, mj, v0, g);
    for (; v0 + 2 <= vectors; v0 += 2) add_mean_offsets<2>(count, others, r_others, means, stride, mj, v0, g);
    if (v0 < vectors) add_mean_offsets<1>(count, others, r_others, means, stride, mj, v0, g);
    // x - mbar = u - g / R, weighted R
    A* d1 = staged_d + staged * stride;
    A* r1 = staged_r + staged * stride;
    for (int64_t d = 0; d < D; ++d) {
      d1[d] = (A(x[p * stride + d]) - mj[d]) - g[d] / R;
      r1[d] = R * d1[d];
    }
    ++staged;
    if (count == 0) continue;  // g = 0
    // - g g^T / R
    A* d2 = staged_d + staged * stride;
    A* r2 = staged_r + staged * stride;
    for (int64_t d = 0; d < D; ++d) {
      d2[d] = g[d];
      r2[d] = -g[d] / R;
    }
    ++staged;
  }
  rank_update(staged, rows, stride, vectors, staged_r, staged_d, S);
}

/// sum_j sum_k between[j K + k] (m_k - m_j)(m_k - m_j)^T: the tied scatter's between-means
/// part (tied_scatter_tile), into the upper triangle of S (rows of `vectors` A vectors).
template <class A>
void expand_between(int64_t K, int64_t D, int64_t rows, int64_t stride, const A* means,
                    const simd::vec_t<A>* between, simd::vec_t<A>* S, int64_t vectors) {
  constexpr int LA = simd::vector<A>::lanes;
  std::vector<A> staged_d(size_t(kBetweenBatch * stride), A(0)), staged_r(staged_d);
  int64_t staged = 0;
  for (int64_t e = 0; e < K * K; ++e) {
    const A w = between[e / LA][e % LA];
    if (w != A(0)) {
      const A* mj = means + (e / K) * stride;
      const A* mk = means + (e % K) * stride;
      for (int64_t d = 0; d < D; ++d) {
        staged_d[size_t(staged * stride + d)] = mk[d] - mj[d];
        staged_r[size_t(staged * stride + d)] = w * (mk[d] - mj[d]);
      }
      ++staged;
    }
    if (staged == kBetweenBatch || (e == K * K - 1 && staged)) {
      rank_update(staged, rows, stride, vectors, staged_r.data(), staged_d.data(), S);
      staged = 0;
    }
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
  // `rows` = D rounded up to kRankRows): DV vectors of T, or DV W vectors of A.
  const int64_t rows = (D + kRankRows - 1) / kRankRows * kRankRows;
  const int64_t stride = (rows + L - 1) / L * L, DV = stride / L;
  // Each tile's sums are formed in T (at most P terms) and added into the block's, in A.
  // Block accumulators (A vectors): N_k lane partials [K][W], the sums centred on the
  // shifts m_k, c_k = sum_n r_nk (x_n - m_k) [K][DV W], and the scatter (full: about m_k,
  // [K][rows][DV W]; tied: one [rows][DV W] as TiedSum says, and for `dominant` the
  // between-means weights [K K]; diag: its diagonal about m_k [K][DV W]; spherical: lane
  // partials of its trace about m_k in the first W of [K][DV W]).
  const int64_t row_vectors = DV * W;  // A vectors per row of the scatter
  const int64_t at_centred = K * W, at_scatter = at_centred + K * DV * W;
  const int64_t per_matrix = full || tied ? rows * row_vectors : row_vectors;
  const int64_t at_between = at_scatter + (tied ? 1 : K) * per_matrix;
  // The shifts m_k the statistics are summed about, padded (and in A for tied): the given
  // means, or the previous pass's new means (see the end of the pass loop).
  std::vector<T> m(static_cast<size_t>(K * stride), T(0));
  std::vector<A> mA(tied ? m.size() : 0, A(0));
  const auto set_shift = [&](int64_t k, int64_t d, T value) {
    m[size_t(k * stride + d)] = value;
    if (tied) mA[size_t(k * stride + d)] = A(value);
  };
  for (int64_t k = 0; k < K; ++k)
    for (int64_t d = 0; d < D; ++d) set_shift(k, d, means[k * D + d]);
  // tied, shared_shift: c = sum_k w_k mu_k / sum_k w_k, about where the data's mean should be
  std::vector<A> centre(static_cast<size_t>(stride), A(0));
  if (tied) {
    A total = 0;
    for (int64_t k = 0; k < K; ++k) total += A(weights[k]);
    for (int64_t k = 0; k < K && total > A(0); ++k)
      for (int64_t d = 0; d < D; ++d) centre[size_t(d)] += A(weights[k]) / total * A(means[k * D + d]);
  }
  TiedSum tied_sum = TiedSum::shared_shift;
  std::vector<A> new_means(static_cast<size_t>(K * D));

  for (int pass = 1;; ++pass) {
    // spherical: the first pass takes the trace about the given means from the E-step's
    // Mahalanobis terms; a later pass, about other shifts, sums r (x_d - m_kd)^2 as diag does.
    const bool shifts_are_means = pass == 1;
    const bool squares = cov == Covariance::diag || (cov == Covariance::spherical && !shifts_are_means);
    const bool per_component = full || (tied && tied_sum == TiedSum::per_component);
    const bool dominant = tied && tied_sum == TiedSum::dominant, shared = tied && tied_sum == TiedSum::shared_shift;
    const int64_t row = at_between + (dominant ? (K * K + LA - 1) / LA : 0);
    int64_t unused = 0;
    const auto totals = blocked_sum<VA>(1, s.N, row, [&](int64_t, int64_t i0, int64_t i1, VA* acc) {
      Tl tile(s, cov, means, prec_chol, means_t.data(), constants.data());
      std::vector<T> resp(static_cast<size_t>(K * P));
      // The tile's points (x), minus m_k (dm), times r_nk (rd); padding lanes stay 0. St: a
      // component's scatter over the tile (full). staged_*, rsum, g, others: the tied sums'
      // scratch.
      std::vector<T> x(static_cast<size_t>(P * stride), T(0)), dm(x), rd(x);
      std::vector<V> St(per_component ? static_cast<size_t>(rows * DV) : 0);
      std::vector<A> staged_d(tied ? static_cast<size_t>(2 * P * stride) : 0, A(0)), staged_r(staged_d);
      std::vector<A> rsum(shared ? static_cast<size_t>(P) : 0);
      std::vector<A> g(dominant ? static_cast<size_t>(stride) : 0), r_others(dominant ? static_cast<size_t>(K) : 0);
      std::vector<int64_t> others(r_others.size());
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
        std::fill(rsum.begin(), rsum.end(), A(0));
        for (int64_t k = 0; k < K; ++k) {
          const T* rk = &resp[size_t(k * P)];
          for (int r = 0; r < R; ++r) add_widened<A, T>(acc + k * W, simd::load<V>(rk + r * L));
          bool any = false;  // a component with no weight in the tile adds exact zeros: skip it
          for (int64_t p = 0; p < n && !any; ++p) any = rk[p] != T(0);
          if (!any) continue;
          VA* centred = acc + at_centred + k * DV * W;
          VA* S = acc + at_scatter + (tied ? 0 : k) * per_matrix;
          // One vector of features at a time over the tile's points, the sums in registers:
          // d = x_p - m_k, c_k += r_p d; diag S_k += r_p d^2; full stages d and r_p d for
          // the rank update below.
          for (int64_t v = 0; v < DV; ++v) {
            const V mkv = simd::load<V>(&m[size_t(k * stride + v * L)]);
            // kChains partial sums (point p into p % kChains), so that the FMAs do not wait on
            // each other's latency (15-20% faster for diag/spherical); rows past n have r = 0
            // and zero points.
            V sum_rd[kChains] = {}, sum_rdd[kChains] = {};
            for (int64_t p0 = 0; p0 < n_chains; p0 += kChains)
              for (int c = 0; c < kChains; ++c) {
                const int64_t p = p0 + c, at = p * stride + v * L;
                const V d = simd::load<V>(&x[size_t(at)]) - mkv, q = rk[p] * d;
                sum_rd[c] += q;
                if (per_component) {
                  simd::store(&dm[size_t(at)], d);
                  simd::store(&rd[size_t(at)], q);
                } else if (squares) {
                  sum_rdd[c] += q * d;
                }
              }
            // diag: S_k's diagonal; spherical: its trace, in the lanes of the first W vectors
            if (squares) add_widened<A, T>(S + (cov == Covariance::diag ? v * W : 0), fold(sum_rdd));
            add_widened<A, T>(centred + v * W, fold(sum_rd));
          }
          if (cov == Covariance::spherical && shifts_are_means) {
            // sum_p r_p ||x_p - m_k||^2 = sum_p r_p maha_p sigma_k^2, from the E-step's terms;
            // a point with r_p = 0 adds 0 even where its maha overflowed (0 inf would be NaN)
            V sum_rm{};
            for (int r = 0; r < R; ++r) {
              const V rv = simd::load<V>(rk + r * L);
              sum_rm += rv == T(0) ? V{} : rv * tile.sq_dist(k)[r];
            }
            add_widened<A, T>(S, sum_rm / prec_chol[k] / prec_chol[k]);  // sigma^2 = 1 / P^2 may overflow
          }
          if (shared)
            for (int64_t p = 0; p < n; ++p) rsum[size_t(p)] += A(rk[p]);
          if (per_component) {  // the tile's S_k, then into the block's (tied: the shared one)
            std::fill(St.begin(), St.end(), V{});
            rank_update(n, rows, stride, DV, rd.data(), dm.data(), St.data());
            for (int64_t e = 0; e < rows * DV; ++e) add_widened<A, T>(S + e * W, St[size_t(e)]);
          }
        }
        if (shared) {  // S += sum_p (sum_k r_pk) (x_p - c)(x_p - c)^T
          for (int64_t p = 0; p < n; ++p)
            for (int64_t d = 0; d < D; ++d) {
              const A dev = A(x[size_t(p * stride + d)]) - centre[size_t(d)];
              staged_d[size_t(p * stride + d)] = dev;
              staged_r[size_t(p * stride + d)] = rsum[size_t(p)] * dev;
            }
          rank_update(n, rows, stride, row_vectors, staged_r.data(), staged_d.data(), acc + at_scatter);
        } else if (dominant) {
          tied_scatter_tile<T, A>(n, K, D, rows, stride, P, resp.data(), x.data(), mA.data(), staged_d.data(),
                                  staged_r.data(), others.data(), r_others.data(), g.data(), acc + at_scatter,
                                  row_vectors, acc + at_between);
        }
      }
      return int64_t(0);
    }, unused);

    // Move the statistics from the shifts m_k to mu_k = sums_k / (N_k + 10 eps): with
    // c_k = sums_k - N_k m_k and delta_k = mu_k - m_k = (c_k - 10 eps m_k) / (N_k + 10 eps),
    //   sum_n r_nk (x_n - mu_k)(x_n - mu_k)^T = S_k(m_k) - c_k delta_k^T - delta_k c_k^T + N_k delta_k delta_k^T.
    // (tied, shared_shift: S(c) moves from c, with c_k + N_k (m_k - c) and delta_k + m_k - c.)
    const auto lane = [&](int64_t vector, int64_t l) { return totals[size_t(vector + l / LA)][l % LA]; };
    // tied: the shared S before the moves (dominant: the rank updates' sum plus the
    // between-means part), then each component's move after it
    std::vector<VA> tied_S;
    if (tied) {
      tied_S.assign(totals.begin() + at_scatter, totals.begin() + at_scatter + per_matrix);
      if (dominant)
        expand_between(K, D, rows, stride, mA.data(), totals.data() + at_between, tied_S.data(), row_vectors);
    }
    std::vector<A> tied_upper(tied ? static_cast<size_t>(D * D) : 0, A(0));
    std::vector<A> c(static_cast<size_t>(D)), delta(static_cast<size_t>(D));
    // Whether to sum again about the new means (far_shift): the tile sums in T carry about eps_T
    // of |x - m_k|^2, which swamps the scatter once the shift is more than sqrt(kFarShift)
    // standard deviations from the new mean, and is +-inf once it overflows T. move_sq: N_k
    // delta_kd^2 per feature (tied: summed over the components); moved: some delta_kd is more
    // than the shift's own rounding (sqrt(eps_T) |m_kd|), so that another pass changes it.
    std::vector<A> move_sq(static_cast<size_t>(D), A(0));
    bool far_shift = false, moved_any = false;
    const auto too_far = [&](A after, A move, bool moved) {
      return moved && (!std::isfinite(after) || move > kFarShift<T> * after);
    };
    for (int64_t k = 0; k < K; ++k) {
      A n = 0;
      for (int64_t l = 0; l < L; ++l) n += lane(k * W, l);
      nk[k] = T(n);
      bool moved = false;
      for (int64_t d = 0; d < D; ++d) {
        c[size_t(d)] = lane(at_centred + k * DV * W, d);
        const A mkd = m[size_t(k * stride + d)];
        sums[k * D + d] = T(c[size_t(d)] + n * mkd);
        delta[size_t(d)] = (c[size_t(d)] - empty_component_guard() * mkd) / (n + empty_component_guard());
        new_means[size_t(k * D + d)] = mkd + delta[size_t(d)];
        moved = moved || std::abs(delta[size_t(d)]) > kShiftRounding<T> * std::abs(mkd);
      }
      for (int64_t d = 0; d < D && moved; ++d) moved = std::isfinite(T(new_means[size_t(k * D + d)]));
      moved_any = moved_any || moved;
      if (!tied) std::fill(move_sq.begin(), move_sq.end(), A(0));
      for (int64_t d = 0; d < D; ++d) move_sq[size_t(d)] += n * delta[size_t(d)] * delta[size_t(d)];
      if (shared)  // S(c) moves from c: the sums about c and the move from c
        for (int64_t d = 0; d < D; ++d) {
          const A offset = A(m[size_t(k * stride + d)]) - centre[size_t(d)];
          c[size_t(d)] += n * offset;
          delta[size_t(d)] += offset;
        }
      const int64_t S0 = at_scatter + (tied ? 0 : k) * per_matrix;
      const auto corrected = [&](A S_ab, int64_t a, int64_t b) {
        return S_ab - c[size_t(a)] * delta[size_t(b)] - delta[size_t(a)] * c[size_t(b)] + n * delta[size_t(a)] * delta[size_t(b)];
      };
      switch (cov) {
        case Covariance::full:
          for (int64_t a = 0; a < D; ++a)
            for (int64_t b = a; b < D; ++b) {
              const A S_ab = corrected(lane(S0 + a * row_vectors, b), a, b);
              scatter[(k * D + a) * D + b] = scatter[(k * D + b) * D + a] = T(S_ab);
              if (a == b) far_shift = far_shift || too_far(S_ab, move_sq[size_t(a)], moved);
            }
          break;
        case Covariance::tied:
          for (int64_t a = 0; a < D; ++a)
            for (int64_t b = a; b < D; ++b) {
              A& S_ab = tied_upper[size_t(a * D + b)];
              S_ab = corrected(k == 0 ? tied_S[size_t(a * row_vectors + b / LA)][b % LA] : S_ab, a, b);
            }
          break;
        case Covariance::diag:
          for (int64_t d = 0; d < D; ++d) {
            const A S_dd = corrected(lane(S0, d), d, d);
            scatter[k * D + d] = T(S_dd);
            far_shift = far_shift || too_far(S_dd, move_sq[size_t(d)], moved);
          }
          break;
        case Covariance::spherical: {  // S0's lanes hold partial sums of the trace about m_k
          A trace = 0, move = 0;
          for (int64_t l = 0; l < L; ++l) trace += lane(S0, l);
          for (int64_t d = 0; d < D; ++d) trace = corrected(trace, d, d);
          for (int64_t d = 0; d < D; ++d) move += move_sq[size_t(d)];
          scatter[k] = T(trace);
          far_shift = far_shift || too_far(trace, move, moved);
          break;
        }
      }
    }
    // tied, shared_shift: S(c) carries about eps_A of itself, which swamps the scatter once
    // it is more than kSharedShift times the scatter (components far apart, or an outlier):
    // sum again about each point's most responsible component instead.
    bool cancelled = false;
    if (tied)
      for (int64_t a = 0; a < D; ++a) {
        for (int64_t b = a; b < D; ++b) scatter[a * D + b] = scatter[b * D + a] = T(tied_upper[size_t(a * D + b)]);
        const A before = tied_S[size_t(a * row_vectors + a / LA)][a % LA], after = tied_upper[size_t(a * D + a)];
        far_shift = far_shift || too_far(after, move_sq[size_t(a)], moved_any);
        cancelled = cancelled || (shared && std::isfinite(before) && !(before <= kSharedShift<T> * after));
      }
    if ((!far_shift && !cancelled) || pass == kMaxShiftPasses) break;
    if (cancelled) tied_sum = K <= kTiedBetweenMaxComponents ? TiedSum::dominant : TiedSum::per_component;
    // Sum again about the new means (where finite); the E-step is the same, so log_prob is too.
    for (int64_t k = 0; k < K && far_shift; ++k) {
      bool finite = true;
      for (int64_t d = 0; d < D; ++d) finite = finite && std::isfinite(T(new_means[size_t(k * D + d)]));
      for (int64_t d = 0; d < D && finite; ++d) set_shift(k, d, T(new_means[size_t(k * D + d)]));
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
  template void suff_stats<T>(const Shape&, Covariance, const T*, const T*, bool, T*, T*, T*); \
  template void em_step<T>(const Shape&, Covariance, const T*, const T*, const T*, const T*, T*, \
                           T*, T*, T*);
GENFAST_INSTANTIATE(float)
GENFAST_INSTANTIATE(double)
#undef GENFAST_INSTANTIATE

}  // namespace genfast::gmm
