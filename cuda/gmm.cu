// genfast Gaussian-mixture CUDA kernels.
//
// E-step: a check of the parameters (the first fault found by an integer atomicMin) and the
// component constants, then one fused pass per tile of points over every component: the
// Mahalanobis terms from register tiles of (x - mu_k)^T P_k (full, tied) or of
// (x - mu_k) / sigma_k (diag, spherical), and a running log-sum-exp per point; no N x K
// temporary.
// M-step: N_k and sum r x, then the scatter about mu_k in a second pass over the data, all in
// double over fixed chunks of points whose partial sums are added in chunk order, so the
// summation order depends on the shapes alone.
#include "gmm.cuh"

#include "common.cuh"

#include <algorithm>
#include <cmath>
#include <limits>
#include <stdexcept>
#include <string>

namespace genfast::gmm::gpu {
namespace {

using genfast::gpu::check;
using genfast::gpu::check_launch;
using genfast::gpu::grid_for;

/// Threads per block of every kernel.
constexpr int kThreads = 256;

// ---- parameter check and component constants -------------------------------------------

/// The checks of one component, in the CPU kernel's order, are numbered 0 (the weight),
/// then 1 + 2i (row i's diagonal entry) and 2 + 2i (row i's entries left of the diagonal)
/// for full/tied, 1 (every entry) for diag/spherical. A fault's key is
/// k (2D + 1) + check, so the smallest key is the fault the CPU kernel raises.
__host__ __device__ int64_t checks_per_component(int64_t D) { return 2 * D + 1; }

/// Key of "no fault": the all-ones bytes of cudaMemsetAsync(0xFF).
constexpr unsigned long long kNoFault = ~0ull;

/// The fault that check number `check_index` of a component detects.
Fault fault_of_check(Covariance cov, int64_t check_index) {
  if (check_index == 0) return Fault::negative_weight;
  if (cov == Covariance::diag || cov == Covariance::spherical) return Fault::nonpositive_diagonal;
  return check_index % 2 ? Fault::nonpositive_diagonal : Fault::not_upper_triangular;
}

/// Lowers *first_fault to the key of every failed check, one thread per weight and per
/// factor entry. Integer atomicMin: the result does not depend on the order of the threads.
/// @param[in]     weights     [K]
/// @param[in]     P           precision factors, shaped as `cov` says
/// @param[in,out] first_fault kNoFault before the launch; the smallest failing key after
template <class T>
__global__ void find_fault_kernel(Shape s, Covariance cov, const T* __restrict__ weights,
                                  const T* __restrict__ P,
                                  unsigned long long* __restrict__ first_fault) {
  const int64_t per_component = checks_per_component(s.D);
  const bool matrix = cov == Covariance::full || cov == Covariance::tied;
  const int64_t items = s.K + factor_elements(cov, s.K, s.D);
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < items;
       e += int64_t(gridDim.x) * blockDim.x) {
    int64_t key = -1;
    if (e < s.K) {
      if (!(weights[e] >= T(0))) key = e * per_component;
    } else {
      const int64_t f = e - s.K;
      const T value = P[f];
      if (matrix) {
        // Entry (i, j) of factor k; the tied factor counts as component 0's, which the CPU
        // kernel checks first.
        const int64_t k = f / (s.D * s.D), i = f / s.D % s.D, j = f % s.D;
        if (i == j && !(value > T(0))) key = k * per_component + 1 + 2 * i;
        if (j < i && value != T(0)) key = k * per_component + 2 + 2 * i;
      } else {
        const int64_t k = cov == Covariance::diag ? f / s.D : f;
        if (!(value > T(0))) key = k * per_component + 1;
      }
    }
    if (key >= 0) atomicMin(first_fault, static_cast<unsigned long long>(key));
  }
}

/// constants[k] = log w_k + log det P_k - D/2 log(2 pi), one thread per component.
/// @param[in]  weights   [K]
/// @param[in]  P         precision factors, shaped as `cov` says
/// @param[out] constants [K]
template <class T>
__global__ void component_constants_kernel(Shape s, Covariance cov, const T* __restrict__ weights,
                                           const T* __restrict__ P, double* __restrict__ constants) {
  for (int64_t k = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; k < s.K;
       k += int64_t(gridDim.x) * blockDim.x)
    constants[k] = component_constant(log_det_factor(cov, s.D, k, P), double(weights[k]), s.D);
}

/// Waits for the parameter check and throws std::invalid_argument with the CPU kernel's
/// message for the first fault it found, if any.
template <class T>
void raise_first_fault(const Shape& s, Covariance cov, const T* weights,
                       const unsigned long long* first_fault, cudaStream_t stream) {
  unsigned long long key = kNoFault;
  check(cudaMemcpyAsync(&key, first_fault, sizeof key, cudaMemcpyDeviceToHost, stream),
        "cudaMemcpyAsync (gmm parameter check)");
  check(cudaStreamSynchronize(stream), "cudaStreamSynchronize (gmm parameter check)");
  if (key == kNoFault) return;
  const int64_t per_component = checks_per_component(s.D);
  const int64_t k = int64_t(key) / per_component, check_index = int64_t(key) % per_component;
  T weight = 0;  // only the negative-weight message shows it
  if (check_index == 0) {
    check(cudaMemcpyAsync(&weight, weights + k, sizeof weight, cudaMemcpyDeviceToHost, stream),
          "cudaMemcpyAsync (gmm weight)");
    check(cudaStreamSynchronize(stream), "cudaStreamSynchronize (gmm weight)");
  }
  throw std::invalid_argument(fault_message(cov, k, fault_of_check(cov, check_index), double(weight)));
}

// ---- register tiles -------------------------------------------------------------------

/// acc[i][j] += (scale a[i a_step]) b[j b_step]: the rank-1 update of a thread's R x C
/// register tile from a row of each of two shared-memory stages.
template <int R, int C, class V>
__device__ __forceinline__ void outer_product_add(V (&acc)[R][C], const V* a, int a_step,
                                                  const V* b, int b_step, V scale = V(1)) {
  V av[R], bv[C];
#pragma unroll
  for (int i = 0; i < R; ++i) av[i] = scale * a[i * a_step];
#pragma unroll
  for (int j = 0; j < C; ++j) bv[j] = b[j * b_step];
#pragma unroll
  for (int i = 0; i < R; ++i)
#pragma unroll
    for (int j = 0; j < C; ++j) acc[i][j] += av[i] * bv[j];
}

// ---- E-step ---------------------------------------------------------------------------

/// Features per shared-memory stage of the E-step kernels.
constexpr int kDepth = 16;

/// Register tile of the E-step: kColThreads threads along the columns (factor columns for
/// full/tied, components for diag/spherical) times kThreads / kColThreads along the points.
/// A thread owns `rows` points (row_threads apart) times `cols` columns (col_threads apart).
template <int kColThreads> struct EstepTile {
  static constexpr int col_threads = kColThreads;
  static constexpr int row_threads = kThreads / kColThreads;
  static constexpr int rows = 4;
  static constexpr int cols = 4;
  static constexpr int points = row_threads * rows;    ///< points per tile
  static constexpr int columns = col_threads * cols;   ///< columns per tile
  static_assert(32 % kColThreads == 0, "the lanes that share a point must lie in one warp");
  static_assert(points <= kThreads, "one thread per point in the output pass");
};
/// 256 points x 16 columns, for D <= 16 (full, tied) or K <= 16 (diag, spherical)...
using NarrowTile = EstepTile<4>;
/// ...and 64 points x 64 columns otherwise.
using WideTile = EstepTile<16>;

/// Running log-sum-exp of a stream of terms t: the largest term so far, `max`, and
/// sum = sum_t exp(t - max).
template <class T> struct RunningLse {
  static constexpr T neg_inf = -std::numeric_limits<T>::infinity();
  T max = neg_inf;
  T sum = 0;

  /// Adds exp(term). A -inf term adds nothing (there is no -inf - -inf); NaN propagates.
  __device__ void add(T term) {
    if (term > max) {
      sum = sum * exp(max - term) + T(1);
      max = term;
    } else if (term != neg_inf) {
      sum += exp(term - max);
    }
  }

  /// Adds the terms of another stream, given by its max and sum.
  __device__ void merge(T other_max, T other_sum) {
    const T m = other_max > max ? other_max : max;
    if (m == neg_inf) return;  // both streams hold only -inf terms
    sum = sum * exp(max - m) + other_sum * exp(other_max - m);
    max = m;
  }

  /// log sum_t exp(t) = shift + log(sum), -inf when every term was -inf (sum = 0 there).
  __device__ T value() const { return lse_shift<T>(max) + log(sum); }
};

/// Stages features [d0, d0 + kDepth) of the tile's points as dst[feature][point], minus
/// shift[d] where shift is given; 0 for the points and features that do not exist.
/// @param[out] dst      shared stage
/// @param[in]  X        [N, D]
/// @param[in]  shift    [D] (mu_k), or nullptr
/// @param[in]  m0       first point of the tile
/// @param[in]  n_points points of the tile that exist
template <class Tile, class T>
__device__ void stage_points(T (*dst)[Tile::points + 1], const T* __restrict__ X,
                             const T* __restrict__ shift, const Shape& s, int64_t m0,
                             int n_points, int64_t d0) {
  for (int e = threadIdx.x; e < Tile::points * kDepth; e += kThreads) {
    const int p = e / kDepth, f = e % kDepth;
    const int64_t d = d0 + f;
    dst[f][p] = p < n_points && d < s.D ? X[(m0 + p) * s.D + d] - (shift ? shift[d] : T(0)) : T(0);
  }
}

/// Output pass of an E-step tile, called by every thread: lane 0 of each point stores its
/// log p(x) in tile_log_prob; then the block writes log_prob for the tile's points and turns
/// their rows of log_resp, which hold log w_k N(x | k), into log p(k | x).
/// @param[in]     m0            first point of the tile
/// @param[in]     n_points      points of the tile that exist
/// @param[in]     lse           this thread's points' log-sum-exp (complete in lane 0)
/// @param[out]    tile_log_prob shared [Tile::points]
/// @param[out]    log_prob      [N]
/// @param[in,out] log_resp      [N, K], or nullptr
template <class Tile, class T>
__device__ void write_tile_outputs(const Shape& s, int64_t m0, int n_points,
                                   const RunningLse<T> (&lse)[Tile::rows], T* tile_log_prob,
                                   T* __restrict__ log_prob, T* __restrict__ log_resp) {
  const int tid = threadIdx.x;
  if (tid % Tile::col_threads == 0) {
#pragma unroll
    for (int i = 0; i < Tile::rows; ++i)
      tile_log_prob[tid / Tile::col_threads + i * Tile::row_threads] = lse[i].value();
  }
  __syncthreads();
  if (tid < n_points) log_prob[m0 + tid] = tile_log_prob[tid];
  if (log_resp) {
    T* rows = log_resp + m0 * s.K;  // the tile's rows are contiguous: coalesced
    for (int64_t e = tid; e < n_points * s.K; e += kThreads)
      rows[e] = log_responsibility(rows[e], tile_log_prob[e / s.K]);
  }
  __syncthreads();  // tile_log_prob is read before the next tile writes it
}

/// Adds log w_k N(x | k) of every component, for full and tied factors, into the running
/// log-sum-exp of the tile's points (the same bits in every lane of a point), and writes it
/// to their rows of log_resp. For each component k the tile's (x - mu_k) is multiplied by P_k
/// in register tiles of Tile::columns factor columns, kDepth rows of P_k per shared stage,
/// and y_j^2 is added into the Mahalanobis term.
/// @param[in]     tied     one factor for every component (else one per component)
/// @param[in]     P        [K, D, D] or [D, D] upper-triangular factors
/// @param[in,out] lse      the running log-sum-exp of this thread's points
/// (the other parameters: see log_prob_kernel)
template <class Tile, class T>
__device__ void add_matrix_terms(const Shape& s, bool tied, const T* __restrict__ X,
                                 const T* __restrict__ means, const T* __restrict__ P,
                                 const double* __restrict__ constants, int64_t m0, int n_points,
                                 RunningLse<T> (&lse)[Tile::rows], T* __restrict__ log_resp) {
  constexpr int R = Tile::rows, C = Tile::cols, TX = Tile::col_threads, TY = Tile::row_threads;
  __shared__ T diff[kDepth][Tile::points + 1];  // x - mu_k of the tile's points, [feature][point]
  __shared__ T factor[kDepth][Tile::columns];   // rows d0.. and columns j0.. of P_k
  const int tid = threadIdx.x, tx = tid % TX, ty = tid / TX;
  for (int64_t k = 0; k < s.K; ++k) {
    const T* mu = means + k * s.D;
    const T* Pk = P + (tied ? 0 : k * s.D * s.D);
    T maha[R] = {};  // this lane's columns' part of ||(x - mu_k)^T P_k||^2
    for (int64_t j0 = 0; j0 < s.D; j0 += Tile::columns) {
      // y_j = sum_{d <= j} (x_d - mu_d) P[d][j]: P is upper triangular, so the stages stop at
      // the tile's last column.
      const int64_t d_end = min(s.D, j0 + Tile::columns);
      T y[R][C] = {};
      for (int64_t d0 = 0; d0 < d_end; d0 += kDepth) {
        __syncthreads();  // every thread is done with the previous stage
        stage_points<Tile>(diff, X, mu, s, m0, n_points, d0);
        for (int e = tid; e < kDepth * Tile::columns; e += kThreads) {
          const int f = e / Tile::columns, c = e % Tile::columns;
          const int64_t d = d0 + f, j = j0 + c;
          factor[f][c] = d < s.D && j < s.D ? Pk[d * s.D + j] : T(0);
        }
        __syncthreads();
        const int depth = int(min(int64_t(kDepth), d_end - d0));
        for (int f = 0; f < depth; ++f) outer_product_add(y, &diff[f][ty], TY, &factor[f][tx], TX);
      }
#pragma unroll
      for (int i = 0; i < R; ++i)
#pragma unroll
        for (int j = 0; j < C; ++j) maha[i] += y[i][j] * y[i][j];
    }

    const T constant = T(constants[k]);
#pragma unroll
    for (int i = 0; i < R; ++i) {
      // The TX lanes of a point add their parts by a butterfly; a + b == b + a exactly, so
      // every lane ends with the same bits.
#pragma unroll
      for (int lane_mask = 1; lane_mask < TX; lane_mask <<= 1)
        maha[i] += __shfl_xor_sync(0xffffffffu, maha[i], lane_mask);
      // log w_k N(x | k) = constant_k - maha / 2
      const T log_joint = constant - T(0.5) * maha[i];
      lse[i].add(log_joint);
      const int p = ty + i * TY;
      if (log_resp && tx == 0 && p < n_points) log_resp[(m0 + p) * s.K + k] = log_joint;
    }
  }
}

/// Adds log w_k N(x | k) of every component, for diag and spherical factors, into the
/// running log-sum-exp of the tile's points (complete in lane 0 of a point), and writes it
/// to their rows of log_resp. The components stream through shared memory, Tile::columns at
/// a time, kDepth features per stage; each thread keeps the Mahalanobis terms of its points
/// x components and a log-sum-exp per point over its components, merged across the lanes of
/// the point at the end.
/// @param[in]     spherical one 1/sigma per component (else one per component and feature)
/// @param[in]     P         [K, D] or [K] 1/sigma
/// @param[in,out] lse       the running log-sum-exp of this thread's points
/// (the other parameters: see log_prob_kernel)
template <class Tile, class T>
__device__ void add_diagonal_terms(const Shape& s, bool spherical, const T* __restrict__ X,
                                   const T* __restrict__ means, const T* __restrict__ P,
                                   const double* __restrict__ constants, int64_t m0,
                                   int n_points, RunningLse<T> (&lse)[Tile::rows],
                                   T* __restrict__ log_resp) {
  constexpr int R = Tile::rows, C = Tile::cols, TX = Tile::col_threads, TY = Tile::row_threads;
  __shared__ T xs[kDepth][Tile::points + 1];   // the tile's points, [feature][point]
  __shared__ T ms[kDepth][Tile::columns + 1];  // means of the component tile, [feature][component]
  __shared__ T ps[kDepth][Tile::columns + 1];  // their 1/sigma, [feature][component]
  const int tid = threadIdx.x, tx = tid % TX, ty = tid / TX;
  for (int64_t k0 = 0; k0 < s.K; k0 += Tile::columns) {
    T maha[R][C] = {};
    for (int64_t d0 = 0; d0 < s.D; d0 += kDepth) {
      __syncthreads();  // every thread is done with the previous stage
      stage_points<Tile>(xs, X, static_cast<const T*>(nullptr), s, m0, n_points, d0);
      for (int e = tid; e < Tile::columns * kDepth; e += kThreads) {
        const int c = e / kDepth, f = e % kDepth;
        const int64_t k = k0 + c, d = d0 + f;
        const bool exists = k < s.K && d < s.D;
        ms[f][c] = exists ? means[k * s.D + d] : T(0);
        ps[f][c] = exists ? P[spherical ? k : k * s.D + d] : T(0);
      }
      __syncthreads();
      const int depth = int(min(int64_t(kDepth), s.D - d0));
      for (int f = 0; f < depth; ++f) {
        T xv[R], mv[C], pv[C];
#pragma unroll
        for (int i = 0; i < R; ++i) xv[i] = xs[f][ty + i * TY];
#pragma unroll
        for (int j = 0; j < C; ++j) {
          mv[j] = ms[f][tx + j * TX];
          pv[j] = ps[f][tx + j * TX];
        }
        // maha = sum_d ((x_d - mu_d) / sigma_d)^2 (spherical: one sigma for every d)
#pragma unroll
        for (int i = 0; i < R; ++i)
#pragma unroll
          for (int j = 0; j < C; ++j) {
            const T t = (xv[i] - mv[j]) * pv[j];
            maha[i][j] += t * t;
          }
      }
    }

#pragma unroll
    for (int j = 0; j < C; ++j) {
      const int64_t k = k0 + tx + j * TX;
      if (k >= s.K) continue;
      const T constant = T(constants[k]);
#pragma unroll
      for (int i = 0; i < R; ++i) {
        // log w_k N(x | k) = constant_k - maha / 2
        const T log_joint = constant - T(0.5) * maha[i][j];
        lse[i].add(log_joint);
        const int p = ty + i * TY;
        if (log_resp && p < n_points) log_resp[(m0 + p) * s.K + k] = log_joint;
      }
    }
  }

  // The TX lanes of a point merge their streams by a butterfly; lane 0 has them all.
#pragma unroll
  for (int i = 0; i < R; ++i) {
#pragma unroll
    for (int lane_mask = 1; lane_mask < TX; lane_mask <<= 1) {
      const T other_max = __shfl_xor_sync(0xffffffffu, lse[i].max, lane_mask);
      const T other_sum = __shfl_xor_sync(0xffffffffu, lse[i].sum, lane_mask);
      lse[i].merge(other_max, other_sum);
    }
  }
}

/// E-step pass: block b owns tiles of Tile::points points (b, b + gridDim.x, ...); for each
/// it adds every component's log w_k N(x | k) into a running log-sum-exp per point
/// (add_matrix_terms for full/tied, add_diagonal_terms for diag/spherical), then writes
/// log p(x) and turns the tile's rows of log_resp into log p(k | x).
/// @param[in]  s         shapes (N >= 1, K >= 1, D >= 1)
/// @param[in]  cov       covariance type (full/tied when kMatrix, else diag/spherical)
/// @param[in]  X         [N, D]
/// @param[in]  means     [K, D]
/// @param[in]  P         precision factors, shaped as `cov` says
/// @param[in]  constants [K] log w_k + log det P_k - D/2 log(2 pi)
/// @param[out] log_prob  [N]
/// @param[out] log_resp  [N, K], or nullptr
template <class T, class Tile, bool kMatrix>
__global__ void __launch_bounds__(kThreads)
    log_prob_kernel(Shape s, Covariance cov, const T* __restrict__ X, const T* __restrict__ means,
                    const T* __restrict__ P, const double* __restrict__ constants,
                    T* __restrict__ log_prob, T* __restrict__ log_resp) {
  __shared__ T tile_log_prob[Tile::points];
  const int64_t tiles = (s.N + Tile::points - 1) / Tile::points;
  for (int64_t tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
    const int64_t m0 = tile * Tile::points;
    const int n_points = int(min(int64_t(Tile::points), s.N - m0));
    RunningLse<T> lse[Tile::rows];  // points ty + i row_threads of this thread
    if constexpr (kMatrix)
      add_matrix_terms<Tile>(s, cov == Covariance::tied, X, means, P, constants, m0, n_points, lse, log_resp);
    else
      add_diagonal_terms<Tile>(s, cov == Covariance::spherical, X, means, P, constants, m0, n_points, lse,
                               log_resp);
    write_tile_outputs<Tile>(s, m0, n_points, lse, tile_log_prob, log_prob, log_resp);
  }
}

/// Enqueues the E-step pass with the tile shape Tile.
template <class T, class Tile>
void launch_log_prob(const Shape& s, Covariance cov, const T* X, const T* means, const T* P,
                     const double* constants, T* log_prob, T* log_resp, cudaStream_t stream) {
  const unsigned blocks = grid_for((s.N + Tile::points - 1) / Tile::points, 1);
  if (cov == Covariance::full || cov == Covariance::tied)
    log_prob_kernel<T, Tile, true><<<blocks, kThreads, 0, stream>>>(s, cov, X, means, P, constants,
                                                                     log_prob, log_resp);
  else
    log_prob_kernel<T, Tile, false><<<blocks, kThreads, 0, stream>>>(s, cov, X, means, P, constants,
                                                                      log_prob, log_resp);
  check_launch("gmm log_prob_kernel");
}

/// Sub-buffers of the E-step workspace, as byte offsets.
struct LogRespLayout {
  size_t constants = 0;    ///< double [K] component constants
  size_t first_fault = 0;  ///< unsigned long long: key of the first failed check
  size_t total = 0;
};

LogRespLayout log_resp_layout(int64_t K) {
  if (K < 1) throw std::invalid_argument("gmm_log_resp: need at least one component (K >= 1)");
  genfast::gpu::WorkspaceLayout ws;
  LogRespLayout L;
  L.constants = ws.carve(size_t(K) * sizeof(double));
  L.first_fault = ws.carve(sizeof(unsigned long long));
  L.total = ws.total;
  return L;
}

// ---- M-step ---------------------------------------------------------------------------

/// Threads along each side of an M-step output tile (kSide x kSide = kThreads).
constexpr int kSide = 16;
static_assert(kSide * kSide == kThreads, "an M-step block is a square of threads");
/// Points per shared-memory stage of the M-step kernels.
constexpr int kBatch = 32;
/// Outputs per thread along each side of the per-component, per-feature tiles: a tile is
/// kFeatureTile components x kFeatureTile features.
constexpr int kFeatureMicro = 2;
constexpr int kFeatureTile = kSide * kFeatureMicro;
/// Chunks of points are summed by separate blocks (and added in chunk order) while a chunk
/// keeps at least kMinChunkPoints points, the blocks stay about kTargetBlocks and the chunks'
/// partial sums stay within kMaxPartialBytes.
constexpr int64_t kMinChunkPoints = 512;
constexpr int64_t kTargetBlocks = 2048;
constexpr int64_t kMaxPartialBytes = int64_t(64) << 20;

/// Chunks of the N points for a pass of blocks_per_chunk blocks and partial_per_chunk
/// partial sums per chunk. It depends on the shapes alone, never on the device, so the
/// summation order (and every bit of the result) is the same on every run and every GPU.
int64_t chunk_count(int64_t N, int64_t blocks_per_chunk, int64_t partial_per_chunk) {
  const int64_t by_blocks = kTargetBlocks / std::max<int64_t>(1, blocks_per_chunk);
  const int64_t by_points = N / kMinChunkPoints;
  const int64_t by_memory =
      kMaxPartialBytes / (std::max<int64_t>(1, partial_per_chunk) * int64_t(sizeof(double)));
  return std::max<int64_t>(1, std::min({by_blocks, by_points, by_memory}));
}

/// Outputs per thread along each side of a full/tied scatter tile of (kSide micro)^2
/// entries: the smallest tile that covers D up to 64 features.
int matrix_micro(int64_t D) { return D <= kSide ? 1 : D <= 2 * kSide ? 2 : 4; }

__host__ __device__ int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

/// Pass-1 and pass-2 work of the M-step for these shapes: chunk counts, tile counts and the
/// workspace sub-buffers (byte offsets).
struct SuffStatsPlan {
  int64_t k_tiles = 0;         ///< component tiles of kFeatureTile
  int64_t sum_col_tiles = 0;   ///< feature tiles of the D + 1 pass-1 columns (the last is N_k)
  int64_t sum_chunks = 0;      ///< chunks of pass 1
  bool matrix = false;         ///< full or tied: pass 2 sums D x D matrices
  int64_t matrices = 0;        ///< scatter matrices: K (full) or 1 (tied)
  int micro = 1;               ///< matrix_micro(D)
  int64_t pairs = 0;           ///< upper-triangle tile pairs of a D x D matrix
  int64_t diag_col_tiles = 0;  ///< feature tiles of the D pass-2 columns (diag, spherical)
  int64_t scatter_chunks = 0;  ///< chunks of pass 2
  bool scatter_partials = false;  ///< pass 2 writes chunk partials (else the output directly)
  size_t mean = 0;             ///< double [K, D] mu_k
  size_t sum_partial = 0;      ///< double [sum_chunks, K, D + 1]
  size_t scatter_partial = 0;  ///< double [scatter_chunks, matrices, D, D] or [.., K, D]
  size_t total = 0;
};

SuffStatsPlan suff_stats_plan(const Shape& s, Covariance cov) {
  if (s.N < 0 || s.K < 1 || s.D < 1)
    throw std::invalid_argument("gmm_suff_stats: need N >= 0, K >= 1 and D >= 1");
  SuffStatsPlan plan;
  plan.k_tiles = ceil_div(s.K, kFeatureTile);
  plan.sum_col_tiles = ceil_div(s.D + 1, kFeatureTile);
  plan.sum_chunks = chunk_count(s.N, plan.k_tiles * plan.sum_col_tiles, s.K * (s.D + 1));
  plan.matrix = cov == Covariance::full || cov == Covariance::tied;
  int64_t scatter_partial_doubles = 0;
  if (plan.matrix) {
    plan.matrices = cov == Covariance::full ? s.K : 1;
    plan.micro = matrix_micro(s.D);
    const int64_t tiles = ceil_div(s.D, kSide * plan.micro);
    plan.pairs = tiles * (tiles + 1) / 2;
    plan.scatter_chunks = chunk_count(s.N, plan.matrices * plan.pairs, plan.matrices * s.D * s.D);
    plan.scatter_partials = plan.scatter_chunks > 1;
    if (plan.scatter_partials) scatter_partial_doubles = plan.scatter_chunks * plan.matrices * s.D * s.D;
  } else {
    plan.diag_col_tiles = ceil_div(s.D, kFeatureTile);
    plan.scatter_chunks = chunk_count(s.N, plan.k_tiles * plan.diag_col_tiles, s.K * s.D);
    plan.scatter_partials = true;  // spherical adds the features of the combined sums
    scatter_partial_doubles = plan.scatter_chunks * s.K * s.D;
  }
  genfast::gpu::WorkspaceLayout ws;
  plan.mean = ws.carve(size_t(s.K * s.D) * sizeof(double));
  plan.sum_partial = ws.carve(size_t(plan.sum_chunks * s.K * (s.D + 1)) * sizeof(double));
  plan.scatter_partial = ws.carve(size_t(scatter_partial_doubles) * sizeof(double));
  plan.total = ws.total;
  return plan;
}

/// r_nk as a double: resp holds r_nk, or log r_nk when is_log.
template <class T> __device__ double responsibility(T value, bool is_log) {
  return is_log ? exp(double(value)) : double(value);
}

/// What component_feature_kernel sums over the points of a chunk, per component k and
/// column d.
enum class PerFeature {
  sums,     ///< sum_n r_nk x_nd for d < D, and N_k = sum_n r_nk in column D
  squares,  ///< sum_n r_nk (x_nd - mu_kd)^2, the diagonal of the scatter
};

/// Per-component, per-feature sums over chunks of points, in double. Work item (chunk,
/// component tile, column tile) is summed by one block: thread (tx, ty) owns components
/// k0 + ty + i kSide and columns d0 + tx + j kSide, and adds the chunk's points in order,
/// kBatch per shared stage.
/// @param[in]  s       shapes
/// @param[in]  chunks  chunks of points
/// @param[in]  X       [N, D]
/// @param[in]  resp    [N, K] r or log r
/// @param[in]  mean    [K, D] mu_k (squares only)
/// @param[out] partial [chunks, K, columns], columns = D + 1 (sums) or D (squares)
template <class T, PerFeature kWhat>
__global__ void __launch_bounds__(kThreads)
    component_feature_kernel(Shape s, int64_t chunks, const T* __restrict__ X,
                             const T* __restrict__ resp, bool resp_is_log,
                             const double* __restrict__ mean, double* __restrict__ partial) {
  constexpr int M = kFeatureMicro;
  __shared__ double rs[kBatch][kFeatureTile];  // r of the batch's points, the tile's components
  __shared__ double xs[kBatch][kFeatureTile];  // the batch's points, the tile's columns

  const int64_t columns = kWhat == PerFeature::sums ? s.D + 1 : s.D;
  const int64_t k_tiles = ceil_div(s.K, kFeatureTile), col_tiles = ceil_div(columns, kFeatureTile);
  const int64_t items = chunks * k_tiles * col_tiles;
  const int tid = threadIdx.x, tx = tid % kSide, ty = tid / kSide;
  for (int64_t item = blockIdx.x; item < items; item += gridDim.x) {
    const int64_t k0 = item / col_tiles % k_tiles * kFeatureTile;
    const int64_t d0 = item % col_tiles * kFeatureTile;
    const int64_t chunk = item / (col_tiles * k_tiles);
    // Chunk c holds points [N c / chunks, N (c + 1) / chunks).
    const int64_t first = s.N * chunk / chunks, last = s.N * (chunk + 1) / chunks;
    double mu[M][M] = {};
    if constexpr (kWhat == PerFeature::squares) {
#pragma unroll
      for (int i = 0; i < M; ++i)
#pragma unroll
        for (int j = 0; j < M; ++j) {
          const int64_t k = k0 + ty + i * kSide, d = d0 + tx + j * kSide;
          if (k < s.K && d < s.D) mu[i][j] = mean[k * s.D + d];
        }
    }
    double acc[M][M] = {};
    for (int64_t p0 = first; p0 < last; p0 += kBatch) {
      const int n_batch = int(min(int64_t(kBatch), last - p0));
      __syncthreads();  // every thread is done with the previous stage
      for (int e = tid; e < kBatch * kFeatureTile; e += kThreads) {
        const int p = e / kFeatureTile, c = e % kFeatureTile;
        const int64_t k = k0 + c, d = d0 + c, n = p0 + p;
        rs[p][c] = p < n_batch && k < s.K ? responsibility(resp[n * s.K + k], resp_is_log) : 0.0;
        double x = 0;
        if (p < n_batch && d < s.D) x = double(X[n * s.D + d]);
        if constexpr (kWhat == PerFeature::sums) {
          if (p < n_batch && d == s.D) x = 1;
        }  // sum_n r_nk 1 = N_k
        xs[p][c] = x;
      }
      __syncthreads();
      for (int p = 0; p < n_batch; ++p) {
        if constexpr (kWhat == PerFeature::sums) {
          outer_product_add(acc, &rs[p][ty], kSide, &xs[p][tx], kSide);
        } else {
#pragma unroll
          for (int i = 0; i < M; ++i)
#pragma unroll
            for (int j = 0; j < M; ++j) {
              // r (x - mu)^2
              const double t = xs[p][tx + j * kSide] - mu[i][j];
              acc[i][j] += rs[p][ty + i * kSide] * t * t;
            }
        }
      }
    }
#pragma unroll
    for (int i = 0; i < M; ++i)
#pragma unroll
      for (int j = 0; j < M; ++j) {
        const int64_t k = k0 + ty + i * kSide, d = d0 + tx + j * kSide;
        if (k < s.K && d < columns) partial[(chunk * s.K + k) * columns + d] = acc[i][j];
      }
  }
}

/// N_k, the sums and mu_k = sums_k / (N_k + 10 eps), each added over the chunks in chunk
/// order; one thread per (component, column).
/// @param[in]  partial [chunks, K, D + 1] pass-1 partial sums (column D: N_k)
/// @param[out] nk      [K]
/// @param[out] sums    [K, D]
/// @param[out] mean    [K, D]
template <class T>
__global__ void combine_sums_kernel(Shape s, int64_t chunks, const double* __restrict__ partial,
                                    T* __restrict__ nk, T* __restrict__ sums,
                                    double* __restrict__ mean) {
  const int64_t columns = s.D + 1;
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < s.K * columns;
       e += int64_t(gridDim.x) * blockDim.x) {
    const int64_t k = e / columns, d = e % columns;
    double total = 0, n = 0;
    for (int64_t c = 0; c < chunks; ++c) {
      total += partial[(c * s.K + k) * columns + d];
      n += partial[(c * s.K + k) * columns + s.D];
    }
    if (d == s.D) {
      nk[k] = T(n);
    } else {
      sums[k * s.D + d] = T(total);
      mean[k * s.D + d] = total / (n + empty_component_guard());
    }
  }
}

/// Centred full/tied scatter over chunks of points, in double. Work item (chunk, matrix,
/// upper-triangle tile pair (ta <= tb)) is summed by one block: thread (tx, ty) owns
/// entries (a0 + ty + i kSide, b0 + tx + j kSide) and adds
/// r_nk (x_na - mu_ka)(x_nb - mu_kb) over the chunk's points in order, kBatch per shared
/// stage (tied: component by component into the same sums).
/// @param[in]  s        shapes
/// @param[in]  tied     one matrix summed over the components (else one per component)
/// @param[in]  chunks   chunks of points
/// @param[in]  X        [N, D]
/// @param[in]  resp     [N, K] r or log r
/// @param[in]  mean     [K, D] mu_k
/// @param[out] partial  [chunks, matrices, D, D] upper triangles, or nullptr when chunks == 1
/// @param[out] scatter  [matrices, D, D], both triangles (written when partial is nullptr)
template <class T, int kMicro>
__global__ void __launch_bounds__(kThreads)
    matrix_scatter_kernel(Shape s, bool tied, int64_t chunks, const T* __restrict__ X,
                          const T* __restrict__ resp, bool resp_is_log,
                          const double* __restrict__ mean, double* __restrict__ partial,
                          T* __restrict__ scatter) {
  constexpr int kTile = kSide * kMicro;
  __shared__ double rs[kBatch];          // r_nk of the batch's points
  __shared__ double da[kBatch][kTile];   // x_a - mu_ka over the tile's rows a
  __shared__ double db[kBatch][kTile];   // x_b - mu_kb over the tile's columns b

  const int64_t tiles = ceil_div(s.D, kTile), pairs = tiles * (tiles + 1) / 2;
  const int64_t matrices = tied ? 1 : s.K, items = chunks * matrices * pairs;
  const int tid = threadIdx.x, tx = tid % kSide, ty = tid / kSide;
  for (int64_t item = blockIdx.x; item < items; item += gridDim.x) {
    const int64_t matrix = item / pairs % matrices, chunk = item / (pairs * matrices);
    // Pairs are numbered row by row over the upper triangle: (0,0), (0,1), ..., (1,1), ...
    int64_t ta = 0, pair = item % pairs;
    while (pair >= tiles - ta) {
      pair -= tiles - ta;
      ++ta;
    }
    const int64_t a0 = ta * kTile, b0 = (ta + pair) * kTile;
    const int64_t first = s.N * chunk / chunks, last = s.N * (chunk + 1) / chunks;
    double acc[kMicro][kMicro] = {};
    const int64_t k_end = tied ? s.K : matrix + 1;
    for (int64_t k = tied ? 0 : matrix; k < k_end; ++k) {
      const double* mu = mean + k * s.D;
      for (int64_t p0 = first; p0 < last; p0 += kBatch) {
        const int n_batch = int(min(int64_t(kBatch), last - p0));
        __syncthreads();  // every thread is done with the previous stage
        if (tid < kBatch) rs[tid] = tid < n_batch ? responsibility(resp[(p0 + tid) * s.K + k], resp_is_log) : 0.0;
        for (int e = tid; e < kBatch * kTile; e += kThreads) {
          const int p = e / kTile, c = e % kTile;
          const int64_t a = a0 + c, b = b0 + c, n = p0 + p;
          da[p][c] = p < n_batch && a < s.D ? double(X[n * s.D + a]) - mu[a] : 0.0;
          db[p][c] = p < n_batch && b < s.D ? double(X[n * s.D + b]) - mu[b] : 0.0;
        }
        __syncthreads();
        // S_ab += (r (x_a - mu_a)) (x_b - mu_b)
        for (int p = 0; p < n_batch; ++p) outer_product_add(acc, &da[p][ty], kSide, &db[p][tx], kSide, rs[p]);
      }
    }
    // Only S_ab with a <= b is kept; S_ba is written from it, so S is exactly symmetric.
#pragma unroll
    for (int i = 0; i < kMicro; ++i)
#pragma unroll
      for (int j = 0; j < kMicro; ++j) {
        const int64_t a = a0 + ty + i * kSide, b = b0 + tx + j * kSide;
        if (a > b || b >= s.D) continue;
        if (partial) {
          partial[((chunk * matrices + matrix) * s.D + a) * s.D + b] = acc[i][j];
        } else {
          T* out = scatter + matrix * s.D * s.D;
          out[a * s.D + b] = out[b * s.D + a] = T(acc[i][j]);
        }
      }
  }
}

/// Full/tied scatter from the chunks' upper-triangle partials, added in chunk order; one
/// thread per entry, the one with a <= b writing both S_ab and S_ba.
/// @param[in]  partial [chunks, matrices, D, D]
/// @param[out] scatter [matrices, D, D]
template <class T>
__global__ void combine_matrix_kernel(Shape s, int64_t matrices, int64_t chunks,
                                      const double* __restrict__ partial, T* __restrict__ scatter) {
  const int64_t DD = s.D * s.D;
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < matrices * DD;
       e += int64_t(gridDim.x) * blockDim.x) {
    const int64_t m = e / DD, a = e % DD / s.D, b = e % s.D;
    if (a > b) continue;
    double total = 0;
    for (int64_t c = 0; c < chunks; ++c) total += partial[(c * matrices + m) * DD + a * s.D + b];
    scatter[m * DD + a * s.D + b] = scatter[m * DD + b * s.D + a] = T(total);
  }
}

/// diag: S_kd added over the chunks in chunk order, one thread per (k, d); spherical: the
/// trace, one thread per component adding those sums in feature order.
/// @param[in]  partial [chunks, K, D]
/// @param[out] scatter diag [K, D], spherical [K]
template <class T>
__global__ void combine_diagonal_kernel(Shape s, bool spherical, int64_t chunks,
                                        const double* __restrict__ partial, T* __restrict__ scatter) {
  const int64_t KD = s.K * s.D, outputs = spherical ? s.K : KD;
  const auto chunk_total = [&](int64_t kd) {
    double total = 0;
    for (int64_t c = 0; c < chunks; ++c) total += partial[c * KD + kd];
    return total;
  };
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < outputs;
       e += int64_t(gridDim.x) * blockDim.x) {
    if (!spherical) {
      scatter[e] = T(chunk_total(e));
      continue;
    }
    double trace = 0;
    for (int64_t d = 0; d < s.D; ++d) trace += chunk_total(e * s.D + d);
    scatter[e] = T(trace);
  }
}

/// Enqueues the full/tied scatter pass with kMicro outputs per thread and side.
template <class T, int kMicro>
void launch_matrix_scatter(const Shape& s, Covariance cov, const SuffStatsPlan& plan, const T* X,
                           const T* resp, bool resp_is_log, const double* mean, double* partial,
                           T* scatter, cudaStream_t stream) {
  const int64_t items = plan.scatter_chunks * plan.matrices * plan.pairs;
  matrix_scatter_kernel<T, kMicro><<<grid_for(items, 1), kThreads, 0, stream>>>(
      s, cov == Covariance::tied, plan.scatter_chunks, X, resp, resp_is_log, mean, partial, scatter);
  check_launch("gmm matrix_scatter_kernel");
}

}  // namespace

size_t log_resp_workspace_bytes(int64_t K) { return log_resp_layout(K).total; }

template <class T>
void log_resp(const Shape& s, Covariance cov, const T* X, const T* weights, const T* means,
              const T* prec_chol, T* log_prob, T* log_resp, void* workspace,
              size_t workspace_bytes, cudaStream_t stream) {
  if (s.N < 0 || s.D < 1) throw std::invalid_argument("gmm_log_resp: need N >= 0 and D >= 1");
  const LogRespLayout L = log_resp_layout(s.K);
  genfast::gpu::check_workspace("gmm_log_resp", workspace, workspace_bytes, L.total);
  char* ws = static_cast<char*>(workspace);
  double* constants = reinterpret_cast<double*>(ws + L.constants);
  auto* first_fault = reinterpret_cast<unsigned long long*>(ws + L.first_fault);

  // Parameter check on the device, one host wait for its verdict: the factors may be large
  // (K D^2) and already live on the GPU, and the error must come before any output is
  // written, with the CPU kernel's message (genfast::gmm::fault_message), which the Python
  // layer would otherwise have to repeat.
  check(cudaMemsetAsync(first_fault, 0xFF, sizeof *first_fault, stream), "cudaMemsetAsync (gmm)");
  find_fault_kernel<T><<<grid_for(s.K + factor_elements(cov, s.K, s.D), kThreads), kThreads, 0, stream>>>(
      s, cov, weights, prec_chol, first_fault);
  check_launch("gmm find_fault_kernel");
  component_constants_kernel<T><<<grid_for(s.K, kThreads), kThreads, 0, stream>>>(
      s, cov, weights, prec_chol, constants);
  check_launch("gmm component_constants_kernel");
  raise_first_fault(s, cov, weights, first_fault, stream);
  if (s.N == 0) return;

  // Matrix factors put D columns along the tile, diagonal ones K components.
  const bool matrix = cov == Covariance::full || cov == Covariance::tied;
  if ((matrix ? s.D : s.K) <= NarrowTile::columns)
    launch_log_prob<T, NarrowTile>(s, cov, X, means, prec_chol, constants, log_prob, log_resp, stream);
  else
    launch_log_prob<T, WideTile>(s, cov, X, means, prec_chol, constants, log_prob, log_resp, stream);
}

size_t suff_stats_workspace_bytes(const Shape& s, Covariance cov) {
  return suff_stats_plan(s, cov).total;
}

template <class T>
void suff_stats(const Shape& s, Covariance cov, const T* X, const T* resp, bool resp_is_log,
                T* nk, T* sums, T* scatter, void* workspace, size_t workspace_bytes,
                cudaStream_t stream) {
  const SuffStatsPlan plan = suff_stats_plan(s, cov);
  genfast::gpu::check_workspace("gmm_suff_stats", workspace, workspace_bytes, plan.total);
  char* ws = static_cast<char*>(workspace);
  double* mean = reinterpret_cast<double*>(ws + plan.mean);
  double* sum_partial = reinterpret_cast<double*>(ws + plan.sum_partial);
  double* scatter_partial = plan.scatter_partials ? reinterpret_cast<double*>(ws + plan.scatter_partial) : nullptr;

  // Pass 1: N_k and sum_n r_nk x_n, then mu_k.
  component_feature_kernel<T, PerFeature::sums>
      <<<grid_for(plan.sum_chunks * plan.k_tiles * plan.sum_col_tiles, 1), kThreads, 0, stream>>>(
          s, plan.sum_chunks, X, resp, resp_is_log, nullptr, sum_partial);
  check_launch("gmm component_feature_kernel (sums)");
  combine_sums_kernel<T><<<grid_for(s.K * (s.D + 1), kThreads), kThreads, 0, stream>>>(
      s, plan.sum_chunks, sum_partial, nk, sums, mean);
  check_launch("gmm combine_sums_kernel");

  // Pass 2: the scatter about mu_k.
  if (plan.matrix) {
    switch (plan.micro) {
      case 1:
        launch_matrix_scatter<T, 1>(s, cov, plan, X, resp, resp_is_log, mean, scatter_partial, scatter, stream);
        break;
      case 2:
        launch_matrix_scatter<T, 2>(s, cov, plan, X, resp, resp_is_log, mean, scatter_partial, scatter, stream);
        break;
      default:
        launch_matrix_scatter<T, 4>(s, cov, plan, X, resp, resp_is_log, mean, scatter_partial, scatter, stream);
        break;
    }
    if (plan.scatter_partials) {
      combine_matrix_kernel<T><<<grid_for(plan.matrices * s.D * s.D, kThreads), kThreads, 0, stream>>>(
          s, plan.matrices, plan.scatter_chunks, scatter_partial, scatter);
      check_launch("gmm combine_matrix_kernel");
    }
  } else {
    component_feature_kernel<T, PerFeature::squares>
        <<<grid_for(plan.scatter_chunks * plan.k_tiles * plan.diag_col_tiles, 1), kThreads, 0, stream>>>(
            s, plan.scatter_chunks, X, resp, resp_is_log, mean, scatter_partial);
    check_launch("gmm component_feature_kernel (squares)");
    const bool spherical = cov == Covariance::spherical;
    combine_diagonal_kernel<T><<<grid_for(spherical ? s.K : s.K * s.D, kThreads), kThreads, 0, stream>>>(
        s, spherical, plan.scatter_chunks, scatter_partial, scatter);
    check_launch("gmm combine_diagonal_kernel");
  }
}

#define GENFAST_INSTANTIATE(T)                                                                 \
  template void log_resp<T>(const Shape&, Covariance, const T*, const T*, const T*, const T*,  \
                            T*, T*, void*, size_t, cudaStream_t);                              \
  template void suff_stats<T>(const Shape&, Covariance, const T*, const T*, bool, T*, T*, T*,  \
                              void*, size_t, cudaStream_t);
GENFAST_INSTANTIATE(float)
GENFAST_INSTANTIATE(double)
#undef GENFAST_INSTANTIATE

}  // namespace genfast::gmm::gpu
