// genfast Monte Carlo likelihood CPU kernels: the streaming log-mean-exp (SIMD exp from
// genfast/vmath.hpp, rows over OpenMP threads) and the fused decoder log-likelihood weights.
#include "mc.hpp"

#include <genfast/simd.hpp>
#include <genfast/vmath.hpp>

#include <cmath>
#include <limits>
#include <type_traits>

namespace genfast::mc {
namespace {

template <class T> using vec = simd::vec_t<T>;
template <class T> constexpr int kLanes = simd::vector<T>::lanes;

struct ScalarExp {
  double operator()(double v) const { return std::exp(v); }
};
struct ScalarLog {
  double operator()(double v) const { return std::log(v); }
};
struct ScalarSqrt {
  double operator()(double v) const { return std::sqrt(v); }
};
struct VectorExp {
  template <class V> GENFAST_VMATH_INLINE V operator()(V v) const { return vmath::exp_approx(v); }
};
struct VectorLog1pReciprocal {
  template <class V> GENFAST_VMATH_INLINE auto operator()(V v) const { return vmath::log1p_reciprocal_unit(v); }
};

/// *p as a scalar V, or the vector at p.
template <class V, class T> V load_as(const T* p) {
  if constexpr (std::is_floating_point_v<V>)
    return *p;
  else
    return simd::load<V>(p);
}

/// Lane sum of a vector, widened to double.
template <class V> double lane_sum(V v) {
  double s = 0;
  for (int l = 0; l < simd::lanes_of<V>; ++l) s += double(v[l]);
  return s;
}

/// max_i a_i of a row of n >= 1 values (-inf when all are -inf, NaN when one is NaN).
template <class T> T row_max(const T* a, int64_t n) {
  using V = vec<T>;
  V lanes = V{} - std::numeric_limits<T>::infinity();
  int64_t i = 0;
  for (; i + kLanes<T> <= n; i += kLanes<T>) lanes = max_keeping_nan(lanes, simd::load<V>(a + i));
  T best = -std::numeric_limits<T>::infinity();
  for (int l = 0; l < kLanes<T>; ++l) best = max_keeping_nan(best, lanes[l]);
  for (; i < n; ++i) best = max_keeping_nan(best, a[i]);
  return best;
}

/// Adds exp(a_i - shift) and its square over one row of n log-weights, all a_i <= shift and none
/// NaN, to sum and sum_sq: lanes summed in T for at most kBlock vectors (terms in [0, 1]), then
/// in double.
template <class T> void add_shifted_exps(const T* a, int64_t n, T shift, double& sum, double& sum_sq) {
  using V = vec<T>;
  constexpr int64_t kBlock = 16;
  int64_t i = 0;
  while (i + kLanes<T> <= n) {
    V block_sum{}, block_sum_sq{};
    for (int64_t k = 0; k < kBlock && i + kLanes<T> <= n; ++k, i += kLanes<T>) {
      const V w = vmath::exp_nonpositive_approx(simd::load<V>(a + i) - shift);
      block_sum += w;
      block_sum_sq += w * w;
    }
    sum += lane_sum(block_sum);
    sum_sq += lane_sum(block_sum_sq);
  }
  for (; i < n; ++i) {
    const T w = vmath::exp_nonpositive_approx(T(a[i] - shift));
    sum += w;
    sum_sq += double(w) * w;
  }
}

/// Adds one row of m log-weights to its state.
template <class T> void update_row(const T* row, int64_t m, LogMeanExpState<double>& st) {
  const T chunk_max = row_max(row, m);
  if (!(chunk_max < std::numeric_limits<T>::infinity())) {
    // A NaN or +inf log-weight spoils the row: NaN sums, which the caller reports.
    st.sum = st.sum_sq = std::numeric_limits<double>::quiet_NaN();
  } else if (chunk_max != -std::numeric_limits<T>::infinity()) {
    // (A chunk of zero weights, all -inf, adds nothing.)
    if (double(chunk_max) > st.max) shift_to(st, double(chunk_max), ScalarExp{});
    // Terms are exp(a - max) with max the state's (at least the chunk's) max: all in [0, 1].
    add_shifted_exps(row, m, T(st.max), st.sum, st.sum_sq);
  }
}

/// Writes row b's estimates from its state.
template <class T>
void write_summary(const LogMeanExpState<double>& st, double n_samples, int64_t b, T* log_mean, T* ess, T* std_error) {
  const auto r = summarise(st, n_samples, ScalarLog{}, ScalarSqrt{});
  log_mean[b] = T(r.log_mean), ess[b] = T(r.ess), std_error[b] = T(r.std_error);
}

/// Log-weights below which one thread beats an OpenMP region's fork and join.
constexpr int64_t kMinParallelValues = 1 << 14;

}  // namespace

template <class T>
void logmeanexp_update(int64_t B, int64_t m, const T* a, double* max, double* sum, double* sum_sq) {
#pragma omp parallel for schedule(static) if (B * m >= kMinParallelValues)
  for (int64_t b = 0; b < B; ++b) {
    LogMeanExpState<double> st{max[b], sum[b], sum_sq[b]};
    update_row(a + b * m, m, st);
    max[b] = st.max, sum[b] = st.sum, sum_sq[b] = st.sum_sq;
  }
}

template <class T>
void logmeanexp_finish(int64_t B, double n_samples, const double* max, const double* sum, const double* sum_sq,
                       T* log_mean, T* ess, T* std_error) {
#pragma omp parallel for schedule(static) if (B >= kMinParallelValues)
  for (int64_t b = 0; b < B; ++b)
    write_summary(LogMeanExpState<double>{max[b], sum[b], sum_sq[b]}, n_samples, b, log_mean, ess, std_error);
}

template <class T> void logmeanexp(int64_t B, int64_t M, const T* a, T* log_mean, T* ess, T* std_error) {
#pragma omp parallel for schedule(static) if (B * M >= kMinParallelValues)
  for (int64_t b = 0; b < B; ++b) {
    LogMeanExpState<double> st{-std::numeric_limits<double>::infinity(), 0, 0};
    update_row(a + b * M, M, st);
    write_summary(st, double(M), b, log_mean, ess, std_error);
  }
}

namespace {

/// sum_d log p(x_d | out_d) over one row of D elements: whole vectors, then a scalar tail, each
/// through elbo.hpp's per-element terms.
template <class T, elbo::Likelihood kLikelihood>
double decoder_log_likelihood_row(int64_t D, const T* x, const T* out, const T* logvar, T fixed_logvar,
                                  T fixed_inv_std) {
  // Forced inline: a call would pass every vector through memory.
  const auto term = [&](auto xv, auto ov, const T* lv) __attribute__((always_inline)) {
    using V = decltype(xv);
    if constexpr (kLikelihood == elbo::Likelihood::bernoulli) {
      return elbo::bernoulli_term(xv, ov, VectorExp{}, VectorLog1pReciprocal{}).log_p;
    } else {
      const V s = lv ? load_as<V>(lv) : V{} + fixed_logvar;
      const V inv_std = lv ? VectorExp{}(T(-0.5) * s) : V{} + fixed_inv_std;
      return elbo::gaussian_term(xv, ov, s, inv_std).log_p;
    }
  };
  vec<T> acc{};
  int64_t d = 0;
  for (; d + kLanes<T> <= D; d += kLanes<T>)
    acc += term(simd::load<vec<T>>(x + d), simd::load<vec<T>>(out + d), logvar ? logvar + d : nullptr);
  double total = lane_sum(acc);
  for (; d < D; ++d) total += term(x[d], out[d], logvar ? logvar + d : nullptr);
  return total;
}

}  // namespace

template <class T>
void log_importance_weights(int64_t B, int64_t m, int64_t D, elbo::Likelihood likelihood, const T* x,
                            const T* decoder_out, const T* decoder_logvar, double fixed_logvar,
                            const T* log_prior, const T* log_proposal, T* log_w) {
  const T fixed_inv_std = T(std::exp(-0.5 * fixed_logvar));
  const auto run = [&](auto lik) {
#pragma omp parallel for collapse(2) schedule(static)
    for (int64_t b = 0; b < B; ++b)
      for (int64_t j = 0; j < m; ++j) {
        const int64_t at = (b * m + j) * D;
        const double rec = decoder_log_likelihood_row<T, decltype(lik)::value>(
            D, x + b * D, decoder_out + at, decoder_logvar ? decoder_logvar + at : nullptr, T(fixed_logvar),
            fixed_inv_std);
        // log w = log p(x | z) + log p(z) - log q(z | x)
        log_w[b * m + j] = T(rec + double(log_prior[b * m + j]) - double(log_proposal[b * m + j]));
      }
  };
  if (likelihood == elbo::Likelihood::bernoulli)
    run(std::integral_constant<elbo::Likelihood, elbo::Likelihood::bernoulli>{});
  else
    run(std::integral_constant<elbo::Likelihood, elbo::Likelihood::gaussian>{});
}

#define GENFAST_MC_INSTANTIATE(T)                                                                              \
  template void logmeanexp_update<T>(int64_t, int64_t, const T*, double*, double*, double*);                  \
  template void logmeanexp_finish<T>(int64_t, double, const double*, const double*, const double*, T*, T*, T*); \
  template void logmeanexp<T>(int64_t, int64_t, const T*, T*, T*, T*);                                          \
  template void log_importance_weights<T>(int64_t, int64_t, int64_t, elbo::Likelihood, const T*, const T*,    \
                                          const T*, double, const T*, const T*, T*);
GENFAST_MC_INSTANTIATE(float)
GENFAST_MC_INSTANTIATE(double)
#undef GENFAST_MC_INSTANTIATE

}  // namespace genfast::mc
