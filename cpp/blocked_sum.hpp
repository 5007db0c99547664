// genfast CPU: deterministic parallel sums over the points of a data set.
//
// Points are cut into fixed blocks; each block is summed in point order into its own
// partial row, and partials are folded into the total in block order. Block and wave sizes
// depend only on the shapes, never on the thread count, so every bit of the result is the
// same for any OMP_NUM_THREADS (a reduction over threads would not be).
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

#include "interrupt.hpp"

namespace genfast {

/// Points per block: the fixed unit of summation order.
constexpr int64_t kSumBlockPoints = 8192;
/// Memory budget for the partial rows of one wave of blocks, and the most blocks per wave.
constexpr int64_t kSumPartialBytes = int64_t(32) << 20;
constexpr int64_t kSumMaxWave = 64;

/// Totals [B][row] over B problems of N points each (A: a scalar or a SIMD vector type),
/// added to `total` (zeros, or the totals of earlier points of the same problems: folding on
/// from them gives bitwise the totals of one call over all the points, provided the earlier
/// calls covered whole blocks). fill(b, i0, i1, acc) adds points [i0, i1) of problem b into
/// the zeroed row acc[0, row) and returns how many points it had to skip (for example for an
/// invalid label); the skips of all blocks are added into `skipped`. Once the caller is
/// interrupted (interrupt.hpp) the remaining blocks are skipped and the totals are partial.
template <class A, class Fill>
std::vector<A> blocked_sum(int64_t B, int64_t N, int64_t row, Fill fill, int64_t& skipped,
                           std::vector<A> total) {
  const int64_t blocks_per_problem = (N + kSumBlockPoints - 1) / kSumBlockPoints;
  const int64_t blocks = B * blocks_per_problem;
  const int64_t wave = std::clamp<int64_t>(
      kSumPartialBytes / std::max<int64_t>(1, row * int64_t(sizeof(A))), 1, kSumMaxWave);
  const Interruption interruption;
  std::vector<A> partial(size_t(std::min(wave, std::max<int64_t>(blocks, 1)) * row));
  int64_t skips = 0;
  for (int64_t first = 0; first < blocks; first += wave) {
    const int64_t count = std::min(wave, blocks - first);
#pragma omp parallel for schedule(dynamic) reduction(+ : skips)
    for (int64_t j = 0; j < count; ++j) {
      const int64_t blk = first + j, b = blk / blocks_per_problem;
      const int64_t i0 = (blk % blocks_per_problem) * kSumBlockPoints;
      A* acc = &partial[size_t(j * row)];
      std::fill(acc, acc + row, A{});
      if (!interruption.requested()) skips += fill(b, i0, std::min(N, i0 + kSumBlockPoints), acc);
    }
    // Fold the wave's partials into each problem's total in block order.
#pragma omp parallel for schedule(static)
    for (int64_t e = 0; e < row; ++e)
      for (int64_t j = 0; j < count; ++j)
        total[size_t(((first + j) / blocks_per_problem) * row + e)] += partial[size_t(j * row + e)];
  }
  skipped = skips;
  return total;
}

/// blocked_sum from zero totals.
template <class A, class Fill>
std::vector<A> blocked_sum(int64_t B, int64_t N, int64_t row, Fill fill, int64_t& skipped) {
  return blocked_sum<A>(B, N, row, fill, skipped, std::vector<A>(size_t(B * row), A{}));
}

}  // namespace genfast
