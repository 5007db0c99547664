// genfast VAE ELBO CUDA kernels: the per-sample ELBO, its terms and their gradients in one pass
// (one warp per row, the per-element math of genfast/elbo.hpp with CUDA's exp and log1p), and
// the backward's per-row scaling of saved gradient rows.
#include "elbo.cuh"

#include "common.cuh"
#include "device_math.cuh"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <climits>

namespace genfast::elbo::gpu {
namespace {

using genfast::gpu::check_launch;
using genfast::gpu::DeviceExp;
using genfast::gpu::DeviceLog1pReciprocal;
using genfast::gpu::kWarp;
using genfast::gpu::warp_sum;

/// Threads per block: kRowsPerBlock warps, one row each at a time.
constexpr int kThreads = 256;
constexpr int kRowsPerBlock = kThreads / kWarp;
/// Most blocks of the row-scaling kernel (enough to fill any current GPU; they stride over rows).
constexpr int64_t kMaxScaleBlocks = 8192;

/// Arithmetic type of storage type T: float for float, __half and __nv_bfloat16.
template <class T> struct compute { using type = float; };
template <> struct compute<double> { using type = double; };
template <class T> using compute_t = typename compute<T>::type;

__device__ __forceinline__ float widen(float v) { return v; }
__device__ __forceinline__ double widen(double v) { return v; }
__device__ __forceinline__ float widen(__half v) { return __half2float(v); }
__device__ __forceinline__ float widen(__nv_bfloat16 v) { return __bfloat162float(v); }

/// C -> storage type T, rounded to nearest.
template <class T> __device__ __forceinline__ T narrow(compute_t<T> v) { return T(v); }
template <> __device__ __forceinline__ __half narrow<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 narrow<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}

/// Reconstruction term of row b: this lane's share of rec_b (when kValues); writes the lane's
/// gradient elements (when kGrads).
template <class T, Likelihood kLikelihood, bool kValues, bool kGrads>
__device__ compute_t<T> reconstruction_row(const Shape& s, const Problem<T>& p, int64_t b, int lane) {
  using C = compute_t<T>;
  const T* __restrict__ x = p.x;
  const T* __restrict__ out = p.decoder_out;
  const T* __restrict__ logvar = p.decoder_logvar;
  const C scale = C(p.rec_scale), fixed_logvar = C(p.fixed_logvar), fixed_inv_std = C(exp(-0.5 * p.fixed_logvar));
  C rec = 0;
#pragma unroll 4
  for (int64_t d = lane; d < s.D; d += kWarp) {
    const int64_t at = b * s.D + d;
    const C xv = widen(x[at]), ov = widen(out[at]);
    C log_p, d_out, d_x;
    if constexpr (kLikelihood == Likelihood::bernoulli) {
      const BernoulliTerm<C> t = bernoulli_term(xv, ov, DeviceExp{}, DeviceLog1pReciprocal{});
      log_p = t.log_p, d_out = t.d_logit, d_x = t.d_x;
    } else {
      const C sv = logvar ? widen(logvar[at]) : fixed_logvar;
      const GaussianTerm<C> t = gaussian_term(xv, ov, sv, logvar ? DeviceExp{}(C(-0.5) * sv) : fixed_inv_std);
      log_p = t.log_p, d_out = t.d_mean, d_x = -t.d_mean;
      if (kGrads && p.grad_decoder_logvar) p.grad_decoder_logvar[at] = narrow<T>(weighted(scale, t.d_logvar));
    }
    if (kValues) rec += log_p;
    if (kGrads) {
      if (p.grad_decoder_out) p.grad_decoder_out[at] = narrow<T>(weighted(scale, d_out));
      if (p.grad_x) p.grad_x[at] = narrow<T>(weighted(scale, d_x));
    }
  }
  return rec;
}

/// KL term of row b: this lane's share of kl_b (when kValues); writes the lane's gradient
/// elements (when kGrads).
template <class T, bool kValues, bool kGrads>
__device__ compute_t<T> kl_row(const Shape& s, const Problem<T>& p, int64_t b, int lane) {
  using C = compute_t<T>;
  const C scale = C(p.kl_scale);
  C kl = 0;
  for (int64_t l = lane; l < s.L; l += kWarp) {
    const int64_t at = b * s.L + l;
    const KLTerm<C> t = kl_term(widen(p.mu[at]), widen(p.logvar[at]), DeviceExp{});
    if (kValues) kl += t.kl;
    if (kGrads) {
      if (p.grad_mu) p.grad_mu[at] = narrow<T>(weighted(scale, t.d_mu));
      if (p.grad_logvar) p.grad_logvar[at] = narrow<T>(weighted(scale, t.d_logvar));
    }
  }
  return kl;
}

/// Warp w of the grid handles rows w, w + (warps in the grid), ...; the row loop is uniform
/// over a warp, so every lane reaches the warp sums.
/// @param[in,out] p  inputs read, outputs written as in Problem
template <class T, Likelihood kLikelihood, bool kValues, bool kGrads>
__global__ void __launch_bounds__(kThreads) elbo_kernel(Shape s, Problem<T> p) {
  using C = compute_t<T>;
  const int lane = threadIdx.x % kWarp;
  const bool data = p.visits_data(s), latents = p.visits_latents(s);
  for (int64_t b = (int64_t(blockIdx.x) * kThreads + threadIdx.x) / kWarp; b < s.B;
       b += int64_t(gridDim.x) * kRowsPerBlock) {
    C rec = data ? reconstruction_row<T, kLikelihood, kValues, kGrads>(s, p, b, lane) : C(0);
    C kl = latents ? kl_row<T, kValues, kGrads>(s, p, b, lane) : C(0);
    if constexpr (kValues) {
      rec = warp_sum(rec);
      kl = warp_sum(kl);
      if (lane == 0) {
        if (p.elbo) p.elbo[b] = narrow<T>(p.elbo_value(rec, kl));
        if (p.rec) p.rec[b] = narrow<T>(rec);
        if (p.kl) p.kl[b] = narrow<T>(kl);
      }
    }
  }
}

/// out[b, i] = weight[b] in[b, i]: block k scales rows k, k + gridDim.x, ..., its threads
/// striding along the row.
template <class T>
__global__ void __launch_bounds__(kThreads)
    scale_rows_kernel(int64_t B, int64_t n, const T* __restrict__ in, const T* __restrict__ weight,
                      T* __restrict__ out) {
  for (int64_t b = blockIdx.x; b < B; b += gridDim.x) {
    const compute_t<T> w = widen(weight[b]);
    for (int64_t i = threadIdx.x; i < n; i += kThreads) out[b * n + i] = narrow<T>(weighted(w, widen(in[b * n + i])));
  }
}

}  // namespace

template <class T>
void evaluate(const Shape& s, Likelihood likelihood, const Problem<T>& p, cudaStream_t stream) {
  check_problem(s, likelihood, p);
  if (s.B == 0) return;
  const unsigned blocks = unsigned(std::min<int64_t>((s.B + kRowsPerBlock - 1) / kRowsPerBlock, INT_MAX));
  with_modes(likelihood, p, [&](auto lik, auto values, auto gradients) {
    elbo_kernel<T, decltype(lik)::value, decltype(values)::value, decltype(gradients)::value>
        <<<blocks, kThreads, 0, stream>>>(s, p);
    check_launch("elbo_kernel");
  });
}

template <class T>
void scale_rows(int64_t B, int64_t n, const T* in, const T* weight, T* out, cudaStream_t stream) {
  if (B == 0 || n == 0) return;
  const unsigned blocks = unsigned(std::min<int64_t>(B, kMaxScaleBlocks));
  scale_rows_kernel<T><<<blocks, kThreads, 0, stream>>>(B, n, in, weight, out);
  check_launch("scale_rows_kernel");
}

#define GENFAST_INSTANTIATE(T)                                                           \
  template void evaluate<T>(const Shape&, Likelihood, const Problem<T>&, cudaStream_t); \
  template void scale_rows<T>(int64_t, int64_t, const T*, const T*, T*, cudaStream_t);
GENFAST_INSTANTIATE(float)
GENFAST_INSTANTIATE(double)
GENFAST_INSTANTIATE(__half)
GENFAST_INSTANTIATE(__nv_bfloat16)
#undef GENFAST_INSTANTIATE

}  // namespace genfast::elbo::gpu
