// genfast Gaussian mixtures: math shared by the CPU (cpp/gmm.cpp) and CUDA (cuda/gmm.cu)
// kernels.
//
// Components are parameterised as in scikit-learn, by the upper-triangular Cholesky factor
// P_k of each precision matrix (Sigma_k^-1 = P_k P_k^T):
//   log N(x | mu_k, Sigma_k) = -D/2 log(2 pi) + log det P_k - 1/2 ||(x - mu_k)^T P_k||^2.
#pragma once

#include <genfast/common.hpp>

#include <cmath>
#include <limits>
#include <stdexcept>
#include <string>

namespace genfast::gmm {

/// Covariance structure of the components (scikit-learn's covariance_type), and the shape
/// of the precision Cholesky factors it implies for K components in D dimensions.
enum class Covariance : int {
  full = 0,       ///< one (D, D) upper-triangular factor per component: (K, D, D)
  tied = 1,       ///< one (D, D) factor shared by all components
  diag = 2,       ///< per-feature 1/sigma for each component: (K, D)
  spherical = 3,  ///< one 1/sigma per component: (K,)
};

/// Problem size: N points, K components, D features.
struct Shape {
  int64_t N = 0;  ///< points
  int64_t K = 0;  ///< components
  int64_t D = 0;  ///< features
};

/// Elements of the precision factors of K components in D dimensions, which is also the
/// size of the M-step scatter: full K D D, tied D D, diag K D, spherical K.
GENFAST_HD int64_t factor_elements(Covariance cov, int64_t K, int64_t D) {
  switch (cov) {
    case Covariance::full: return K * D * D;
    case Covariance::tied: return D * D;
    case Covariance::diag: return K * D;
    case Covariance::spherical: break;
  }
  return K;
}

/// The covariance type of scikit-learn's name for it; std::invalid_argument for any other.
inline Covariance covariance_from_name(const std::string& name) {
  if (name == "full") return Covariance::full;
  if (name == "tied") return Covariance::tied;
  if (name == "diag") return Covariance::diag;
  if (name == "spherical") return Covariance::spherical;
  throw std::invalid_argument("covariance_type must be 'full', 'tied', 'diag' or 'spherical', got '" + name + "'");
}

/// Guard added to N_k before dividing (scikit-learn's 10 eps): an empty component gets the
/// mean 0 instead of NaN.
GENFAST_HD double empty_component_guard() { return 10 * 2.220446049250313e-16; }

/// -D/2 log(2 pi): the normalising constant of a D-dimensional standard Gaussian.
GENFAST_HD double log_gauss_const(int64_t D) { return -0.5 * double(D) * 1.8378770664093453; }

/// log det P_k: the logs of the factor's diagonal added in feature order (spherical:
/// D log p_k). P is the whole precisions_cholesky array, laid out as `cov` says.
template <class T> GENFAST_HD double log_det_factor(Covariance cov, int64_t D, int64_t k, const T* P) {
  if (cov == Covariance::spherical) return double(D) * std::log(double(P[k]));
  // The diagonal of factor k: full (K, D, D) strides D + 1 from k D D, tied (D, D) from 0,
  // diag (K, D) strides 1 from k D.
  const bool matrix = cov != Covariance::diag;
  const T* diagonal = P + (cov == Covariance::full ? k * D * D : cov == Covariance::diag ? k * D : 0);
  double sum = 0;
  for (int64_t i = 0; i < D; ++i) sum += std::log(double(diagonal[matrix ? i * (D + 1) : i]));
  return sum;
}

/// log w_k + log det P_k - D/2 log(2 pi): the part of log w_k N(x | k) that does not
/// depend on x.
GENFAST_HD double component_constant(double log_det, double weight, int64_t D) {
  return log_gauss_const(D) + log_det + std::log(weight);
}

/// Shift of a log-sum-exp over terms t_k: their maximum m, or 0 when every term is -inf, so
/// that shift + log(sum_k exp(t_k - shift)) is log(0) = -inf there instead of
/// -inf - -inf = NaN. V is T or a vector of T (the comparison is then per lane).
template <class T, class V> GENFAST_HD V lse_shift(V max_term) {
  return max_term == -std::numeric_limits<T>::infinity() ? V{} : max_term;
}

/// log p(k | x) = log w_k N(x | k) - log p(x); -inf for a point of probability 0 (never NaN).
template <class T> GENFAST_HD T log_responsibility(T log_joint, T log_prob) {
  constexpr T neg_inf = -std::numeric_limits<T>::infinity();
  return log_prob == neg_inf ? neg_inf : log_joint - log_prob;
}

/// What can be wrong with one component's parameters, in the order both kernels check
/// them: its weight, then its precision factor row by row (the diagonal entry, then the
/// entries left of it). The first fault of the lowest-numbered component is reported.
enum class Fault : int {
  negative_weight = 0,   ///< w_k < 0 or NaN
  nonpositive_diagonal,  ///< a diagonal entry of the factor (diag/spherical: any entry) <= 0 or NaN
  not_upper_triangular,  ///< a nonzero entry below the diagonal (full, tied)
};

/// The std::invalid_argument message for `fault` in component k, whose weight is `weight`.
inline std::string fault_message(Covariance cov, int64_t k, Fault fault, double weight) {
  const std::string component = "component " + std::to_string(k);
  if (fault == Fault::negative_weight)
    return "weights must be non-negative; " + component + " has " + std::to_string(weight);
  if (cov == Covariance::diag || cov == Covariance::spherical)
    return "precisions_cholesky must be positive; " + component + " is not";
  const std::string who = cov == Covariance::full ? "precisions_cholesky[" + std::to_string(k) + "]"
                                                  : std::string("precisions_cholesky");
  if (fault == Fault::nonpositive_diagonal) return who + " must have a positive diagonal";
  return who + " must be upper triangular (scikit-learn's precisions_cholesky_ layout)";
}

}  // namespace genfast::gmm
