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

/// Centres repacked into panels of Tile::width centres, laid out [d][width] so that the
/// inner loop reads `cols` aligned vectors per feature; padding centres have norm +inf.
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
        for (int64_t d = 0; d < D_; ++d) panel[d * width + j] = k < s.K ? c[d] : T(0);
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
  V acc0[R], acc1[R];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) acc0[r] = acc1[r] = V{};
  // x.c for rows x width pairs: one broadcast of x[r][d] against two centre vectors.
  for (int64_t d = 0; d < D; ++d) {
    const V c0 = panel[2 * d], c1 = panel[2 * d + 1];
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const T xv = x[r][d];
      acc0[r] += xv * c0;
      acc1[r] += xv * c1;
    }
  }
  const M second_k = first_k + L;
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) {
    const V s0 = rank_score(norm[0], acc0[r]);
    const V s1 = rank_score(norm[1], acc1[r]);
    // Strict < : an equal score keeps the lower centre index (first vector, earlier panel).
    const M take1 = s1 < s0;
    const V s = take1 ? s1 : s0;
    const M k = take1 ? second_k : first_k;
    const M better = s < best[r];
    best[r] = better ? s : best[r];
    best_k[r] = better ? k : best_k[r];
  }
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
            T& bs = best_score[r0 + r];
            int64_t& bk = best_label[r0 + r];
            for (int l = 0; l < L; ++l) {
              if (closer<T>(best[r][l], int64_t(best_k[r][l]), bs, bk)) {
                bs = best[r][l];
                bk = int64_t(best_k[r][l]);
              }
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
  const int64_t BN = s.B * s.N;
  int64_t bad = 0;
#pragma omp parallel for reduction(+ : bad) schedule(static)
  for (int64_t i = 0; i < BN; ++i) bad += (labels[i] < 0 || labels[i] >= s.K);
  if (bad) throw std::invalid_argument("labels must lie in [0, n_clusters)");

  // Stable counting sort of each problem's points by label: every cluster is then summed
  // in point order by one thread, so the result is the same for any thread count.
  std::vector<int64_t> start(size_t(s.B * (s.K + 1)), 0);
  std::vector<int64_t> order(static_cast<size_t>(BN));
#pragma omp parallel for schedule(static)
  for (int64_t b = 0; b < s.B; ++b) {
    const int64_t* lab = labels + b * s.N;
    int64_t* st = &start[size_t(b * (s.K + 1))];
    for (int64_t i = 0; i < s.N; ++i) ++st[lab[i] + 1];
    for (int64_t k = 0; k < s.K; ++k) st[k + 1] += st[k];
    std::vector<int64_t> next(st, st + s.K);
    for (int64_t i = 0; i < s.N; ++i) order[size_t(b * s.N + next[size_t(lab[i])]++)] = i;
  }

#pragma omp parallel
  {
    std::vector<accumulate_t<T>> acc(size_t(s.D));
#pragma omp for schedule(dynamic, 4)
    for (int64_t bk = 0; bk < s.B * s.K; ++bk) {
      const int64_t b = bk / s.K, k = bk % s.K;
      const int64_t* st = &start[size_t(b * (s.K + 1))];
      std::fill(acc.begin(), acc.end(), accumulate_t<T>(0));
      accumulate_t<T> w_total = 0;
      for (int64_t j = st[k]; j < st[k + 1]; ++j) {
        const int64_t i = b * s.N + order[size_t(b * s.N + j)];
        const accumulate_t<T> w = weights ? accumulate_t<T>(weights[i]) : accumulate_t<T>(1);
        const T* x = X + i * s.D;
        for (int64_t d = 0; d < s.D; ++d) acc[size_t(d)] += w * accumulate_t<T>(x[d]);
        w_total += w;
      }
      for (int64_t d = 0; d < s.D; ++d) sums[bk * s.D + d] = T(acc[size_t(d)]);
      wsum[bk] = T(w_total);
    }
  }
}

template void assign_labels<float>(const Shape&, const float*, const float*, int64_t*, float*);
template void assign_labels<double>(const Shape&, const double*, const double*, int64_t*, double*);
template void update_centers<float>(const Shape&, const float*, const int64_t*, const float*,
                                    float*, float*);
template void update_centers<double>(const Shape&, const double*, const int64_t*,
                                     const double*, double*, double*);

}  // namespace genfast::kmeans
