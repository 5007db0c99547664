// genfast Gaussian-mixture CUDA kernels (cuda/gmm.cu): host-side launchers, declared in plain
// C++ so that the bindings (host compiler) can call them. All arrays are C-contiguous device
// memory. suff_stats only enqueues work on `stream`; log_resp waits for `stream` once, to
// raise an error for invalid parameters before it writes any output (as the CPU kernel does).
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

#include <genfast/gmm.hpp>  // Shape, Covariance and the shared math

namespace genfast::gmm::gpu {

using genfast::gmm::Covariance;
using genfast::gmm::Shape;

/// Bytes of device workspace that log_resp needs for K components (any N, D, device).
/// Throws std::invalid_argument if K < 1.
size_t log_resp_workspace_bytes(int64_t K);

/// E-step, the contract of the CPU genfast::gmm::log_resp: per-sample log-likelihood
/// log p(x_n) = logsumexp_k [log w_k + log N(x_n | k)], and optionally the
/// log-responsibilities, in one pass over the points per component tile; without log_resp it
/// needs O(K) workspace and no N x K temporary. A point whose every component gives -inf gets
/// log p = -inf (never NaN). Deterministic: the same inputs give the same bits on every run.
/// Throws std::invalid_argument, with the CPU kernel's message and before writing anything,
/// if a factor is not upper triangular with a positive diagonal or a weight is negative
/// (also when N = 0); and for N < 0, K < 1, D < 1 or a short workspace.
/// @param[in]  X          [N, D] points
/// @param[in]  weights    [K] mixture weights (>= 0)
/// @param[in]  means      [K, D]
/// @param[in]  prec_chol  precision Cholesky factors, shaped as `cov` says
/// @param[out] log_prob   [N] log p(x_n)
/// @param[out] log_resp   [N, K] log p(k | x_n), or nullptr to skip it
/// @param[in]  workspace  device scratch of log_resp_workspace_bytes(K) bytes, 256-byte aligned
/// @param[in]  workspace_bytes its size
/// @param[in]  stream     stream the work is enqueued on (and synchronised once)
template <class T>
void log_resp(const Shape& s, Covariance cov, const T* X, const T* weights, const T* means,
              const T* prec_chol, T* log_prob, T* log_resp, void* workspace,
              size_t workspace_bytes, cudaStream_t stream);

/// Bytes of device workspace that suff_stats needs for these shapes (any device). It grows
/// with K D (full, tied: K D^2) and never with N K.
/// Throws std::invalid_argument for N < 0, K < 1 or D < 1.
size_t suff_stats_workspace_bytes(const Shape& s, Covariance cov);

/// M-step statistics, the contract of the CPU genfast::gmm::suff_stats: accumulated in double
/// over fixed chunks of points, whose partial sums are added in chunk order (no floating-point
/// atomics), so the same inputs give the same bits on every run. The scatter is centred: it
/// is summed about mu_k = sums_k / (N_k + 10 eps) in a second pass, never as
/// E[x x^T] - mu mu^T. N = 0 gives nk = 0, sums = 0 and scatter = 0.
/// @param[in]  X          [N, D] points
/// @param[in]  resp       [N, K] responsibilities, or log-responsibilities if resp_is_log
/// @param[out] nk         [K] sum_n r_nk
/// @param[out] sums       [K, D] sum_n r_nk x_n
/// @param[out] scatter    full [K, D, D]; tied [D, D] (summed over k); diag [K, D];
///                        spherical [K] (the trace): sum_n r_nk (x_n - mu_k)(x_n - mu_k)^T
/// @param[in]  workspace  device scratch of suff_stats_workspace_bytes(s, cov) bytes,
///                        256-byte aligned
/// @param[in]  workspace_bytes its size; std::invalid_argument if too small
/// @param[in]  stream     stream the kernels are enqueued on
template <class T>
void suff_stats(const Shape& s, Covariance cov, const T* X, const T* resp, bool resp_is_log,
                T* nk, T* sums, T* scatter, void* workspace, size_t workspace_bytes,
                cudaStream_t stream);

}  // namespace genfast::gmm::gpu
