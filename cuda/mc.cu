// genfast Monte Carlo likelihood CUDA kernels: the streaming log-mean-exp (a team of threads
// per row: max, then shifted sums into the float64 state of genfast/mc.hpp) and the fused
// decoder log-likelihood importance weights (a warp per (b, j) row, the per-element terms of
// genfast/elbo.hpp with CUDA's exp and log1p).
#include "mc.cuh"

#include "common.cuh"
#include "device_math.cuh"

#include <cmath>
#include <limits>
#include <stdexcept>
#include <type_traits>

namespace genfast::mc::gpu {
namespace {

using namespace genfast::gpu;  // check_launch, grid_for and device_math.cuh's exp, log1p and warp sum

/// Threads per block of every kernel here.
constexpr int kThreads = 256;
constexpr int kWarpsPerBlock = kThreads / kWarp;
/// Samples per row from which the log-mean-exp update gives each row a block instead of a warp.
constexpr int64_t kBlockTeamMinSamples = 1024;

struct DeviceLog {
  __device__ double operator()(double v) const { return log(v); }
};
struct DeviceSqrt {
  __device__ double operator()(double v) const { return sqrt(v); }
};
struct Plus {
  __device__ double operator()(double u, double v) const { return u + v; }
};
struct MaxKeepingNan {
  __device__ double operator()(double u, double v) const { return max_keeping_nan(u, v); }
};

/// op over the v of the kTeam threads of a team (a warp, or the whole block), the same on
/// every thread of the team: a butterfly within each warp, then the warps' results in warp
/// order. Every thread of the team must call it; `slots` is the block's shared scratch.
template <int kTeam, class Op> __device__ double team_reduce(double v, Op op, double* slots) {
  for (int offset = kWarp / 2; offset > 0; offset /= 2) v = op(v, __shfl_xor_sync(0xffffffffu, v, offset));
  if constexpr (kTeam == kWarp) {
    return v;
  } else {
    static_assert(kTeam == kThreads, "a team is a warp or the whole block");
    __syncthreads();  // every thread has read the slots of the previous reduction
    if (threadIdx.x % kWarp == 0) slots[threadIdx.x / kWarp] = v;
    __syncthreads();
    double total = slots[0];
    for (int w = 1; w < kWarpsPerBlock; ++w) total = op(total, slots[w]);
    return total;
  }
}

/// Team t of the grid updates rows t, t + (teams in the grid), ...; the row loop is uniform
/// over a team, so every thread of it reaches the team reductions. Rank 0 of the team alone
/// writes the row's state, after every thread of the team has read it.
/// @param[in]     a                 [B, m]
/// @param[in,out] max, sum, sum_sq  [B]
template <class T, int kTeam>
__global__ void __launch_bounds__(kThreads)
    logmeanexp_update_kernel(int64_t B, int64_t m, const T* __restrict__ a, double* __restrict__ max,
                             double* __restrict__ sum, double* __restrict__ sum_sq) {
  constexpr int kTeamsPerBlock = kThreads / kTeam;
  constexpr double kInf = std::numeric_limits<double>::infinity();
  __shared__ double slots[kWarpsPerBlock];
  const int rank = threadIdx.x % kTeam;
  for (int64_t b = int64_t(blockIdx.x) * kTeamsPerBlock + threadIdx.x / kTeam; b < B;
       b += int64_t(gridDim.x) * kTeamsPerBlock) {
    const T* row = a + b * m;
    double local_max = -kInf;
    for (int64_t i = rank; i < m; i += kTeam) local_max = max_keeping_nan(local_max, double(row[i]));
    const double chunk_max = team_reduce<kTeam>(local_max, MaxKeepingNan{}, slots);
    // A chunk of zero weights (all -inf) adds nothing (chunk_max is the same on the whole team).
    if (chunk_max == -kInf) continue;
    LogMeanExpState<double> st{max[b], sum[b], sum_sq[b]};
    // Terms are exp(a - shift) with shift = max(state's max, chunk's max): all in [0, 1]. A NaN
    // chunk_max keeps the state's shift, and the NaN terms make the sums NaN.
    const bool raises_max = chunk_max > st.max;
    const T shift = T(raises_max ? chunk_max : st.max);
    double chunk_sum = 0, chunk_sum_sq = 0;
    for (int64_t i = rank; i < m; i += kTeam) {
      const T w = DeviceExp{}(T(row[i] - shift));
      chunk_sum += w;
      chunk_sum_sq += double(w) * w;
    }
    chunk_sum = team_reduce<kTeam>(chunk_sum, Plus{}, slots);
    chunk_sum_sq = team_reduce<kTeam>(chunk_sum_sq, Plus{}, slots);
    if (rank == 0) {
      if (raises_max) shift_to(st, chunk_max, DeviceExp{});
      st.sum += chunk_sum, st.sum_sq += chunk_sum_sq;
      max[b] = st.max, sum[b] = st.sum, sum_sq[b] = st.sum_sq;
    }
  }
}

/// Thread i of the grid summarises rows i, i + (threads in the grid), ...
template <class T>
__global__ void __launch_bounds__(kThreads)
    logmeanexp_finish_kernel(int64_t B, double n_samples, const double* __restrict__ max,
                             const double* __restrict__ sum, const double* __restrict__ sum_sq,
                             T* __restrict__ log_mean, T* __restrict__ ess, T* __restrict__ std_error) {
  for (int64_t b = int64_t(blockIdx.x) * kThreads + threadIdx.x; b < B; b += int64_t(gridDim.x) * kThreads) {
    const auto r = summarise(LogMeanExpState<double>{max[b], sum[b], sum_sq[b]}, n_samples, DeviceLog{},
                             DeviceSqrt{});
    log_mean[b] = T(r.log_mean), ess[b] = T(r.ess), std_error[b] = T(r.std_error);
  }
}

/// Warp w of the grid handles (b, j) rows w, w + (warps in the grid), ... of the B m rows; the
/// row loop is uniform over a warp, so every lane reaches the warp sum.
template <class T, elbo::Likelihood kLikelihood>
__global__ void __launch_bounds__(kThreads)
    log_importance_weights_kernel(int64_t B, int64_t m, int64_t D, const T* __restrict__ x,
                                  const T* __restrict__ decoder_out, const T* __restrict__ decoder_logvar,
                                  T fixed_logvar, T fixed_inv_std, const T* __restrict__ log_prior,
                                  const T* __restrict__ log_proposal, T* __restrict__ log_w) {
  const int lane = threadIdx.x % kWarp;
  for (int64_t row = (int64_t(blockIdx.x) * kThreads + threadIdx.x) / kWarp; row < B * m;
       row += int64_t(gridDim.x) * kWarpsPerBlock) {
    const T* xb = x + row / m * D;
    const T* out = decoder_out + row * D;
    const T* logvar = decoder_logvar ? decoder_logvar + row * D : nullptr;
    double rec = 0;
    for (int64_t d = lane; d < D; d += kWarp) {
      if constexpr (kLikelihood == elbo::Likelihood::bernoulli) {
        rec += elbo::bernoulli_term(xb[d], out[d], DeviceExp{}, DeviceLog1pReciprocal{}).log_p;
      } else {
        const T s = logvar ? logvar[d] : fixed_logvar;
        rec += elbo::gaussian_term(xb[d], out[d], s, logvar ? DeviceExp{}(T(-0.5) * s) : fixed_inv_std).log_p;
      }
    }
    rec = warp_sum(rec);
    // log w = log p(x | z) + log p(z) - log q(z | x)
    if (lane == 0) log_w[row] = T(rec + double(log_prior[row]) - double(log_proposal[row]));
  }
}

}  // namespace

template <class T>
void logmeanexp_update(int64_t B, int64_t m, const T* a, double* max, double* sum, double* sum_sq,
                       cudaStream_t stream) {
  if (B < 0 || m < 0) throw std::invalid_argument("B and m must be non-negative");
  if (B == 0 || m == 0) return;
  if (m >= kBlockTeamMinSamples) {
    logmeanexp_update_kernel<T, kThreads><<<grid_for(B, 1), kThreads, 0, stream>>>(B, m, a, max, sum, sum_sq);
  } else {
    logmeanexp_update_kernel<T, kWarp>
        <<<grid_for(B, kWarpsPerBlock), kThreads, 0, stream>>>(B, m, a, max, sum, sum_sq);
  }
  check_launch("logmeanexp_update_kernel");
}

template <class T>
void logmeanexp_finish(int64_t B, double n_samples, const double* max, const double* sum, const double* sum_sq,
                       T* log_mean, T* ess, T* std_error, cudaStream_t stream) {
  if (B < 0) throw std::invalid_argument("B must be non-negative");
  if (!(n_samples >= 1)) throw std::invalid_argument("n_samples must be at least 1");
  if (B == 0) return;
  logmeanexp_finish_kernel<T>
      <<<grid_for(B, kThreads), kThreads, 0, stream>>>(B, n_samples, max, sum, sum_sq, log_mean, ess, std_error);
  check_launch("logmeanexp_finish_kernel");
}

template <class T>
void log_importance_weights(int64_t B, int64_t m, int64_t D, elbo::Likelihood likelihood, const T* x,
                            const T* decoder_out, const T* decoder_logvar, double fixed_logvar,
                            const T* log_prior, const T* log_proposal, T* log_w, cudaStream_t stream) {
  if (B < 0 || m < 0 || D < 0) throw std::invalid_argument("B, m and D must be non-negative");
  if (decoder_logvar && likelihood == elbo::Likelihood::bernoulli)
    throw std::invalid_argument("the Bernoulli likelihood has no log-variance");
  if (B == 0 || m == 0) return;
  const T fixed_inv_std = T(std::exp(-0.5 * fixed_logvar));
  const auto launch = [&](auto lik) {
    log_importance_weights_kernel<T, decltype(lik)::value><<<grid_for(B * m, kWarpsPerBlock), kThreads, 0, stream>>>(
        B, m, D, x, decoder_out, decoder_logvar, T(fixed_logvar), fixed_inv_std, log_prior, log_proposal, log_w);
  };
  if (likelihood == elbo::Likelihood::bernoulli)
    launch(std::integral_constant<elbo::Likelihood, elbo::Likelihood::bernoulli>{});
  else
    launch(std::integral_constant<elbo::Likelihood, elbo::Likelihood::gaussian>{});
  check_launch("log_importance_weights_kernel");
}

#define GENFAST_MC_GPU_INSTANTIATE(T)                                                                        \
  template void logmeanexp_update<T>(int64_t, int64_t, const T*, double*, double*, double*, cudaStream_t);  \
  template void logmeanexp_finish<T>(int64_t, double, const double*, const double*, const double*, T*, T*, \
                                     T*, cudaStream_t);                                                      \
  template void log_importance_weights<T>(int64_t, int64_t, int64_t, elbo::Likelihood, const T*, const T*,  \
                                          const T*, double, const T*, const T*, T*, cudaStream_t);
GENFAST_MC_GPU_INSTANTIATE(float)
GENFAST_MC_GPU_INSTANTIATE(double)
#undef GENFAST_MC_GPU_INSTANTIATE

}  // namespace genfast::mc::gpu
