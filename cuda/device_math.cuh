// genfast CUDA: the transcendental functions that device code passes to the shared per-element
// math of cpp/include/genfast/ (CUDA's own exp and log1p), and the warp sum. Device code only:
// included by .cu files (the ELBO and Monte Carlo kernels).
#pragma once

namespace genfast::gpu {

constexpr int kWarp = 32;

/// exp, as the shared math's `Exp` function object.
struct DeviceExp {
  __device__ float operator()(float v) const { return expf(v); }
  __device__ double operator()(double v) const { return exp(v); }
};

template <class C> struct Log1pReciprocal {
  C log1p;
  C reciprocal;
};

/// {log1p(e), 1 / (1 + e)} for e = exp(-|l|) in (0, 1], as elbo::bernoulli_term's
/// `Log1pReciprocal` function object.
struct DeviceLog1pReciprocal {
  __device__ Log1pReciprocal<float> operator()(float e) const { return {log1pf(e), 1.0f / (1.0f + e)}; }
  __device__ Log1pReciprocal<double> operator()(double e) const { return {log1p(e), 1.0 / (1.0 + e)}; }
};

/// Sum over the warp's lanes, the same on every lane (butterfly: a fixed order). Every lane
/// of the warp must call it.
template <class C> __device__ __forceinline__ C warp_sum(C v) {
  for (int offset = kWarp / 2; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

}  // namespace genfast::gpu
