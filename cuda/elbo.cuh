// genfast VAE ELBO CUDA kernels (cuda/elbo.cu): host-side launchers, declared in plain C++ so
// that the bindings (host compiler) can call them. All arrays are C-contiguous device memory;
// every launcher only enqueues work on `stream` and never synchronises.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include <genfast/elbo.hpp>  // Shape, Problem, Likelihood and the shared math

namespace genfast::elbo::gpu {

/// The contract of the CPU genfast::elbo::evaluate (cpp/elbo.hpp) on device memory: writes
/// every output of `p` that is not null in one pass over the rows. T is the storage type:
/// float, double, __half or __nv_bfloat16; arithmetic and per-sample sums are in float (double
/// for double). One warp per row; each lane sums its elements in order and the warp adds the
/// lanes in a fixed tree, so results are the same on every run.
/// Throws std::invalid_argument as check_problem does.
/// @param[in] stream  stream the kernel is enqueued on
template <class T>
void evaluate(const Shape& s, Likelihood likelihood, const Problem<T>& p, cudaStream_t stream);

/// out[b, i] = weight[b] in[b, i] (arithmetic in float, double for double).
/// @param[in]  in      [B, n]
/// @param[in]  weight  [B]
/// @param[out] out     [B, n]
/// @param[in]  stream  stream the kernel is enqueued on
template <class T>
void scale_rows(int64_t B, int64_t n, const T* in, const T* weight, T* out, cudaStream_t stream);

}  // namespace genfast::elbo::gpu
