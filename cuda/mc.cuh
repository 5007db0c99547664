// genfast Monte Carlo likelihood CUDA kernels (cuda/mc.cu): host-side launchers, declared in
// plain C++ so that the bindings (host compiler) can call them. All arrays are C-contiguous
// device memory; every launcher only enqueues work on `stream` and never synchronises.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include <genfast/elbo.hpp>  // Likelihood
#include <genfast/mc.hpp>    // the shared streaming log-mean-exp math

namespace genfast::mc::gpu {

/// The contract of the CPU genfast::mc::logmeanexp_update (cpp/mc.hpp) on device memory: adds
/// a chunk of log-weights to the running float64 state of every row. Per row, the max of the
/// chunk, then sum exp(a - max) and its square, each thread of a team summing its elements in
/// order and the team adding the threads in a fixed tree: a warp per row for m < 1024, a block
/// (256 threads) per row from there. The order depends on m only, so the same inputs give the
/// same bits on every run and device. A NaN or +inf in a row makes its sums NaN.
/// @param[in]     a       [B, m] log-weights (-inf allowed: a zero weight)
/// @param[in,out] max     [B] running max
/// @param[in,out] sum     [B] sum exp(a - max)
/// @param[in,out] sum_sq  [B] sum exp(2 (a - max))
/// @param[in]     stream  stream the kernel is enqueued on
template <class T>
void logmeanexp_update(int64_t B, int64_t m, const T* a, double* max, double* sum, double* sum_sq,
                       cudaStream_t stream);

/// Per-row estimates after n_samples log-weights (genfast::mc::summarise, a thread per row).
/// @param[out] log_mean, ess, std_error  [B] each
template <class T>
void logmeanexp_finish(int64_t B, double n_samples, const double* max, const double* sum, const double* sum_sq,
                       T* log_mean, T* ess, T* std_error, cudaStream_t stream);

/// The contract of the CPU genfast::mc::log_importance_weights on device memory, a warp per
/// (b, j) row: log_w[b, j] = sum_d log p(x[b, d] | decoder_out[b, j, d]) + log_prior[b, j] -
/// log_proposal[b, j], the per-element terms of genfast/elbo.hpp computed in T and summed in
/// double (each lane in order, then a fixed tree over the lanes).
/// @param[in]  x               [B, D]
/// @param[in]  decoder_out     [B, m, D] Bernoulli logits or Gaussian means
/// @param[in]  decoder_logvar  [B, m, D] Gaussian log-variances, or null: fixed_logvar everywhere
/// @param[in]  log_prior       [B, m] log p(z)
/// @param[in]  log_proposal    [B, m] log q(z | x)
/// @param[out] log_w           [B, m]
/// @param[in]  stream          stream the kernel is enqueued on
/// Throws std::invalid_argument for negative sizes or a log-variance with the Bernoulli likelihood.
template <class T>
void log_importance_weights(int64_t B, int64_t m, int64_t D, elbo::Likelihood likelihood, const T* x,
                            const T* decoder_out, const T* decoder_logvar, double fixed_logvar,
                            const T* log_prior, const T* log_proposal, T* log_w, cudaStream_t stream);

}  // namespace genfast::mc::gpu
