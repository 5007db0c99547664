// genfast VAE ELBO CPU kernels (cpp/elbo.cpp). All arrays are C-contiguous.
#pragma once

#include <cstdint>

#include <genfast/elbo.hpp>  // Shape, Problem, Likelihood and the shared math

namespace genfast::elbo {

/// Writes every output of `p` that is not null, in one pass over the rows: the per-sample
/// ELBO, reconstruction log-likelihood and KL, and the gradients of
/// sum_b (rec_scale rec_b + kl_scale kl_b). Rows are split over OpenMP threads; each row is
/// summed in a fixed order (in double for float data), so results are bitwise the same for
/// any thread count.
/// Throws std::invalid_argument when an input that a requested output needs is missing, or
/// for a log-variance with the Bernoulli likelihood.
template <class T>
void evaluate(const Shape& s, Likelihood likelihood, const Problem<T>& p);

/// out[b, i] = weight[b] in[b, i]: per-sample gradients saved by the forward pass, scaled by
/// the backward's per-sample upstream gradients. A zero weight gives zeros even where in[b, i]
/// is infinite (elbo's `weighted`: a term of weight zero, e.g. the KL term at beta = 0, has
/// no gradient).
/// @param[in]  in      [B, n]
/// @param[in]  weight  [B]
/// @param[out] out     [B, n] (may be `in`)
template <class T> void scale_rows(int64_t B, int64_t n, const T* in, const T* weight, T* out);

}  // namespace genfast::elbo
