// genfast k-means CUDA kernels: the fused distance + argmin assignment (an SGEMM-style tiling
// of X C^T that keeps only each point's running best), and the deterministic M-step sums
// (a stable radix sort of the points by cluster, then reductions in an order fixed by the
// shapes alone).
#include "kmeans.cuh"

#include "common.cuh"

#include <genfast/kmeans.hpp>

#include <cub/device/device_radix_sort.cuh>

#include <algorithm>
#include <climits>
#include <limits>
#include <stdexcept>
#include <string>

namespace genfast::kmeans::gpu {
namespace {

using genfast::gpu::check;
using genfast::gpu::check_launch;
using genfast::gpu::grid_for;

/// Threads per block of the one-thread-per-element kernels.
constexpr int kElementThreads = 256;
/// Largest grid.y of a launch; the assign kernel strides over larger batches.
constexpr int64_t kMaxGridY = 65535;

// ---- assign: fused distance + argmin ---------------------------------------------------

/// Threads of the assign kernel: kThreadsX along centres times kThreadsY along points. A
/// warp holds two rows of kThreadsX lanes, so the lanes sharing a point are a half-warp.
constexpr int kThreadsX = 16;
constexpr int kThreadsY = 16;
constexpr int kAssignThreads = kThreadsX * kThreadsY;
/// Consecutive points (or centres) a thread reads from shared memory together, in 16-byte
/// loads: one for four floats, two for four doubles.
constexpr int kGroup = 4;
/// Register micro-tile per thread: kRows points (two groups of kGroup, kPoints / 2 apart)
/// times kCols consecutive centres.
constexpr int kRows = 2 * kGroup;
constexpr int kCols = kGroup;
/// Block tile: kPoints points against kCentres centres, kDepth features per stage.
constexpr int kPoints = kThreadsY * kRows;
constexpr int kCentres = kThreadsX * kCols;
constexpr int kDepth = 16;
/// Row padding of the transposed shared tiles: keeps rows 16-byte aligned and spreads the
/// transposing stores over the banks.
constexpr int kPad = 4;
/// Values each thread loads per stage.
constexpr int kPointLoads = kPoints * kDepth / kAssignThreads;
constexpr int kCentreLoads = kCentres * kDepth / kAssignThreads;

static_assert(32 % kThreadsX == 0, "lanes sharing a point must lie in one warp");
static_assert(kPoints * kDepth % kAssignThreads == 0 && kCentres * kDepth % kAssignThreads == 0,
              "a stage must split evenly over the threads");
static_assert(kCentres <= kAssignThreads && kPoints <= kAssignThreads,
              "one thread per centre norm and per output point");

/// Index within the block tile of the i-th point of the thread in row ty.
__device__ __forceinline__ int point_of(int i, int ty) {
  return (i / kGroup) * (kPoints / 2) + ty * kGroup + i % kGroup;
}

/// Loads features [d0, d0 + kDepth) of a tile of rows of a row-major [*, D] matrix into
/// registers, zero past the last valid row or feature. Thread t takes the stage's elements
/// t, t + kAssignThreads, ... (row-major), so a warp reads whole feature runs of two rows.
/// @param[out] reg    this thread's elements of the stage
/// @param[in]  rows   first row of the tile
/// @param[in]  n_rows rows of the tile that exist
/// @param[in]  D      features (row length)
/// @param[in]  d0     first feature of the stage
template <int kCount, class T>
__device__ __forceinline__ void load_stage(T (&reg)[kCount], const T* rows, int64_t n_rows,
                                           int64_t D, int64_t d0) {
#pragma unroll
  for (int s = 0; s < kCount; ++s) {
    const int e = threadIdx.x + kAssignThreads * s;
    const int r = e / kDepth, f = e % kDepth;
    reg[s] = (r < n_rows && d0 + f < D) ? rows[r * D + d0 + f] : T(0);
  }
}

/// Stores a stage loaded by load_stage transposed, as tile[feature][row].
/// @param[out] tile shared tile, kDepth rows of kWidth values
/// @param[in]  reg  this thread's elements of the stage
template <int kWidth, int kCount, class T>
__device__ __forceinline__ void store_stage(T (*tile)[kWidth], const T (&reg)[kCount]) {
#pragma unroll
  for (int s = 0; s < kCount; ++s) {
    const int e = threadIdx.x + kAssignThreads * s;
    tile[e % kDepth][e / kDepth] = reg[s];
  }
}

/// Copies kCount consecutive values from 16-byte aligned shared memory in 16-byte loads.
/// @param[out] dst registers
/// @param[in]  src 16-byte aligned shared memory
template <int kCount, class T>
__device__ __forceinline__ void load_vec(T* dst, const T* src) {
  constexpr int kPer = 16 / int(sizeof(T));
  static_assert(kCount % kPer == 0, "whole 16-byte vectors only");
  struct alignas(16) Vec {
    T v[kPer];
  };
#pragma unroll
  for (int i = 0; i < kCount / kPer; ++i) {
    const Vec v = reinterpret_cast<const Vec*>(src)[i];
#pragma unroll
    for (int j = 0; j < kPer; ++j) dst[i * kPer + j] = v.v[j];
  }
}

/// Nearest centre of each point. Block (x, y) owns points [x * kPoints, (x+1) * kPoints) of
/// problems y, y + gridDim.y, ...; it streams all centres through shared memory, kCentres
/// at a time, and never stores a distance matrix.
/// @param[in]  s       shapes (D >= 1, 1 <= K < 2^31)
/// @param[in]  X       [B, N, D] points
/// @param[in]  C       [B, K, D] centres
/// @param[out] labels  [B, N] nearest centre, lowest index on ties
/// @param[out] sq_dist [B, N] squared distance to it, summed directly in double
template <class T>
__global__ void __launch_bounds__(kAssignThreads)
    assign_kernel(Shape s, const T* __restrict__ X, const T* __restrict__ C,
                  int64_t* __restrict__ labels, T* __restrict__ sq_dist) {
  __shared__ __align__(16) T xs[kDepth][kPoints + kPad];   // point stage, [feature][point]
  __shared__ __align__(16) T cs[kDepth][kCentres + kPad];  // centre stage, [feature][centre]
  __shared__ T c_norm[kCentres];                           // ||c||^2 of the centre tile
  __shared__ int best_label[kPoints];                      // winners, for the output pass
  __shared__ T best_score[kPoints], runner_up_score[kPoints];  // for near_tie
  __shared__ accumulate_t<T> max_c_norm[kCentres];         // largest ||c||^2 seen per thread

  const int tid = threadIdx.x, tx = tid % kThreadsX, ty = tid / kThreadsX;
  const int64_t m0 = int64_t(blockIdx.x) * kPoints;
  const int64_t n_points = min(int64_t(kPoints), s.N - m0);

  for (int64_t b = blockIdx.y; b < s.B; b += gridDim.y) {
    const T* Xt = X + (b * s.N + m0) * s.D;
    T best[kRows], runner_up[kRows];
    int best_k[kRows];
#pragma unroll
    for (int i = 0; i < kRows; ++i) {
      best[i] = runner_up[i] = std::numeric_limits<T>::infinity();
      best_k[i] = 0;
    }
    accumulate_t<T> largest_norm = 0;  // of centres k0 + tid, for tid < kCentres

    for (int64_t k0 = 0; k0 < s.K; k0 += kCentres) {
      const T* Ct = C + (b * s.K + k0) * s.D;
      const int64_t n_centres = min(int64_t(kCentres), s.K - k0);
      T acc[kRows][kCols];
#pragma unroll
      for (int i = 0; i < kRows; ++i)
#pragma unroll
        for (int j = 0; j < kCols; ++j) acc[i][j] = T(0);
      accumulate_t<T> norm = 0;  // ||c||^2 of centre k0 + tid, for tid < kCentres

      T x_next[kPointLoads], c_next[kCentreLoads];
      load_stage(x_next, Xt, n_points, s.D, 0);
      load_stage(c_next, Ct, n_centres, s.D, 0);
      for (int64_t d0 = 0; d0 < s.D; d0 += kDepth) {
        store_stage(xs, x_next);
        store_stage(cs, c_next);
        __syncthreads();
        // Fetch the next stage into registers while this one is multiplied.
        if (d0 + kDepth < s.D) {
          load_stage(x_next, Xt, n_points, s.D, d0 + kDepth);
          load_stage(c_next, Ct, n_centres, s.D, d0 + kDepth);
        }
        // ||c||^2 by one thread per centre, features in order: the same sum as sq_norm.
        if (tid < kCentres) {
#pragma unroll
          for (int f = 0; f < kDepth; ++f) norm = add_sq(norm, cs[f][tid]);
        }
        // x.c for the thread's kRows x kCols micro-tile, one feature at a time.
#pragma unroll
        for (int f = 0; f < kDepth; ++f) {
          T xv[kRows], cv[kCols];
          load_vec<kGroup>(xv, &xs[f][ty * kGroup]);
          load_vec<kGroup>(xv + kGroup, &xs[f][kPoints / 2 + ty * kGroup]);
          load_vec<kCols>(cv, &cs[f][tx * kCols]);
#pragma unroll
          for (int i = 0; i < kRows; ++i)
#pragma unroll
            for (int j = 0; j < kCols; ++j) acc[i][j] += xv[i] * cv[j];
        }
        __syncthreads();
      }
      if (tid < kCentres) {
        c_norm[tid] = T(norm);
        if (tid < n_centres) largest_norm = max(largest_norm, norm);
      }
      __syncthreads();

      // ||x-c||^2 - ||x||^2 = ||c||^2 - 2 x.c ranks this tile's centres for each point.
#pragma unroll
      for (int j = 0; j < kCols; ++j) {
        const int64_t k = k0 + tx * kCols + j;
        if (k < s.K) {
#pragma unroll
          for (int i = 0; i < kRows; ++i) {
            const T score = rank_score(c_norm[tx * kCols + j], acc[i][j]);
            const bool wins = closer(score, k, best[i], int64_t(best_k[i]));
            runner_up[i] = min(runner_up[i], wins ? best[i] : score);
            if (wins) {
              best[i] = score;
              best_k[i] = int(k);
            }
          }
        }
      }
    }

    // The kThreadsX lanes of a half-warp hold the same points: a butterfly leaves every
    // lane with the best of all of them. closer() is a total order on (score, index), so
    // the lowest index wins ties whatever the order of the merges.
#pragma unroll
    for (int i = 0; i < kRows; ++i) {
#pragma unroll
      for (int lane_mask = 1; lane_mask < kThreadsX; lane_mask <<= 1) {
        const T other = __shfl_xor_sync(0xffffffffu, best[i], lane_mask);
        const int other_k = __shfl_xor_sync(0xffffffffu, best_k[i], lane_mask);
        const T other_runner_up = __shfl_xor_sync(0xffffffffu, runner_up[i], lane_mask);
        const bool other_wins = closer(other, int64_t(other_k), best[i], int64_t(best_k[i]));
        // The same on both lanes of the exchange: the loser of the two bests or a runner-up.
        runner_up[i] = min(min(runner_up[i], other_runner_up), other_wins ? best[i] : other);
        if (other_wins) {
          best[i] = other;
          best_k[i] = other_k;
        }
      }
    }
    if (tx == 0) {
#pragma unroll
      for (int i = 0; i < kRows; ++i) {
        best_label[point_of(i, ty)] = best_k[i];
        best_score[point_of(i, ty)] = best[i];
        runner_up_score[point_of(i, ty)] = runner_up[i];
      }
    }
    if (tid < kCentres) max_c_norm[tid] = largest_norm;
    __syncthreads();

    // One thread per point writes the label and recomputes sum_d (x_d - c_d)^2 directly;
    // a point whose runner-up is within the rank score's error is re-ranked exactly.
    if (tid < n_points) {
      const int64_t m = b * s.N + m0 + tid;
      const T* x = X + m * s.D;
      const T* Cb = C + b * s.K * s.D;
      accumulate_t<T> largest = 0;
      for (int t = 0; t < kCentres; ++t) largest = max(largest, max_c_norm[t]);
      int64_t k = best_label[tid];
      T dist = exact_sq_dist(x, Cb + k * s.D, s.D);
      const auto error = rank_score_error<T>(dist, sqrt(largest), s.D);
      if (near_tie(best_score[tid], runner_up_score[tid], error)) k = nearest_exact(x, Cb, s.K, s.D, &dist);
      labels[m] = k;
      sq_dist[m] = dist;
    }
  }
}

// ---- update: deterministic per-cluster sums ---------------------------------------------

/// Threads of a sum block: kMaxFeatureWidth or fewer features wide, the rest rows of points.
constexpr int kSumThreads = 256;
constexpr int kMaxFeatureWidth = 32;
/// Clusters are cut into slices (summed by separate blocks, then combined in slice order)
/// until there are about this many sum blocks...
constexpr int64_t kSumTargetBlocks = 2048;
/// ...while a slice keeps at least this many points on average.
constexpr int64_t kMinSlicePoints = 1024;
/// Bytes of one partial sum (the accumulation type of either dtype).
constexpr size_t kPartialBytes =
    std::max(sizeof(accumulate_t<float>), sizeof(accumulate_t<double>));

/// Features per sum block: the power of two covering D, at most kMaxFeatureWidth.
int feature_width(int64_t D) {
  int width = 1;
  while (width < D && width < kMaxFeatureWidth) width *= 2;
  return width;
}

/// Feature tiles per cluster; at least one, so that wsum is written even when D == 0.
int64_t feature_tiles(int64_t D) {
  const int64_t width = feature_width(D);
  return std::max<int64_t>(1, (D + width - 1) / width);
}

/// Slices per cluster. It depends on the shapes alone, never on the device, so the
/// summation order (and every bit of the result) is the same on every run and every GPU.
/// It never grows with `tiles`, and slices * B * K * tiles <= kSumTargetBlocks when > 1.
int64_t slices_per_cluster(int64_t B, int64_t N, int64_t K, int64_t tiles) {
  return std::max<int64_t>(
      1, std::min(kSumTargetBlocks / (B * K * tiles), N / (K * kMinSlicePoints)));
}

/// Bits that hold every sort key 0..B*K (B*K is the key of an invalid label).
int key_bits(int64_t BK) {
  int bits = 1;
  while ((uint64_t(1) << bits) <= uint64_t(BK)) ++bits;
  return bits;
}

/// Sub-buffers of the M-step workspace, as byte offsets (genfast::gpu::WorkspaceLayout).
struct UpdateLayout {
  size_t keys[2] = {};        ///< uint32 sort keys (double buffer), B*N each
  size_t points[2] = {};      ///< uint32 point indices within the problem (double buffer)
  size_t start = 0;           ///< int64 first sorted position of each cluster, B*K + 1
  size_t partial = 0;         ///< partial sums of the slices (when clusters are sliced)
  size_t partial_w = 0;       ///< partial weights of the slices
  size_t sort_temp = 0;       ///< CUB's temporary storage
  size_t sort_temp_bytes = 0;
  size_t total = 0;
};

/// Validates the shapes the update's index types can hold and lays out its workspace.
/// The CUB size query uses the current device.
UpdateLayout update_layout(int64_t B, int64_t N, int64_t K) {
  if (B < 0 || N < 0 || K < 1)
    throw std::invalid_argument("kmeans_update: need B >= 0, N >= 0 and K >= 1");
  if (N > int64_t(UINT32_MAX) || (B > 0 && K > int64_t(UINT32_MAX) / B))
    throw std::invalid_argument(
        "kmeans_update on CUDA supports up to 2^32 - 1 points per problem and 2^32 - 1 clusters "
        "over the whole batch (B * K)");
  const int64_t M = B * N, BK = B * K;
  UpdateLayout L;
  genfast::gpu::WorkspaceLayout ws;
  for (int i = 0; i < 2; ++i) L.keys[i] = ws.carve(size_t(M) * sizeof(uint32_t));
  for (int i = 0; i < 2; ++i) L.points[i] = ws.carve(size_t(M) * sizeof(uint32_t));
  L.start = ws.carve(size_t(BK + 1) * sizeof(int64_t));
  // With one feature tile the slices are the most they can be for any D; then a slice's
  // partial sums span at most kSumTargetBlocks * kMaxFeatureWidth values, since
  // D <= kMaxFeatureWidth * tiles.
  if (BK > 0 && slices_per_cluster(B, N, K, 1) > 1) {
    L.partial = ws.carve(size_t(kSumTargetBlocks * kMaxFeatureWidth) * kPartialBytes);
    L.partial_w = ws.carve(size_t(kSumTargetBlocks) * kPartialBytes);
  }
  if (M > 0) {
    cub::DoubleBuffer<uint32_t> keys, points;  // null: size query only
    check(cub::DeviceRadixSort::SortPairs(nullptr, L.sort_temp_bytes, keys, points, M, 0,
                                          key_bits(BK)),
          "cub::DeviceRadixSort::SortPairs (workspace size query)");
  }
  L.sort_temp = ws.carve(L.sort_temp_bytes);
  L.total = ws.total;
  return L;
}

/// Sort keys and values of the M-step: key b*K + label orders points by problem, then by
/// cluster; an invalid label gets key B*K and sorts after every cluster. The value is the
/// point's index within its problem.
/// @param[in]  s      shapes
/// @param[in]  labels [B, N] cluster of each point
/// @param[out] keys   [B*N] sort keys
/// @param[out] points [B*N] point index within the problem
__global__ void sort_keys_kernel(Shape s, const int64_t* __restrict__ labels,
                                 uint32_t* __restrict__ keys, uint32_t* __restrict__ points) {
  const int64_t M = s.B * s.N;
  for (int64_t p = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; p < M;
       p += int64_t(gridDim.x) * blockDim.x) {
    const int64_t b = p / s.N, k = labels[p];
    keys[p] = uint32_t(k >= 0 && k < s.K ? b * s.K + k : s.B * s.K);
    points[p] = uint32_t(p - b * s.N);
  }
}

/// First sorted position of every cluster: start[j] = #keys < j (a binary search), for
/// j = 0..B*K, so cluster j owns sorted positions [start[j], start[j+1]).
/// @param[in]  M     number of sorted keys
/// @param[in]  BK    number of clusters over the batch
/// @param[in]  keys  [M] sorted keys
/// @param[out] start [BK + 1]
__global__ void segment_start_kernel(int64_t M, int64_t BK, const uint32_t* __restrict__ keys,
                                     int64_t* __restrict__ start) {
  for (int64_t j = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; j <= BK;
       j += int64_t(gridDim.x) * blockDim.x) {
    int64_t lo = 0, hi = M;
    while (lo < hi) {
      const int64_t mid = lo + (hi - lo) / 2;
      if (int64_t(keys[mid]) < j)
        lo = mid + 1;
      else
        hi = mid;
    }
    start[j] = lo;
  }
}

/// Weighted sum of one slice of one cluster over one tile of features, per block: thread
/// (f, r) of a blockDim.x x blockDim.y block sums feature tile * blockDim.x + f over the
/// slice's sorted positions r, r + blockDim.y, ..., in double; the rows are then folded by
/// a fixed-shape tree. Points keep their input order within a cluster (stable sort), so
/// the result depends only on the inputs and the shapes.
/// @param[in]  s         shapes
/// @param[in]  slices    slices per cluster
/// @param[in]  tiles     feature tiles per cluster (blockDim.x features each)
/// @param[in]  X         [B, N, D] points
/// @param[in]  weights   [B, N] sample weights, or nullptr for unit weights
/// @param[in]  points    [B*N] point index within the problem, in sorted order
/// @param[in]  start     [B*K + 1] first sorted position of each cluster
/// @param[out] sums      [B, K, D] cluster sums (written when slices == 1)
/// @param[out] wsum      [B, K] cluster weights (written when slices == 1)
/// @param[out] partial   [B*K*slices, D] slice sums (written when slices > 1)
/// @param[out] partial_w [B*K*slices] slice weights (written when slices > 1)
template <class T>
__global__ void __launch_bounds__(kSumThreads)
    cluster_sum_kernel(Shape s, int64_t slices, int64_t tiles, const T* __restrict__ X,
                       const T* __restrict__ weights, const uint32_t* __restrict__ points,
                       const int64_t* __restrict__ start, T* __restrict__ sums,
                       T* __restrict__ wsum, accumulate_t<T>* __restrict__ partial,
                       accumulate_t<T>* __restrict__ partial_w) {
  using A = accumulate_t<T>;
  __shared__ A red[kSumThreads];   // [row][feature] partial sums of the tree
  __shared__ A wred[kSumThreads];  // [row] partial weights of the tree

  const int f = threadIdx.x, r = threadIdx.y, width = blockDim.x, rows = blockDim.y;
  const int64_t items = s.B * s.K * slices * tiles;
  for (int64_t item = blockIdx.x; item < items; item += gridDim.x) {
    const int64_t tile = item % tiles, piece = item / tiles;  // piece = cluster * slices + q
    const int64_t bk = piece / slices, q = piece % slices, b = bk / s.K;
    const int64_t d = tile * width + f;
    // Slice q of the cluster's sorted positions: [first + len*q/S, first + len*(q+1)/S).
    const int64_t first = start[bk], len = start[bk + 1] - first;
    const int64_t p_end = first + len * (q + 1) / slices;
    A acc = 0, wacc = 0;
    for (int64_t p = first + len * q / slices + r; p < p_end; p += rows) {
      const int64_t i = b * s.N + points[p];
      const A w = weights ? A(weights[i]) : A(1);
      if (d < s.D) acc += w * A(X[i * s.D + d]);
      wacc += w;
    }

    // Fold the rows pairwise, halving each step: a tree whose shape depends on rows only.
    red[r * width + f] = acc;
    if (f == 0) wred[r] = wacc;
    __syncthreads();
    for (int stride = rows / 2; stride > 0; stride /= 2) {
      if (r < stride) {
        acc += red[(r + stride) * width + f];
        red[r * width + f] = acc;
        if (f == 0) {
          wacc += wred[r + stride];
          wred[r] = wacc;
        }
      }
      __syncthreads();
    }

    if (r == 0) {
      if (d < s.D) {
        if (partial)
          partial[piece * s.D + d] = acc;
        else
          sums[bk * s.D + d] = T(acc);
      }
      if (f == 0 && tile == 0) {
        if (partial_w)
          partial_w[piece] = wacc;
        else
          wsum[bk] = T(wacc);
      }
    }
  }
}

/// Adds each cluster's slice partials in slice order and writes the results.
/// @param[in]  s         shapes
/// @param[in]  slices    slices per cluster
/// @param[in]  partial   [B*K*slices, D] slice sums
/// @param[in]  partial_w [B*K*slices] slice weights
/// @param[out] sums      [B, K, D] cluster sums
/// @param[out] wsum      [B, K] cluster weights
template <class T>
__global__ void combine_slices_kernel(Shape s, int64_t slices,
                                      const accumulate_t<T>* __restrict__ partial,
                                      const accumulate_t<T>* __restrict__ partial_w,
                                      T* __restrict__ sums, T* __restrict__ wsum) {
  const int64_t BK = s.B * s.K, n_sums = BK * s.D;
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < n_sums + BK;
       e += int64_t(gridDim.x) * blockDim.x) {
    accumulate_t<T> total = 0;
    if (e < n_sums) {
      const int64_t bk = e / s.D, d = e % s.D;
      for (int64_t q = 0; q < slices; ++q) total += partial[(bk * slices + q) * s.D + d];
      sums[e] = T(total);
    } else {
      const int64_t bk = e - n_sums;
      for (int64_t q = 0; q < slices; ++q) total += partial_w[bk * slices + q];
      wsum[bk] = T(total);
    }
  }
}

}  // namespace

template <class T>
void assign_labels(const Shape& s, const T* X, const T* C, int64_t* labels, T* sq_dist,
                   cudaStream_t stream) {
  if (s.B < 0 || s.N < 0) throw std::invalid_argument("kmeans_assign: need B >= 0 and N >= 0");
  if (s.K < 1 || s.K > INT_MAX)
    throw std::invalid_argument("kmeans_assign: need between 1 and 2^31 - 1 centres, got K = " +
                                std::to_string(s.K));
  if (s.D < 1) throw std::invalid_argument("kmeans_assign: need D >= 1 features");
  if (s.B == 0 || s.N == 0) return;
  const int64_t tiles = (s.N + kPoints - 1) / kPoints;
  if (tiles > INT_MAX) throw std::invalid_argument("kmeans_assign: too many points per problem");
  const dim3 grid(unsigned(tiles), unsigned(std::min(s.B, kMaxGridY)));
  assign_kernel<T><<<grid, kAssignThreads, 0, stream>>>(s, X, C, labels, sq_dist);
  check_launch("kmeans assign_kernel");
}

size_t update_workspace_bytes(int64_t B, int64_t N, int64_t K) {
  return update_layout(B, N, K).total;
}

template <class T>
void update_centers(const Shape& s, const T* X, const int64_t* labels, const T* weights,
                    T* sums, T* wsum, void* workspace, size_t workspace_bytes,
                    cudaStream_t stream) {
  using A = accumulate_t<T>;
  if (s.D < 0) throw std::invalid_argument("kmeans_update: need D >= 0");
  const UpdateLayout L = update_layout(s.B, s.N, s.K);
  if (s.B == 0) return;
  genfast::gpu::check_workspace("kmeans_update", workspace, workspace_bytes, L.total);
  char* ws = static_cast<char*>(workspace);
  const int64_t M = s.B * s.N, BK = s.B * s.K;

  // Stable sort of the points by (problem, cluster): each cluster's points stay in input order.
  const uint32_t* sorted_keys = nullptr;
  const uint32_t* sorted_points = nullptr;
  if (M > 0) {
    cub::DoubleBuffer<uint32_t> keys(reinterpret_cast<uint32_t*>(ws + L.keys[0]),
                                     reinterpret_cast<uint32_t*>(ws + L.keys[1]));
    cub::DoubleBuffer<uint32_t> points(reinterpret_cast<uint32_t*>(ws + L.points[0]),
                                       reinterpret_cast<uint32_t*>(ws + L.points[1]));
    sort_keys_kernel<<<grid_for(M, kElementThreads), kElementThreads, 0, stream>>>(
        s, labels, keys.Current(), points.Current());
    check_launch("kmeans sort_keys_kernel");
    size_t temp_bytes = L.sort_temp_bytes;
    check(cub::DeviceRadixSort::SortPairs(ws + L.sort_temp, temp_bytes, keys, points, M, 0,
                                          key_bits(BK), stream),
          "cub::DeviceRadixSort::SortPairs");
    sorted_keys = keys.Current();
    sorted_points = points.Current();
  }

  int64_t* start = reinterpret_cast<int64_t*>(ws + L.start);
  segment_start_kernel<<<grid_for(BK + 1, kElementThreads), kElementThreads, 0, stream>>>(
      M, BK, sorted_keys, start);
  check_launch("kmeans segment_start_kernel");

  const int width = feature_width(s.D);
  const int64_t tiles = feature_tiles(s.D);
  const int64_t slices = slices_per_cluster(s.B, s.N, s.K, tiles);
  // update_layout reserved the partials whenever slices can exceed 1 (see there).
  A* partial = slices > 1 ? reinterpret_cast<A*>(ws + L.partial) : nullptr;
  A* partial_w = slices > 1 ? reinterpret_cast<A*>(ws + L.partial_w) : nullptr;
  const dim3 block(unsigned(width), unsigned(kSumThreads / width));
  cluster_sum_kernel<T><<<grid_for(BK * slices * tiles, 1), block, 0, stream>>>(
      s, slices, tiles, X, weights, sorted_points, start, sums, wsum, partial, partial_w);
  check_launch("kmeans cluster_sum_kernel");
  if (slices > 1) {
    const unsigned blocks = grid_for(BK * s.D + BK, kElementThreads);
    combine_slices_kernel<T><<<blocks, kElementThreads, 0, stream>>>(s, slices, partial,
                                                                     partial_w, sums, wsum);
    check_launch("kmeans combine_slices_kernel");
  }
}

template void assign_labels<float>(const Shape&, const float*, const float*, int64_t*, float*,
                                   cudaStream_t);
template void assign_labels<double>(const Shape&, const double*, const double*, int64_t*,
                                    double*, cudaStream_t);
template void update_centers<float>(const Shape&, const float*, const int64_t*, const float*,
                                    float*, float*, void*, size_t, cudaStream_t);
template void update_centers<double>(const Shape&, const double*, const int64_t*,
                                     const double*, double*, double*, void*, size_t,
                                     cudaStream_t);

}  // namespace genfast::kmeans::gpu
