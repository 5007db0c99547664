// genfast k-means CPU kernels: fused distance + argmin assignment, and the M-step sums.
#include "kmeans.hpp"

#include "blocked_sum.hpp"
#include "interrupt.hpp"

#include <genfast/kmeans.hpp>
#include <genfast/simd.hpp>

#include <algorithm>
#include <cmath>
#include <limits>
#include <stdexcept>
#include <type_traits>
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
/// Bytes of centred rows x - shift that lloyd_step_accumulate holds per chunk (L2-resident).
constexpr int64_t kCentredChunkBytes = 256 * 1024;
/// Bytes of packed centres scanned per pass over a chunk (kept resident in L2).
constexpr int64_t kBlockBytes = 192 * 1024;

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
        norms_(size_t(s.B * panels_ * cols)),
        max_norm_(size_t(s.B)) {
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
    // Largest ||c|| of each problem, for the rank-score error bound (padding excluded).
    for (int64_t b = 0; b < s.B; ++b) {
      const T* norm = reinterpret_cast<const T*>(&norms_[size_t(b * panels_ * cols)]);
      T largest = 0;
      for (int64_t k = 0; k < s.K; ++k) largest = std::max(largest, norm[k]);
      max_norm_[size_t(b)] = std::sqrt(accumulate_t<T>(largest));
    }
  }
  int64_t panels() const { return panels_; }
  /// -2 c_k as packed: c_k's feature d lies at [d * width] of the returned pointer.
  const T* neg2c(int64_t b, int64_t k) const {
    return reinterpret_cast<const T*>(panel(b, k / width)) + k % width;
  }
  T sq_norm_of(int64_t b, int64_t k) const {
    return reinterpret_cast<const T*>(norm(b, k / width))[k % width];
  }
  const V* panel(int64_t b, int64_t p) const { return &data_[size_t((b * panels_ + p) * D_ * cols)]; }
  const V* norm(int64_t b, int64_t p) const { return &norms_[size_t((b * panels_ + p) * cols)]; }
  accumulate_t<T> max_norm(int64_t b) const { return max_norm_[size_t(b)]; }

 private:
  int64_t panels_, D_;
  std::vector<V> data_;   // [B][panels][D][cols] vectors
  std::vector<V> norms_;  // [B][panels][cols] vectors of ||c||^2
  std::vector<accumulate_t<T>> max_norm_;  // [B] largest ||c||
};

/// Scores `rows` points against one panel and folds them into each point's per-lane best
/// and per-lane runner-up score (the second smallest a lane has seen, for near_tie).
/// x[r] points at the r-th point's features; first_k is the panel's first centre index.
template <class T>
inline void score_panel(const T* const* x, const simd::vec_t<T>* panel,
                        const simd::vec_t<T>* norm, int64_t D, simd::mask_t<T> first_k,
                        simd::vec_t<T>* best, simd::mask_t<T>* best_k,
                        simd::vec_t<T>* runner_up) {
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
    // runner-up of {best, runner_up, score0, score1}: the larger new score, or whichever of
    // best and the smaller new score loses.
    const V larger = take1 ? score0[r] : score1[r];
    const V loser = better ? best[r] : s;
    const V demoted = larger < loser ? larger : loser;
    runner_up[r] = demoted < runner_up[r] ? demoted : runner_up[r];
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

/// Vectors of points scored together by the point-major search (4 x 16 float points on
/// AVX-512): each broadcast feature of a centre feeds this many FMAs, and the 4 states of
/// (score, best, best index, runner-up) fit the register file (2 on AVX2's 16 registers).
constexpr int kPointVectors = simd::kVectorRegisters >= 32 ? 4 : 2;

/// Whether NearestCenters should search point-major: where its scores cost less than the
/// centre-major tile's per-point lane reductions and padded panels. The bounds are where the
/// two cross on a Zen 4 core (ns per point for D in 1..64 and K in 16..256, 20k to 400k
/// points), counted in centre-features K max(D, 8). AVX-512: float up to 2048 for D <= 16
/// and 1024 up to D = 64 (past that the transposed points leave L1), double for D <= 4 and
/// K <= 256. AVX2 (half the lanes and registers): float up to 512 for D <= 8, double up to 256.
template <class T> bool prefer_point_major(int64_t K, int64_t D) {
  const int64_t work = K * std::max<int64_t>(D, 8);
  if constexpr (simd::kVectorRegisters >= 32) {
    if constexpr (std::is_same_v<T, float>) return D <= 64 && work <= (D <= 16 ? 2048 : 1024);
    return D <= 4 && K <= 256;
  } else {
    if constexpr (std::is_same_v<T, float>) return D <= 8 && work <= 512;
    return work <= 256;
  }
}

/// Nearest-centre search against one packed copy of the centres. Two loop orders, the same
/// scores and results: centre-major (a register tile of points against panels of centres,
/// lanes are centres, each point's lanes reduced at the end) for many centres, and
/// point-major (lanes are points, the centres visited one by one in index order) for few,
/// where the per-point lane reductions and a half-empty panel would cost more than the scores.
template <class T> class NearestCenters {
  using V = simd::vec_t<T>;
  using M = simd::mask_t<T>;
  using Lane = typename simd::vector<T>::int_lane;
  static constexpr int L = Tile<T>::lanes;
  static constexpr int W = Tile<T>::width;

 public:
  NearestCenters(const Shape& s, const T* C)
      : s_(s), C_(C), packed_(s, C), point_major_(prefer_point_major<T>(s.K, s.D)) {
    panels_per_block_ = std::max<int64_t>(
        1, kBlockBytes / std::max<int64_t>(1, s.D * Tile<T>::width * int64_t(sizeof(T))));
  }

  /// Labels and squared distances of the n <= kChunkPoints points at Xc ([n, D]) of
  /// problem b, written to labels[0, n) and sq_dist[0, n).
  void assign_chunk(const T* Xc, int64_t b, int64_t n, int64_t* labels, T* sq_dist) const {
    T best_score[kChunkPoints], runner_up_score[kChunkPoints];
    int64_t best_label[kChunkPoints];
    if (point_major_)
      score_point_major(Xc, b, n, best_score, runner_up_score, best_label);
    else
      score_centre_major(Xc, b, n, best_score, runner_up_score, best_label);
    const T* Cb = C_ + b * s_.K * s_.D;
    for (int64_t i = 0; i < n; ++i) {
      const T* x = Xc + i * s_.D;
      int64_t label = best_label[i];
      T dist = exact_sq_dist(x, Cb + label * s_.D, s_.D);
      if (near_tie(best_score[i], runner_up_score[i],
                   rank_score_error<T>(dist, packed_.max_norm(b), s_.D)))
        label = nearest_exact(x, Cb, s_.K, s_.D, &dist);
      labels[i] = label;
      sq_dist[i] = dist;
    }
  }

 private:
  /// Point-major scores of a chunk: kPointVectors vectors of points at a time, their features
  /// transposed into [D][kPointVectors] vectors; for each centre k in index order, a strict <
  /// keeps the lowest index on ties, and the runner-up takes the larger of (best, score).
  void score_point_major(const T* Xc, int64_t b, int64_t n, T* best_score, T* runner_up_score,
                         int64_t* best_label) const {
    constexpr int P = kPointVectors;
    const V inf = simd::broadcast<V>(std::numeric_limits<T>::infinity());
    std::vector<V> xt(size_t(s_.D * P));
    for (int64_t g0 = 0; g0 < n; g0 += P * L) {
      // xt[d * P + p][l] = feature d of point g0 + p L + l (past n: the last point again).
      for (int p = 0; p < P; ++p)
        for (int l = 0; l < L; ++l) {
          const T* x = Xc + std::min<int64_t>(g0 + p * L + l, n - 1) * s_.D;
          for (int64_t d = 0; d < s_.D; ++d) xt[size_t(d * P + p)][l] = x[d];
        }
      V best[P], runner_up[P];
      M best_k[P];
      for (int p = 0; p < P; ++p) {
        best[p] = runner_up[p] = inf;
        best_k[p] = M{};
      }
      for (int64_t k = 0; k < s_.K; ++k) {
        const T* c = packed_.neg2c(b, k);
        V score[P];
        for (int p = 0; p < P; ++p) score[p] = simd::broadcast<V>(packed_.sq_norm_of(b, k));
        // rank score ||c||^2 + sum_d x_d (-2 c_d), as the centre-major tile sums it.
        for (int64_t d = 0; d < s_.D; ++d) {
          const V cd = simd::broadcast<V>(c[d * W]);
#pragma GCC unroll 4
          for (int p = 0; p < P; ++p) score[p] += xt[size_t(d * P + p)] * cd;
        }
        const M kv = simd::broadcast<M>(Lane(k));
#pragma GCC unroll 4
        for (int p = 0; p < P; ++p) {
          const M better = score[p] < best[p];
          // runner-up of {best, runner_up, score}: the larger of best and score competes.
          const V larger = better ? best[p] : score[p];
          runner_up[p] = larger < runner_up[p] ? larger : runner_up[p];
          best[p] = better ? score[p] : best[p];
          best_k[p] = better ? kv : best_k[p];
        }
      }
      for (int64_t i = g0; i < std::min<int64_t>(n, g0 + P * L); ++i) {
        const int p = int((i - g0) / L), l = int((i - g0) % L);
        best_score[i] = best[p][l];
        runner_up_score[i] = runner_up[p][l];
        best_label[i] = int64_t(best_k[p][l]);
      }
    }
  }

  /// Centre-major scores of a chunk: register tiles of points against blocks of panels.
  void score_centre_major(const T* Xc, int64_t b, int64_t n, T* best_score, T* runner_up_score,
                          int64_t* best_label) const {
    constexpr int R = Tile<T>::rows;
    const T inf = std::numeric_limits<T>::infinity();
    std::fill(best_score, best_score + n, inf);
    std::fill(runner_up_score, runner_up_score + n, inf);
    std::fill(best_label, best_label + n, int64_t(0));
    M lane_index;
    for (int l = 0; l < L; ++l) lane_index[l] = Lane(l);

    for (int64_t p0 = 0; p0 < packed_.panels(); p0 += panels_per_block_) {
      const int64_t p1 = std::min(packed_.panels(), p0 + panels_per_block_);
      for (int64_t r0 = 0; r0 < n; r0 += R) {
        // A short last tile repeats its last point; the extra rows are discarded.
        const T* x[R];
        for (int r = 0; r < R; ++r) x[r] = Xc + std::min(r0 + r, n - 1) * s_.D;
        V best[R], runner_up[R];
        M best_k[R];
        for (int r = 0; r < R; ++r) {
          best[r] = runner_up[r] = simd::broadcast<V>(inf);
          best_k[r] = M{};
        }
        for (int64_t p = p0; p < p1; ++p)
          score_panel<T>(x, packed_.panel(b, p), packed_.norm(b, p), s_.D,
                         lane_index + Lane(p * W), best, best_k, runner_up);
        // Fold the lanes of each row into the point's running best, lowest index on ties.
        for (int r = 0; r < R && r0 + r < n; ++r) {
          const T score = simd::all_lanes_min<V, M>(best[r])[0];
          const Lane k = lowest_index_of_min<T>(best[r], best_k[r], score);
          // k is the Lane max only if no lane equals the minimum (NaN scores): keep the old best.
          if (k == std::numeric_limits<Lane>::max()) continue;
          // Runner-up of the row: the best of the other lanes or the lanes' own runners-up.
          const V others = best_k[r] == simd::broadcast<M>(k) ? simd::broadcast<V>(inf) : best[r];
          const T row_runner_up =
              simd::all_lanes_min<V, M>(others < runner_up[r] ? others : runner_up[r])[0];
          T& kept = best_score[r0 + r];
          const bool row_wins = closer<T>(score, int64_t(k), kept, best_label[r0 + r]);
          runner_up_score[r0 + r] = std::min({runner_up_score[r0 + r], row_runner_up,
                                              row_wins ? kept : score});
          if (row_wins) {
            kept = score;
            best_label[r0 + r] = int64_t(k);
          }
        }
      }
    }
  }

  Shape s_;
  const T* C_;
  PackedCenters<T> packed_;
  bool point_major_;
  int64_t panels_per_block_;
};

/// Per-cluster sums (K*D weighted sums, then K weights per row) of points summed by
/// fill(b, i0, i1, acc) with blocked_sum, written to sums/wsum in T.
/// Throws std::invalid_argument if any label was out of range.
template <class T, class Fill>
void cluster_sums(const Shape& s, T* sums, T* wsum, Fill fill) {
  int64_t bad_labels = 0;
  const auto total =
      blocked_sum<accumulate_t<T>>(s.B, s.N, s.K * s.D + s.K, fill, bad_labels);
  if (bad_labels) throw std::invalid_argument("labels must lie in [0, n_clusters)");
#pragma omp parallel for schedule(static)
  for (int64_t b = 0; b < s.B; ++b) {
    const accumulate_t<T>* t = &total[size_t(b * (s.K * s.D + s.K))];
    for (int64_t e = 0; e < s.K * s.D; ++e) sums[b * s.K * s.D + e] = T(t[e]);
    for (int64_t k = 0; k < s.K; ++k) wsum[b * s.K + k] = T(t[s.K * s.D + k]);
  }
}

/// Adds w_i x_i and w_i of the n points at X ([n, D], with labels[n] and weights[n] or
/// nullptr) to their clusters' rows of acc, in order; returns the number of points skipped
/// because their label is outside [0, K).
template <class T>
int64_t accumulate_points(const Shape& s, const T* X, const int64_t* labels, const T* weights,
                          int64_t n, accumulate_t<T>* acc) {
  using A = accumulate_t<T>;
  A* acc_w = acc + s.K * s.D;
  int64_t skipped = 0;
  for (int64_t i = 0; i < n; ++i) {
    const int64_t k = labels[i];
    if (k < 0 || k >= s.K) {  // never index out of bounds
      ++skipped;
      continue;
    }
    const A w = weights ? A(weights[i]) : A(1);
    const T* x = X + i * s.D;
    A* a = acc + k * s.D;
    for (int64_t d = 0; d < s.D; ++d) a[d] += w * A(x[d]);
    acc_w[k] += w;
  }
  return skipped;
}

}  // namespace

template <class T>
void assign_labels(const Shape& s, const T* X, const T* C, int64_t* labels, T* sq_dist) {
  if (s.B == 0 || s.N == 0) return;
  if (s.K < 1) throw std::invalid_argument("assign_labels: need at least one centre");
  const NearestCenters<T> nearest(s, C);
  const int64_t chunks = (s.N + kChunkPoints - 1) / kChunkPoints;
  const Interruption interruption;
#pragma omp parallel for schedule(dynamic)
  for (int64_t task = 0; task < s.B * chunks; ++task) {
    if (interruption.requested()) continue;
    const int64_t b = task / chunks, i0 = (task % chunks) * kChunkPoints;
    const int64_t first = b * s.N + i0;
    nearest.assign_chunk(X + first * s.D, b, std::min(kChunkPoints, s.N - i0), labels + first,
                         sq_dist + first);
  }
}

template <class T>
void update_centers(const Shape& s, const T* X, const int64_t* labels, const T* weights,
                    T* sums, T* wsum) {
  cluster_sums<T>(s, sums, wsum, [&](int64_t b, int64_t i0, int64_t i1, accumulate_t<T>* acc) {
    const int64_t first = b * s.N + i0;
    return accumulate_points(s, X + first * s.D, labels + first,
                             weights ? weights + first : nullptr, i1 - i0, acc);
  });
}

/// lloyd_step's fill for blocked_sum: assigns a block chunk by chunk and sums each chunk
/// while it is still in cache. With a shift, each chunk's points are x - shift, rounded to T
/// as numpy's X - shift rounds them, formed in a small buffer (never a copy of X).
template <class T>
auto assign_and_sum(const Shape& s, const NearestCenters<T>& nearest, const T* X,
                    const T* shift, const T* weights, int64_t* labels, T* sq_dist) {
  const int64_t chunk = shift ? std::clamp<int64_t>(kCentredChunkBytes / (s.D * int64_t(sizeof(T))),
                                                    1, kChunkPoints)
                              : kChunkPoints;
  return [=, &nearest](int64_t b, int64_t i0, int64_t i1, accumulate_t<T>* acc) {
    std::vector<T> centred(shift ? size_t(chunk * s.D) : 0);
    int64_t skipped = 0;
    for (int64_t c0 = i0; c0 < i1; c0 += chunk) {
      const int64_t first = b * s.N + c0, n = std::min(chunk, i1 - c0);
      const T* points = X + first * s.D;
      if (shift) {
        for (int64_t i = 0; i < n; ++i)
          for (int64_t d = 0; d < s.D; ++d) centred[size_t(i * s.D + d)] = points[i * s.D + d] - shift[d];
        points = centred.data();
      }
      nearest.assign_chunk(points, b, n, labels + first, sq_dist + first);
      skipped += accumulate_points(s, points, labels + first, weights ? weights + first : nullptr, n, acc);
    }
    return skipped;
  };
}

template <class T>
void lloyd_step(const Shape& s, const T* X, const T* C, const T* weights, int64_t* labels,
                T* sq_dist, T* sums, T* wsum) {
  if (s.K < 1) throw std::invalid_argument("lloyd_step: need at least one centre");
  const NearestCenters<T> nearest(s, C);
  cluster_sums<T>(s, sums, wsum, assign_and_sum<T>(s, nearest, X, nullptr, weights, labels, sq_dist));
}

template <class T>
void lloyd_step_accumulate(const Shape& s, const T* X, const T* shift, const T* C,
                           const T* weights, int64_t* labels, T* sq_dist,
                           accumulate_t<T>* totals) {
  using A = accumulate_t<T>;
  if (s.K < 1) throw std::invalid_argument("lloyd_step: need at least one centre");
  const NearestCenters<T> nearest(s, C);
  const int64_t row = s.K * s.D + s.K;
  int64_t bad_labels = 0;
  const auto folded = blocked_sum<A>(s.B, s.N, row, assign_and_sum(s, nearest, X, shift, weights, labels, sq_dist),
                                     bad_labels, std::vector<A>(totals, totals + s.B * row));
  std::copy(folded.begin(), folded.end(), totals);
}

#define GENFAST_INSTANTIATE(T)                                                                \
  template void assign_labels<T>(const Shape&, const T*, const T*, int64_t*, T*);            \
  template void update_centers<T>(const Shape&, const T*, const int64_t*, const T*, T*, T*); \
  template void lloyd_step<T>(const Shape&, const T*, const T*, const T*, int64_t*, T*, T*, T*); \
  template void lloyd_step_accumulate<T>(const Shape&, const T*, const T*, const T*, const T*, \
                                         int64_t*, T*, accumulate_t<T>*);
GENFAST_INSTANTIATE(float)
GENFAST_INSTANTIATE(double)
#undef GENFAST_INSTANTIATE

}  // namespace genfast::kmeans
