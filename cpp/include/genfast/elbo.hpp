// genfast VAE evidence lower bound: the per-element math shared by the CPU (cpp/elbo.cpp) and
// CUDA (cuda/elbo.cu) kernels, and the description of one call.
//
// For sample b with data x_b [D], decoder output o_b [D] and posterior N(mu_b, exp(logvar_b)) [L]:
//   ELBO_b = rec_b - beta kl_b,  rec_b = sum_d log p(x_bd | o_bd),
//   kl_b = KL(N(mu_b, exp(logvar_b)) || N(0, I)) = 1/2 sum_l (mu_bl^2 + exp(logvar_bl) - logvar_bl - 1).
// The formulas are templates on V: float or double, or on the CPU a GCC vector of them (every
// step is then one vector operation). The transcendental functions come from the caller as
// function objects, so that the CPU uses genfast/vmath.hpp and CUDA its own math library.
#pragma once

#include <genfast/common.hpp>

#include <stdexcept>
#include <type_traits>
#include <utility>

/// The per-element functions run inside the CPU kernel's SIMD loop, so on the host they are
/// forced inline as CUDA's GENFAST_HD already is: a call there would spill every vector register.
#if defined(__CUDACC__)
#define GENFAST_ELBO_INLINE GENFAST_HD
#else
#define GENFAST_ELBO_INLINE inline __attribute__((always_inline))
#endif

namespace genfast::elbo {

/// Reconstruction model p(x | decoder output).
enum class Likelihood : int {
  bernoulli = 0,  ///< decoder output = logits l, p(x = 1) = sigmoid(l)
  gaussian = 1,   ///< decoder output = means, with per-element or one fixed log-variance
};

/// Problem size.
struct Shape {
  int64_t B = 0;  ///< samples (rows)
  int64_t D = 0;  ///< data features per sample (0: no reconstruction term)
  int64_t L = 0;  ///< latent dimensions per sample (0: no KL term)
};

/// Arrays of one ELBO call: C-contiguous rows, element type T. An input that is absent or an
/// output that is not wanted is a null pointer; the kernels compute exactly the outputs given,
/// all of them in one pass over the rows. The gradients are those of
///   sum_b (rec_scale rec_b + kl_scale kl_b),
/// so (1, 1) gives each sample's d rec_b and d kl_b, and (1, -beta) the gradient of sum_b ELBO_b.
template <class T> struct Problem {
  // IN
  const T* x = nullptr;               ///< [B, D] data
  const T* decoder_out = nullptr;     ///< [B, D] Bernoulli logits or Gaussian means
  const T* decoder_logvar = nullptr;  ///< [B, D] Gaussian log-variances; null: fixed_logvar
  const T* mu = nullptr;              ///< [B, L] posterior means
  const T* logvar = nullptr;          ///< [B, L] posterior log-variances
  double fixed_logvar = 0;  ///< Gaussian log-variance of every element when decoder_logvar is null
  double beta = 1;          ///< weight of the KL term in the ELBO
  double rec_scale = 1;     ///< weight of every rec_b in the differentiated sum
  double kl_scale = 1;      ///< weight of every kl_b in the differentiated sum
  // OUT: per-sample values
  T* elbo = nullptr;  ///< [B] rec_b - beta kl_b
  T* rec = nullptr;   ///< [B] sum_d log p(x_bd | decoder_out_bd)
  T* kl = nullptr;    ///< [B] KL(q(z | x_b) || N(0, I))
  // OUT: gradients
  T* grad_x = nullptr;               ///< [B, D] rec_scale d rec_b / dx
  T* grad_decoder_out = nullptr;     ///< [B, D] rec_scale d rec_b / d decoder_out
  T* grad_decoder_logvar = nullptr;  ///< [B, D] rec_scale d rec_b / d decoder_logvar
  T* grad_mu = nullptr;              ///< [B, L] kl_scale d kl_b / d mu
  T* grad_logvar = nullptr;          ///< [B, L] kl_scale d kl_b / d logvar

  /// ELBO_b = rec_b - beta kl_b; beta = 0 drops the KL term (an infinite kl_b times 0 is NaN).
  template <class C> GENFAST_HD C elbo_value(C rec_b, C kl_b) const {
    return beta == 0 ? rec_b : rec_b - C(beta) * kl_b;
  }
  GENFAST_HD bool wants_values() const { return elbo || rec || kl; }
  GENFAST_HD bool wants_reconstruction_gradients() const {
    return grad_x || grad_decoder_out || grad_decoder_logvar;
  }
  GENFAST_HD bool wants_kl_gradients() const { return grad_mu || grad_logvar; }
  GENFAST_HD bool wants_gradients() const {
    return wants_reconstruction_gradients() || wants_kl_gradients();
  }
  /// Whether a pass must read the data rows, and the latent rows.
  GENFAST_HD bool visits_data(const Shape& s) const {
    return s.D > 0 && (wants_values() || wants_reconstruction_gradients());
  }
  GENFAST_HD bool visits_latents(const Shape& s) const {
    return s.L > 0 && (wants_values() || wants_kl_gradients());
  }
};

/// scale * d for one gradient element: a zero scale gives 0 even where d is infinite (a term
/// of weight zero has no gradient, as elbo_value drops a KL term of weight beta = 0; 0 * inf
/// would be NaN).
template <class S, class V> GENFAST_HD V weighted(S scale, V d) {
  return scale == S(0) ? V{} : scale * d;
}

/// Throws std::invalid_argument when an input that a requested output needs is missing, or
/// for a log-variance with the Bernoulli likelihood (host code; both backends call it first).
template <class T> void check_problem(const Shape& s, Likelihood likelihood, const Problem<T>& p) {
  const auto require = [](bool ok, const char* what) {
    if (!ok) throw std::invalid_argument(what);
  };
  require(s.B >= 0 && s.D >= 0 && s.L >= 0, "B, D and L must be non-negative");
  if (p.visits_data(s)) require(p.x && p.decoder_out, "the reconstruction term needs x and the decoder output");
  if (p.visits_latents(s)) require(p.mu && p.logvar, "the KL term needs mu and logvar");
  require(s.D == 0 || !p.grad_decoder_logvar || p.decoder_logvar,
          "grad_decoder_logvar needs a per-element decoder log-variance");
  if (likelihood == Likelihood::bernoulli)
    require(!p.decoder_logvar && !p.grad_decoder_logvar, "the Bernoulli likelihood has no log-variance");
}

/// Calls run(likelihood, values, gradients) with each argument a std::integral_constant (so a
/// kernel can be instantiated for exactly the outputs p asks for); nothing when it asks for none.
template <class T, class Run> void with_modes(Likelihood likelihood, const Problem<T>& p, Run&& run) {
  const auto for_likelihood = [&](auto values, auto gradients) {
    if (likelihood == Likelihood::bernoulli)
      run(std::integral_constant<Likelihood, Likelihood::bernoulli>{}, values, gradients);
    else
      run(std::integral_constant<Likelihood, Likelihood::gaussian>{}, values, gradients);
  };
  if (p.wants_values() && p.wants_gradients())
    for_likelihood(std::true_type{}, std::true_type{});
  else if (p.wants_values())
    for_likelihood(std::true_type{}, std::false_type{});
  else if (p.wants_gradients())
    for_likelihood(std::false_type{}, std::true_type{});
}

/// log(2 pi)
GENFAST_HD double log_two_pi() { return 1.8378770664093453; }

/// Lane type of V: V itself for a scalar, the element type of a GCC vector.
template <class V, class = void> struct lane { using type = V; };
template <class V> struct lane<V, std::void_t<decltype(std::declval<V&>()[0])>> {
  using type = std::remove_cv_t<std::remove_reference_t<decltype(std::declval<V&>()[0])>>;
};
template <class V> using lane_t = typename lane<V>::type;

/// One element's Bernoulli log-likelihood and its derivatives.
template <class V> struct BernoulliTerm {
  V log_p;    ///< x l - softplus(l)
  V d_logit;  ///< x - sigmoid(l)
  V d_x;      ///< l
};

/// log p(x | l) = x l - softplus(l) for logits l, finite for every finite l and x (exp only
/// ever sees -|l| <= 0, so nothing overflows). `log1p_reciprocal(e)` returns {log1p(e),
/// 1 / (1 + e)} for e in (0, 1].
template <class V, class Exp, class Log1pReciprocal>
GENFAST_ELBO_INLINE BernoulliTerm<V> bernoulli_term(V x, V l, Exp exp, Log1pReciprocal log1p_reciprocal) {
  using E = lane_t<V>;
  const V e = exp(l < E(0) ? l : -l);  // exp(-|l|) in (0, 1]
  const auto lr = log1p_reciprocal(e);
  const V sigmoid_neg_abs = e * lr.reciprocal;  // sigmoid(-|l|) = e / (1 + e)
  // With softplus(l) = max(l, 0) + log1p(e), x l - softplus(l) = x' l - log1p(e) where
  // x' = x - 1 for l > 0 and x otherwise; with sigmoid(l) = 1 - sigmoid(-|l|) for l > 0,
  // x - sigmoid(l) = x' + sigmoid(-|l|) or x' - sigmoid(-|l|). x' l and x' + sigmoid(-|l|)
  // never cancel for x in {0, 1}, so tiny log-likelihoods and gradients keep their digits.
  const V x_shift = l > E(0) ? x - E(1) : x;
  return {x_shift * l - lr.log1p, x_shift + (l > E(0) ? sigmoid_neg_abs : -sigmoid_neg_abs), l};
}

/// One element's Gaussian log-likelihood and its derivatives (d/dx = -d_mean).
template <class V> struct GaussianTerm {
  V log_p;     ///< -1/2 (log 2 pi + s + (x - m)^2 exp(-s))
  V d_mean;    ///< (x - m) exp(-s)
  V d_logvar;  ///< ((x - m)^2 exp(-s) - 1) / 2
};

/// log N(x | m, exp(s)) given the inverse standard deviation exp(-s/2) (computed by the
/// caller: per element, or once for a fixed variance). The residual is standardised first,
/// z = (x - m) exp(-s/2): the precision exp(-s) underflows float32 from s = 104 on, where
/// (x - m)^2 exp(-s) can still be 1e20, and (x - m) times a zero precision dropped it.
template <class V>
GENFAST_ELBO_INLINE GaussianTerm<V> gaussian_term(V x, V m, V s, V inv_std) {
  using E = lane_t<V>;
  const V z = (x - m) * inv_std;
  const V q = z * z;  // (x - m)^2 / var
  return {E(-0.5) * ((E(log_two_pi()) + s) + q), z * inv_std, E(0.5) * (q - E(1))};
}

/// One latent's KL divergence from the standard normal and its derivatives.
template <class V> struct KLTerm {
  V kl;        ///< (mu^2 + exp(lv) - 1 - lv) / 2
  V d_mu;      ///< mu
  V d_logvar;  ///< (exp(lv) - 1) / 2
};

/// KL(N(mu, exp(lv)) || N(0, 1)). exp(lv) - 1 - lv cancels for small |lv| (a posterior
/// close to the prior), so there it is summed as the series sum_{n>=2} lv^n / n!, which
/// also gives exp(lv) - 1 = (that) + lv accurately for the gradient.
template <class V, class Exp>
GENFAST_ELBO_INLINE KLTerm<V> kl_term(V mu, V lv, Exp exp) {
  using E = lane_t<V>;
  // Terms up to lv^N / N! reach the type's precision for |lv| < 1/2.
  constexpr int N = sizeof(E) == 4 ? 8 : 16;
  // lv^2/2 (1 + lv/3 (1 + lv/4 (1 + ... (1 + lv/N))))
  V nested = V{} + E(1);
  for (int n = N; n >= 3; --n) nested = E(1) + lv * nested * (E(1) / E(n));
  const V series = E(0.5) * lv * lv * nested;
  const auto small = (lv < E(0.5)) & (lv > E(-0.5));
  // exp(lv) - 1 directly outside the series' range: (exp(lv) - 1 - lv) + lv would lose the
  // -1 to rounding for large |lv| (d/dlv 0 instead of -1/2 at lv = -1e14 in float32)
  const V expm1 = small ? series + lv : exp(lv) - E(1);
  const V excess = small ? series : expm1 - lv;  // exp(lv) - 1 - lv
  return {E(0.5) * (mu * mu + excess), mu, E(0.5) * expm1};
}

}  // namespace genfast::elbo
