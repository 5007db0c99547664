// genfast Gaussian-mixture CPU kernels (cpp/gmm.cpp). All arrays are C-contiguous.
#pragma once

#include <cstdint>

#include <genfast/gmm.hpp>  // Shape, Covariance and the shared math

namespace genfast::gmm {

/// E-step: per-sample log-likelihood log p(x_n) = logsumexp_k [log w_k + log N(x_n | k)],
/// and optionally the log-responsibilities. Works on tiles of points, so without
/// log_resp it needs O(N) memory in all. A point whose every component gives -inf gets
/// log p = -inf (never NaN).
/// Throws std::invalid_argument if a factor is not upper triangular with a positive
/// diagonal, or a weight is negative.
/// @param[in]  X          [N, D] points
/// @param[in]  weights    [K] mixture weights (>= 0)
/// @param[in]  means      [K, D]
/// @param[in]  prec_chol  precision Cholesky factors, shaped as `cov` says
/// @param[out] log_prob   [N] log p(x_n)
/// @param[out] log_resp   [N, K] log p(k | x_n), or nullptr to skip it
template <class T>
void log_resp(const Shape& s, Covariance cov, const T* X, const T* weights, const T* means,
              const T* prec_chol, T* log_prob, T* log_resp);

/// M-step statistics, accumulated in double over fixed blocks of points (bitwise the same
/// for any thread count). The scatter is centred: it is summed about
/// mu_k = sums_k / (N_k + 10 eps) in a second pass, never as E[x x^T] - mu mu^T, so float32
/// data far from the origin keeps positive variances.
/// @param[in]  X          [N, D] points
/// @param[in]  resp       [N, K] responsibilities, or log-responsibilities if resp_is_log
/// @param[out] nk         [K] sum_n r_nk
/// @param[out] sums       [K, D] sum_n r_nk x_n
/// @param[out] scatter    full [K, D, D]; tied [D, D] (summed over k); diag [K, D];
///                        spherical [K] (the trace): sum_n r_nk (x_n - mu_k)(x_n - mu_k)^T
template <class T>
void suff_stats(const Shape& s, Covariance cov, const T* X, const T* resp, bool resp_is_log,
                T* nk, T* sums, T* scatter);

/// One whole EM iteration's statistics in one pass over X, without the N x K
/// responsibilities: the E-step of `log_resp` on a tile of points, then that tile's
/// responsibilities r_nk added into N_k, the sums and the scatter, accumulated in double over
/// fixed blocks of points (bitwise the same for any thread count). The scatter is summed
/// about the current means m_k (tied: about the first point, one rank-1 update per point) and then moved exactly to mu_k = sums_k / (N_k + 10 eps), so the outputs are those
/// of suff_stats(X, exp(log_resp)) up to rounding, and float32 data far from the origin
/// never forms E[x x^T] - mu mu^T.
/// Throws std::invalid_argument as log_resp does.
/// @param[in]  X          [N, D] points
/// @param[in]  weights    [K] mixture weights (>= 0)
/// @param[in]  means      [K, D] current means m_k
/// @param[in]  prec_chol  precision Cholesky factors, shaped as `cov` says
/// @param[out] log_prob   [N] log p(x_n) under the current parameters
/// @param[out] nk, sums, scatter  as suff_stats
template <class T>
void em_step(const Shape& s, Covariance cov, const T* X, const T* weights, const T* means,
             const T* prec_chol, T* log_prob, T* nk, T* sums, T* scatter);

}  // namespace genfast::gmm
