// genfast Monte Carlo likelihood estimation: the per-row math of the streaming log-mean-exp,
// shared by the CPU (cpp/mc.cpp) and CUDA kernels.
//
// For log-weights a_1..a_M of one row, delivered in chunks, the state keeps the running max m
// and the shifted sums s = sum_i exp(a_i - m), q = sum_i exp(2 (a_i - m)). From them:
//   log mean = m + log(s) - log(M),  ESS = s^2 / q (the scale exp(m) cancels),
//   se(log mean) = sqrt(var(w) / M) / mean(w) = sqrt(1/ESS - 1/M)  (delta method, var with 1/M),
// all in the shifted domain, so nothing overflows for any finite a.
#pragma once

#include <genfast/common.hpp>

namespace genfast::mc {

/// Running state of one row, in the accumulation type A.
template <class A> struct LogMeanExpState {
  A max;     ///< largest log-weight seen (-inf: none finite yet)
  A sum;     ///< sum_i exp(a_i - max)
  A sum_sq;  ///< sum_i exp(2 (a_i - max))
};

/// The larger of u and v, NaN once either is NaN (so that a NaN among the log-weights reaches
/// the sums, where the caller detects it). Scalars, or GCC vectors on the CPU.
template <class V> GENFAST_HD V max_keeping_nan(V u, V v) { return (v > u) | (v != v) ? v : u; }

/// Moves the state to the shift new_max >= state.max, before adding terms exp(a - new_max).
template <class A, class Exp>
GENFAST_HD void shift_to(LogMeanExpState<A>& st, A new_max, Exp exp) {
  // A state with no finite weight has zero sums and needs no rescaling (and -inf - -inf is NaN).
  if (st.sum == A(0)) {
    st.max = new_max;
    return;
  }
  const A scale = exp(st.max - new_max);  // exp(m_old - m_new) in (0, 1]
  st.sum *= scale;
  st.sum_sq *= scale * scale;
  st.max = new_max;
}

/// The estimates of one row from its state after n_samples log-weights.
template <class A> struct LogMeanExpSummary {
  A log_mean;   ///< log((1/M) sum_i exp(a_i)); -inf when every a_i is -inf
  A ess;        ///< (sum w)^2 / sum w^2; 0 when every weight is 0
  A std_error;  ///< delta-method standard error of log_mean; +inf when every weight is 0
};

template <class A, class Log, class Sqrt>
GENFAST_HD LogMeanExpSummary<A> summarise(const LogMeanExpState<A>& st, A n_samples, Log log, Sqrt sqrt) {
  if (st.sum == A(0)) return {-A(1) / A(0), A(0), A(1) / A(0)};
  const A ess = st.sum * st.sum / st.sum_sq;
  // 1/ESS - 1/M >= 0 up to rounding (ESS <= M); clamp the rounding.
  const A var_ratio = A(1) / ess - A(1) / n_samples;
  return {st.max + log(st.sum) - log(n_samples), ess, sqrt(var_ratio > A(0) ? var_ratio : A(0))};
}

}  // namespace genfast::mc
