// genfast k-means CUDA kernels (cuda/kmeans.cu): host-side launchers, declared in plain C++
// so that the bindings (host compiler) can call them. All arrays are C-contiguous device
// memory; every launcher only enqueues work on `stream` and never synchronises.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

#include <genfast/kmeans.hpp>  // Shape and the shared math

namespace genfast::kmeans::gpu {

using genfast::kmeans::Shape;

/// Nearest centre of every point, with its squared distance, without forming the N x K
/// distance matrix. Ties break to the lowest centre index.
/// Throws std::invalid_argument for shapes out of range (K < 1 or K >= 2^31, D < 1).
/// @param[in]  X       [B, N, D] points
/// @param[in]  C       [B, K, D] centres
/// @param[out] labels  [B, N] index of the nearest centre
/// @param[out] sq_dist [B, N] squared Euclidean distance to that centre
/// @param[in]  stream  stream the kernel is enqueued on
template <class T>
void assign_labels(const Shape& s, const T* X, const T* C, int64_t* labels, T* sq_dist,
                   cudaStream_t stream);

/// Bytes of device workspace that update_centers needs for B problems of N points and K
/// clusters (for any D), on the current device.
/// Throws std::invalid_argument if N or B*K is 2^32 or more.
size_t update_workspace_bytes(int64_t B, int64_t N, int64_t K);

/// Per-cluster weighted sums of the points and total weights, for the M-step.
/// Deterministic: points are stably sorted by cluster and summed in double in an order
/// fixed by the shapes, so the same inputs give the same bits on every run.
/// A label outside [0, K) is skipped (never read or written out of bounds).
/// @param[in]  X         [B, N, D] points
/// @param[in]  labels    [B, N] cluster of each point, in [0, K)
/// @param[in]  weights   [B, N] sample weights, or nullptr for unit weights
/// @param[out] sums      [B, K, D] sum of w_i x_i over the points of each cluster (0 if empty)
/// @param[out] wsum      [B, K] sum of w_i over the points of each cluster
/// @param[in]  workspace device scratch of at least update_workspace_bytes(B, N, K) bytes
/// @param[in]  workspace_bytes its size; std::invalid_argument if too small
/// @param[in]  stream    stream the kernels are enqueued on
template <class T>
void update_centers(const Shape& s, const T* X, const int64_t* labels, const T* weights,
                    T* sums, T* wsum, void* workspace, size_t workspace_bytes,
                    cudaStream_t stream);

}  // namespace genfast::kmeans::gpu
