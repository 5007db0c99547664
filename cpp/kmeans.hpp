// genfast k-means CPU kernels (cpp/kmeans.cpp). All arrays are C-contiguous.
#pragma once

#include <cstdint>

#include <genfast/kmeans.hpp>  // Shape and the shared math

namespace genfast::kmeans {

/// Nearest centre of every point, with its squared distance.
/// Ties break to the lowest centre index; results do not depend on the thread count.
/// @param[in]  X       [B, N, D] points
/// @param[in]  C       [B, K, D] centres
/// @param[out] labels  [B, N] index of the nearest centre
/// @param[out] sq_dist [B, N] squared Euclidean distance to that centre
template <class T>
void assign_labels(const Shape& s, const T* X, const T* C, int64_t* labels, T* sq_dist);

/// Per-cluster weighted sums of the points and total weights, for the M-step.
/// Sums are accumulated in double over fixed blocks of points, and the blocks combined in a
/// fixed order: the result is bitwise the same for any thread count.
/// Throws std::invalid_argument if a label is outside [0, K).
/// @param[in]  X       [B, N, D] points
/// @param[in]  labels  [B, N] cluster of each point, in [0, K)
/// @param[in]  weights [B, N] sample weights, or nullptr for unit weights
/// @param[out] sums    [B, K, D] sum of w_i x_i over the points of each cluster (0 if empty)
/// @param[out] wsum    [B, K] sum of w_i over the points of each cluster
template <class T>
void update_centers(const Shape& s, const T* X, const int64_t* labels, const T* weights,
                    T* sums, T* wsum);

/// One Lloyd iteration's heavy work in a single pass over X: assign_labels, then the
/// update_centers sums of that assignment, block by block while the block is in cache.
/// Same outputs (bitwise) as the two calls in sequence.
/// @param[in]  X       [B, N, D] points
/// @param[in]  C       [B, K, D] centres
/// @param[in]  weights [B, N] sample weights, or nullptr for unit weights
/// @param[out] labels  [B, N], sq_dist [B, N], sums [B, K, D], wsum [B, K]
template <class T>
void lloyd_step(const Shape& s, const T* X, const T* C, const T* weights, int64_t* labels,
                T* sq_dist, T* sums, T* wsum);

/// lloyd_step with the M-step sums left in the accumulation type and folded on from
/// `totals`: running it on consecutive row ranges of X that start at multiples of
/// kSumBlockPoints (blocked_sum.hpp), carrying `totals` from one range to the next, gives
/// bitwise the totals of one lloyd_step over all the rows. Lets a caller walk a large X in
/// bounded pieces. With a shift the points are X - shift (each element rounded to T, as
/// numpy's X - shift), formed a cache-sized chunk at a time: the centred fit's pass, with
/// no centred copy of X in memory.
/// @param[in]     X, C, weights  as lloyd_step
/// @param[in]     shift  [D] subtracted from every point, or nullptr for none
/// @param[out]    labels [B, N], sq_dist [B, N]
/// @param[in,out] totals [B, K*D + K]: per-cluster sums of w_i x_i, then of w_i
template <class T>
void lloyd_step_accumulate(const Shape& s, const T* X, const T* shift, const T* C,
                           const T* weights, int64_t* labels, T* sq_dist,
                           accumulate_t<T>* totals);

}  // namespace genfast::kmeans
