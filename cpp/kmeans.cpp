// genfast k-means CPU kernels: fused distance + argmin assignment, and the M-step sums.
#include "kmeans.hpp"

#include <genfast/kmeans.hpp>
#include <genfast/simd.hpp>

#include <algorithm>
#include <limits>
#include <stdexcept>
#include <vector>

namespace genfast::kmeans {
namespace {

/// Register tile of the fused distance + argmin loop: `rows` points against a panel of
/// `width` centres held as `cols` vectors. rows*cols accumulators plus the cols centre
/// vectors fit the register file (8x2 on AVX-512's 32 registers, 6x2 on AVX2's 16).
template <class T> struct Tile {
  static constexpr int lanes = simd::vector<T>::lanes;
  static constexpr int cols = 2;
  static constexpr int width = cols * lanes;
  static constexpr int rows = simd::kVectorRegisters >= 32 ? 8 : 6;
};

/// Points handled by one OpenMP task; their running best stays in L1.
constexpr int64_t kChunkPoints = 256;
/// Bytes of packed centres scanned per pass over a chunk (kept resident in L2).
constexpr int64_t kBlockBytes = 192 * 1024;
/// Points per block of the M-step sums; blocks are the fixed unit of summation order.
constexpr int64_t kUpdateBlockPoints = 8192;
/// Memory budget for the per-block partial sums of one wave, and the most blocks per wave.
constexpr int64_t kUpdatePartialBytes = int64_t(32) << 20;
constexpr int64_t kUpdateMaxWave = 64;

/// Centres repacked into panels of Tile::width centres, laid out [d][width] so that the
/// inner loop reads `cols` aligned vectors per feature. Panels hold -2c (exact: a power of
/// two) so that ||c||^2 + sum_d x_d (-2 c_d) is the rank score with no extra arithmetic;
/// padding centres have norm +inf.
template <class T> class PackedCenters {
 public:
  using V = simd::vec_t<T>;
  static constexpr int cols = Tile<T>::cols;
  static constexpr int width = Tile<T>::width;

  PackedCenters(const Shape& s, const T* C)
      : panels_((s.K + width - 1) / width),
        D_(s.D),
        data_(size_t(s.B * panels_ * s.D * cols)),
        norms_(size_t(s.B * panels_ * cols)) {
#pragma omp parallel for schedule(static)
    for (int64_t bp = 0; bp < s.B * panels_; ++bp) {
      const int64_t b = bp / panels_, k0 = (bp % panels_) * width;
      T* panel = reinterpret_cast<T*>(&data_[size_t(bp * D_ * cols)]);
      T* norm = reinterpret_cast<T*>(&norms_[size_t(bp * cols)]);
      for (int j = 0; j < width; ++j) {
        const int64_t k = k0 + j;
        const T* c = C + (b * s.K + std::min(k, s.K - 1)) * D_;
        for (int64_t d = 0; d < D_; ++d) panel[d * width + j] = k < s.K ? T(-2) * c[d] : T(0);
        norm[j] = k < s.K ? sq_norm(c, D_) : std::numeric_limits<T>::infinity();
      }
    }
  }
  int64_t panels() const { return panels_; }
  const V* panel(int64_t b, int64_t p) const { return &data_[size_t((b * panels_ + p) * D_ * cols)]; }
  const V* norm(int64_t b, int64_t p) const { return &norms_[size_t((b * panels_ + p) * cols)]; }

 private:
  int64_t panels_, D_;
  std::vector<V> data_;   // [B][panels][D][cols] vectors
  std::vector<V> norms_;  // [B][panels][cols] vectors of ||c||^2
};

/// Scores `rows` points against one panel and folds them into each point's per-lane best.
/// x[r] points at the r-th point's features; first_k is the panel's first centre index.
template <class T>
inline void score_panel(const T* const* x, const simd::vec_t<T>* panel,
                        const simd::vec_t<T>* norm, int64_t D, simd::mask_t<T> first_k,
                        simd::vec_t<T>* best, simd::mask_t<T>* best_k) {
  using V = simd::vec_t<T>;
  using M = simd::mask_t<T>;
  constexpr int R = Tile<T>::rows;
  constexpr int L = Tile<T>::lanes;
  V score0[R], score1[R];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) {
    score0[r] = norm[0];
    score1[r] = norm[1];
  }
  // rank score ||c||^2 - 2 x.c, accumulated as ||c||^2 + sum_d x_d (-2 c_d): one broadcast
  // of x[r][d] against two vectors of the packed panel per step.
  for (int64_t d = 0; d < D; ++d) {
    const V c0 = panel[2 * d], c1 = panel[2 * d + 1];
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const T xv = x[r][d];
      score0[r] += xv * c0;
      score1[r] += xv * c1;
    }
  }
  const M second_k = first_k + L;
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) {
    // Strict < : an equal score keeps the lower centre index (first vector, earlier panel).
    const M take1 = score1[r] < score0[r];
    const V s = take1 ? score1[r] : score0[r];
    const M k = take1 ? second_k : first_k;
    const M better = s < best[r];
    best[r] = better ? s : best[r];
    best_k[r] = better ? k : best_k[r];
  }
}

/// Lowest k[l] over the lanes l where v[l] == v_min: the lanes' tie rule, vectorised.
template <class T>
inline typename simd::vector<T>::int_lane lowest_index_of_min(simd::vec_t<T> v,
                                                              simd::mask_t<T> k, T v_min) {
  using M = simd::mask_t<T>;
  using Lane = typename simd::vector<T>::int_lane;
  const M at_min = v == simd::broadcast<simd::vec_t<T>>(v_min);
  const M idx = at_min ? k : simd::broadcast<M>(std::numeric_limits<Lane>::max());
  return simd::all_lanes_min<M, M>(idx)[0];
}

}  // namespace

template <class T>
void assign_labels(const Shape& s, const T* X, const T* C, int64_t* labels, T* sq_dist) {
  using V = simd::vec_t<T>;
  using M = simd::mask_t<T>;
  using Lane = typename simd::vector<T>::int_lane;
  constexpr int R = Tile<T>::rows;
  constexpr int L = Tile<T>::lanes;
  constexpr int W = Tile<T>::width;
  if (s.B == 0 || s.N == 0) return;
  if (s.K < 1) throw std::invalid_argument("assign_labels: need at least one centre");

  const PackedCenters<T> packed(s, C);
  const int64_t panels = packed.panels();
  const int64_t panels_per_block =
      std::max<int64_t>(1, kBlockBytes / std::max<int64_t>(1, s.D * W * int64_t(sizeof(T))));
  const int64_t chunks = (s.N + kChunkPoints - 1) / kChunkPoints;
  const T inf = std::numeric_limits<T>::infinity();
  M lane_index;
  for (int l = 0; l < L; ++l) lane_index[l] = Lane(l);

#pragma omp parallel
  {
    std::vector<T> best_score(kChunkPoints);
    std::vector<int64_t> best_label(kChunkPoints);
#pragma omp for schedule(dynamic)
    for (int64_t task = 0; task < s.B * chunks; ++task) {
      const int64_t b = task / chunks, i0 = (task % chunks) * kChunkPoints;
      const int64_t n = std::min(kChunkPoints, s.N - i0);
      const T* Xc = X + (b * s.N + i0) * s.D;
      std::fill(best_score.begin(), best_score.begin() + n, inf);
      std::fill(best_label.begin(), best_label.begin() + n, int64_t(0));
      for (int64_t p0 = 0; p0 < panels; p0 += panels_per_block) {
        const int64_t p1 = std::min(panels, p0 + panels_per_block);
        for (int64_t r0 = 0; r0 < n; r0 += R) {
          // A short last tile repeats its last point; the extra rows are discarded.
          const T* x[R];
          for (int r = 0; r < R; ++r) x[r] = Xc + std::min(r0 + r, n - 1) * s.D;
          V best[R];
          M best_k[R];
          for (int r = 0; r < R; ++r) {
            best[r] = simd::broadcast<V>(inf);
            best_k[r] = M{};
          }
          for (int64_t p = p0; p < p1; ++p)
            score_panel<T>(x, packed.panel(b, p), packed.norm(b, p), s.D,
                           lane_index + Lane(p * W), best, best_k);
          // Fold the lanes of each row into the point's running best, lowest index on ties.
          for (int r = 0; r < R && r0 + r < n; ++r) {
            const T score = simd::all_lanes_min<V, M>(best[r])[0];
            const Lane k = lowest_index_of_min<T>(best[r], best_k[r], score);
            // k is the Lane max only if no lane equals the minimum (NaN scores): keep the old best.
            if (k != std::numeric_limits<Lane>::max() &&
                closer<T>(score, int64_t(k), best_score[r0 + r], best_label[r0 + r])) {
              best_score[r0 + r] = score;
              best_label[r0 + r] = int64_t(k);
            }
          }
        }
      }
      for (int64_t i = 0; i < n; ++i) {
        const int64_t k = best_label[i];
        labels[b * s.N + i0 + i] = k;
        sq_dist[b * s.N + i0 + i] = exact_sq_dist(Xc + i * s.D, C + (b * s.K + k) * s.D, s.D);
      }
    }
  }
}

template <class T>
void update_centers(const Shape& s, const T* X, const int64_t* labels, const T* weights,
                    T* sums, T* wsum) {
  using A = accumulate_t<T>;
  // Row of per-cluster accumulators: K*D weighted sums, then K total weights.
  const int64_t row = s.K * s.D + s.K;
  const int64_t blocks_per_problem = (s.N + kUpdateBlockPoints - 1) / kUpdateBlockPoints;
  const int64_t blocks = s.B * blocks_per_problem;
  // Blocks accumulated concurrently per wave; the count depends only on the shapes, never
  // on the thread count, so the summation order (and every bit of the result) is fixed.
  const int64_t wave = std::clamp<int64_t>(kUpdatePartialBytes / (row * int64_t(sizeof(A))), 1,
                                           kUpdateMaxWave);
  std::vector<A> total(size_t(s.B * row), A(0));
  std::vector<A> partial(size_t(std::min(wave, std::max<int64_t>(blocks, 1)) * row));
  int64_t bad_labels = 0;

  for (int64_t first = 0; first < blocks; first += wave) {
    const int64_t count = std::min(wave, blocks - first);
    // Each block sums its points in order into its own partial row.
#pragma omp parallel for schedule(dynamic) reduction(+ : bad_labels)
    for (int64_t j = 0; j < count; ++j) {
      const int64_t blk = first + j, b = blk / blocks_per_problem;
      const int64_t i0 = (blk % blocks_per_problem) * kUpdateBlockPoints;
      const int64_t i1 = std::min(s.N, i0 + kUpdateBlockPoints);
      A* acc = &partial[size_t(j * row)];
      A* acc_w = acc + s.K * s.D;
      std::fill(acc, acc + row, A(0));
      for (int64_t i = b * s.N + i0; i < b * s.N + i1; ++i) {
        const int64_t k = labels[i];
        if (k < 0 || k >= s.K) {  // never index out of bounds; reported below
          ++bad_labels;
          continue;
        }
        const A w = weights ? A(weights[i]) : A(1);
        const T* x = X + i * s.D;
        A* a = acc + k * s.D;
        for (int64_t d = 0; d < s.D; ++d) a[d] += w * A(x[d]);
        acc_w[k] += w;
      }
    }
    // Fold the wave's partials into each problem's total in block order.
#pragma omp parallel for schedule(static)
    for (int64_t e = 0; e < row; ++e)
      for (int64_t j = 0; j < count; ++j)
        total[size_t(((first + j) / blocks_per_problem) * row + e)] += partial[size_t(j * row + e)];
  }
  if (bad_labels) throw std::invalid_argument("labels must lie in [0, n_clusters)");

#pragma omp parallel for schedule(static)
  for (int64_t b = 0; b < s.B; ++b) {
    const A* t = &total[size_t(b * row)];
    for (int64_t e = 0; e < s.K * s.D; ++e) sums[b * s.K * s.D + e] = T(t[e]);
    for (int64_t k = 0; k < s.K; ++k) wsum[b * s.K + k] = T(t[s.K * s.D + k]);
  }
}

template void assign_labels<float>(const Shape&, const float*, const float*, int64_t*, float*);
template void assign_labels<double>(const Shape&, const double*, const double*, int64_t*, double*);
template void update_centers<float>(const Shape&, const float*, const int64_t*, const float*,
                                    float*, float*);
template void update_centers<double>(const Shape&, const double*, const int64_t*,
                                     const double*, double*, double*);

}  // namespace genfast::kmeans
