// genfast Monte Carlo likelihood CPU kernels (cpp/mc.cpp). All arrays are C-contiguous.
#pragma once

#include <cstdint>

#include <genfast/elbo.hpp>  // Likelihood
#include <genfast/mc.hpp>    // the shared streaming log-mean-exp math

namespace genfast::mc {

/// Adds a chunk of log-weights to the running state of every row (rows over OpenMP threads).
/// @param[in]     a       [B, m] log-weights (-inf allowed: a zero weight)
/// @param[in,out] max     [B] running max
/// @param[in,out] sum     [B] sum exp(a - max)
/// @param[in,out] sum_sq  [B] sum exp(2 (a - max))
template <class T>
void logmeanexp_update(int64_t B, int64_t m, const T* a, double* max, double* sum, double* sum_sq);

/// Per-row estimates after n_samples log-weights: log mean exp, ESS and standard error [B].
template <class T>
void logmeanexp_finish(int64_t B, double n_samples, const double* max, const double* sum, const double* sum_sq,
                       T* log_mean, T* ess, T* std_error);

/// The same estimates for M log-weights per row given at once, in one pass over a [B, M]
/// (rows over OpenMP threads): logmeanexp_update from an empty state, then logmeanexp_finish.
template <class T> void logmeanexp(int64_t B, int64_t M, const T* a, T* log_mean, T* ess, T* std_error);

/// Log importance weights without [B, m, D] temporaries:
///   log_w[b, j] = sum_d log p(x[b, d] | decoder_out[b, j, d]) + log_prior[b, j] - log_proposal[b, j].
/// @param[in]  x               [B, D]
/// @param[in]  decoder_out     [B, m, D] Bernoulli logits or Gaussian means
/// @param[in]  decoder_logvar  [B, m, D] Gaussian log-variances, or null: fixed_logvar everywhere
/// @param[in]  log_prior       [B, m] log p(z)
/// @param[in]  log_proposal    [B, m] log q(z | x)
/// @param[out] log_w           [B, m]
template <class T>
void log_importance_weights(int64_t B, int64_t m, int64_t D, elbo::Likelihood likelihood, const T* x,
                            const T* decoder_out, const T* decoder_logvar, double fixed_logvar,
                            const T* log_prior, const T* log_proposal, T* log_w);

}  // namespace genfast::mc
