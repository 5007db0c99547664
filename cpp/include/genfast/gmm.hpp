// genfast Gaussian mixtures: math shared by the CPU (cpp/gmm.cpp) and CUDA kernels.
//
// Components are parameterised as in scikit-learn, by the upper-triangular Cholesky factor
// P_k of each precision matrix (Sigma_k^-1 = P_k P_k^T):
//   log N(x | mu_k, Sigma_k) = -D/2 log(2 pi) + log det P_k - 1/2 ||(x - mu_k)^T P_k||^2.
#pragma once

#include <genfast/common.hpp>

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

/// Guard added to N_k before dividing (scikit-learn's 10 eps): an empty component gets the
/// mean 0 instead of NaN.
GENFAST_HD double empty_component_guard() { return 10 * 2.220446049250313e-16; }

/// -D/2 log(2 pi): the normalising constant of a D-dimensional standard Gaussian.
GENFAST_HD double log_gauss_const(int64_t D) { return -0.5 * double(D) * 1.8378770664093453; }

}  // namespace genfast::gmm
