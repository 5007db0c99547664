// genfast VAE ELBO CPU kernels: the per-sample ELBO, its two terms and their gradients in one
// pass over the rows, SIMD across the features with genfast/vmath.hpp's exp and log1p; and
// the per-row scaling that turns saved per-sample gradients into the backward's result.
#include "elbo.hpp"

#include <genfast/simd.hpp>
#include <genfast/vmath.hpp>

#include <cmath>
#include <cstring>
#include <utility>

namespace genfast::elbo {
namespace {

template <class T> using vec = simd::vec_t<T>;
template <class T> constexpr int kLanes = simd::vector<T>::lanes;

/// vmath's exp and log1p_reciprocal_unit as the function objects the shared math takes, forced
/// inline: a call would clobber every vector register of the loop.
struct VectorExp {
  template <class V> GENFAST_VMATH_INLINE V operator()(V v) const { return vmath::exp_approx(v); }
};
struct VectorLog1pReciprocal {
  template <class V> GENFAST_VMATH_INLINE auto operator()(V v) const { return vmath::log1p_reciprocal_unit(v); }
};

/// Sum of vectors of T in the accumulation type. Vectors are added in T for blocks of
/// kBlock (each lane sums at most kBlock terms in T), and each block's sum is widened lane by
/// lane into kParts native vectors of the accumulation type: double accuracy for float data at
/// a fraction of the cost of widening every vector.
template <class T> class Accumulator {
 public:
  using A = accumulate_t<T>;
  void add(vec<T> v) {
    block_ += v;
    if (++count_ == kBlock) flush();
  }
  /// Everything added, the lanes summed in element order.
  A total() {
    flush();
    A sum = 0;
    for (int p = 0; p < kParts; ++p)
      for (int l = 0; l < kLanes<A>; ++l) sum += sum_[p][l];
    return sum;
  }

 private:
  static constexpr int kBlock = 8;
  static constexpr int kParts = int(sizeof(A) / sizeof(T));
  void flush() {
    add_parts(std::make_index_sequence<kParts>{});
    block_ = vec<T>{};
    count_ = 0;
  }
  /// Lanes [P kLanes<A>, (P + 1) kLanes<A>) of the block, widened to A.
  template <size_t P, size_t... I> vec<A> part(std::index_sequence<I...>) const {
    return __builtin_convertvector(__builtin_shufflevector(block_, block_, (P * kLanes<A> + I)...), vec<A>);
  }
  template <size_t... P> void add_parts(std::index_sequence<P...>) {
    ((sum_[P] += part<P>(std::make_index_sequence<kLanes<A>>{})), ...);
  }
  vec<T> block_ = {};
  int count_ = 0;
  vec<A> sum_[kParts] = {};
};

/// Access to a whole vector of a row.
template <class T> struct Whole {
  vec<T> load(const T* q) const { return simd::load<vec<T>>(q); }
  void store(T* q, vec<T> v) const { simd::store(q, v); }
  vec<T> counted(vec<T> v) const { return v; }
};

/// Access to the first n < lanes elements at the end of a row: the other lanes load as zero,
/// are never stored and count as zero in sums.
template <class T> struct Head {
  int n;
  vec<T> load(const T* q) const {
    vec<T> v{};
    std::memcpy(&v, q, size_t(n) * sizeof(T));
    return v;
  }
  void store(T* q, vec<T> v) const { std::memcpy(q, &v, size_t(n) * sizeof(T)); }
  vec<T> counted(vec<T> v) const {
    simd::mask_t<T> lane;
    for (int l = 0; l < kLanes<T>; ++l) lane[l] = l;
    return lane < n ? v : vec<T>{};
  }
};

/// Calls step(offset, access) for every vector of a row of n elements: whole vectors, then
/// one Head for the remainder.
template <class T, class Step> inline void for_each_vector(int64_t n, Step&& step) {
  int64_t i = 0;
  for (; i + kLanes<T> <= n; i += kLanes<T>) step(i, Whole<T>{});
  if (i < n) step(i, Head<T>{int(n - i)});
}

/// Reconstruction term of row b: returns rec_b when kValues, writes the gradients when kGrads.
template <class T, Likelihood kLikelihood, bool kValues, bool kGrads>
accumulate_t<T> reconstruction_row(const Problem<T>& p, int64_t D, int64_t b) {
  using V = vec<T>;
  const T scale = T(p.rec_scale);
  const T fixed_logvar = T(p.fixed_logvar);
  const T fixed_inv_std = T(std::exp(-0.5 * p.fixed_logvar));
  Accumulator<T> acc;
  for_each_vector<T>(D, [&](int64_t d, auto access) {
    const int64_t at = b * D + d;
    const V x = access.load(p.x + at), out = access.load(p.decoder_out + at);
    V log_p, d_out, d_x;
    if constexpr (kLikelihood == Likelihood::bernoulli) {
      const BernoulliTerm<V> t = bernoulli_term(x, out, VectorExp{}, VectorLog1pReciprocal{});
      log_p = t.log_p, d_out = t.d_logit, d_x = t.d_x;
    } else {
      const bool per_element = p.decoder_logvar != nullptr;
      const V s = per_element ? access.load(p.decoder_logvar + at) : V{} + fixed_logvar;
      const V inv_std = per_element ? VectorExp{}(T(-0.5) * s) : V{} + fixed_inv_std;
      const GaussianTerm<V> t = gaussian_term(x, out, s, inv_std);
      log_p = t.log_p, d_out = t.d_mean, d_x = -t.d_mean;
      if (kGrads && p.grad_decoder_logvar) access.store(p.grad_decoder_logvar + at, weighted(scale, t.d_logvar));
    }
    if constexpr (kValues) acc.add(access.counted(log_p));
    if constexpr (kGrads) {
      if (p.grad_decoder_out) access.store(p.grad_decoder_out + at, weighted(scale, d_out));
      if (p.grad_x) access.store(p.grad_x + at, weighted(scale, d_x));
    }
  });
  return acc.total();
}

/// KL term of row b: returns kl_b when kValues, writes the gradients when kGrads.
template <class T, bool kValues, bool kGrads>
accumulate_t<T> kl_row(const Problem<T>& p, int64_t L, int64_t b) {
  using V = vec<T>;
  const T scale = T(p.kl_scale);
  Accumulator<T> acc;
  for_each_vector<T>(L, [&](int64_t l, auto access) {
    const int64_t at = b * L + l;
    const KLTerm<V> t = kl_term(access.load(p.mu + at), access.load(p.logvar + at), VectorExp{});
    if constexpr (kValues) acc.add(access.counted(t.kl));
    if constexpr (kGrads) {
      if (p.grad_mu) access.store(p.grad_mu + at, weighted(scale, t.d_mu));
      if (p.grad_logvar) access.store(p.grad_logvar + at, weighted(scale, t.d_logvar));
    }
  });
  return acc.total();
}

template <class T, Likelihood kLikelihood, bool kValues, bool kGrads>
void evaluate_rows(const Shape& s, const Problem<T>& p) {
  const bool reconstruction = p.visits_data(s), kl = p.visits_latents(s);
#pragma omp parallel for schedule(static)
  for (int64_t b = 0; b < s.B; ++b) {
    const accumulate_t<T> rec_b =
        reconstruction ? reconstruction_row<T, kLikelihood, kValues, kGrads>(p, s.D, b) : 0;
    const accumulate_t<T> kl_b = kl ? kl_row<T, kValues, kGrads>(p, s.L, b) : 0;
    if constexpr (kValues) {
      if (p.elbo) p.elbo[b] = T(p.elbo_value(rec_b, kl_b));
      if (p.rec) p.rec[b] = T(rec_b);
      if (p.kl) p.kl[b] = T(kl_b);
    }
  }
}

}  // namespace

template <class T>
void evaluate(const Shape& s, Likelihood likelihood, const Problem<T>& p) {
  check_problem(s, likelihood, p);
  with_modes(likelihood, p, [&](auto lik, auto values, auto gradients) {
    evaluate_rows<T, decltype(lik)::value, decltype(values)::value, decltype(gradients)::value>(s, p);
  });
}

template <class T> void scale_rows(int64_t B, int64_t n, const T* in, const T* weight, T* out) {
#pragma omp parallel for schedule(static)
  for (int64_t b = 0; b < B; ++b) {
    const T w = weight[b];
    for (int64_t i = 0; i < n; ++i) out[b * n + i] = weighted(w, in[b * n + i]);
  }
}

template void evaluate<float>(const Shape&, Likelihood, const Problem<float>&);
template void evaluate<double>(const Shape&, Likelihood, const Problem<double>&);
template void scale_rows<float>(int64_t, int64_t, const float*, const float*, float*);
template void scale_rows<double>(int64_t, int64_t, const double*, const double*, double*);

}  // namespace genfast::elbo
