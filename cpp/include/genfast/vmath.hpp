// genfast: branch-free, vectorisable exp / log / log1p for the CPU kernels. CPU-only: it
// relies on GCC vector extensions and is not meant for CUDA device code (use the CUDA math
// library there).
//
// GCC vectorises calls to libm only under -ffast-math, which the project forbids because it
// assumes no inf/NaN (DESIGN.md, "Numerics"). These are small inline replacements built from
// +, *, comparisons, selects and integer bit operations only, so that
//   * a plain loop `y[i] = exp_approx(x[i])` over float/double arrays auto-vectorises, and
//   * the same templates accept GCC vector-extension types (genfast::simd::vec_t<T>) and
//     compile to straight-line SIMD code with no calls and no branches.
//
// Every function takes V = float, double, or a GCC vector of float/double
// (`float __attribute__((vector_size(N)))`), and returns V.
//
// Accuracy: max error < 1 ulp for every function and type (cpp/tests/test_vmath.cpp checks
// this against glibc, for scalars, auto-vectorised loops and vector types; measured maxima):
//                 float (all 2^32 inputs)   double (2e8 sweep + random inputs)
//   exp_approx    0.894 ulp                 0.960 ulp
//   log_approx    0.758 ulp                 0.743 ulp
//   log1p_approx  0.800 ulp                 0.754 ulp
// (-march=native, AVX-512 with FMA; -march=x86-64-v2, no FMA: at most 0.895 ulp for float,
// 0.960 for double, over the same inputs.) Scalar and vector results may differ in the last
// bit where the compiler contracts a*b+c into an FMA differently; both are within the bound.
// Special values (no branches: selects on comparison masks):
//   exp:   exp(-inf) = +0, exp(+inf) = +inf, exp(NaN) = NaN, exp(+-0) = 1; overflow gives +inf;
//          underflow is gradual: subnormal results are correctly scaled (one rounding, as
//          accurate as normal ones) and results below half the smallest subnormal are +0.
//   log:   log(+-0) = -inf, log(x < 0) = NaN (-inf included), log(+inf) = +inf, NaN -> NaN,
//          log(1) = +0; subnormal inputs are rescaled, not flushed (same accuracy).
//   log1p: log1p(-1) = -inf, log1p(x < -1) = NaN, log1p(+inf) = +inf, NaN -> NaN,
//          log1p(+-0) = +-0, log1p(tiny x) = x.
// All of this assumes the default floating-point environment (round to nearest, no FTZ/DAZ);
// with FTZ/DAZ set, subnormal results/inputs are flushed by the hardware as usual.
//
// Build flags: correct with or without FMA contraction (-ffp-contract=fast is the project
// default) and with or without -fno-math-errno; must NOT be compiled with -ffast-math /
// -ffinite-math-only / -fassociative-math (the Cody-Waite and 2Sum steps rely on IEEE order).
//
// Polynomial coefficients: weighted Remez exchange (relative error), computed in 50-digit
// arithmetic (mpmath) for this file and rounded to nearest float/double. Approximation errors
// before rounding: exp float 2^-28.3, double 2^-57.9; log float 2^-30.2, double 2^-59.5.
#pragma once

#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>

#include "genfast/simd.hpp"

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

/// The public functions are forced inline: a non-inlined call would pass whole vectors
/// through memory/registers per call and hide the code from the loop optimiser.
#define GENFAST_VMATH_INLINE inline __attribute__((always_inline))

namespace genfast::vmath {

/// Lane types of V: V is float/double (one lane) or a GCC vector of float/double.
/// `elem` is the floating-point lane type, `uint_lane` the unsigned integer of the same
/// width, and `uint_type` the unsigned integer scalar/vector with the same shape as V
/// (the type of V's bit pattern).
template <class V, bool Scalar = std::is_floating_point_v<V>> struct lane_traits;

template <class V> struct lane_traits<V, true> {
  using elem = V;
  using uint_lane = std::make_unsigned_t<typename simd::same_width_int<V>::type>;
  using uint_type = uint_lane;
  static constexpr int lanes = 1;
};

template <class V> struct lane_traits<V, false> {
  using elem = std::remove_cv_t<std::remove_reference_t<decltype(std::declval<V&>()[0])>>;
  static_assert(std::is_floating_point_v<elem>, "vmath: V must be a vector of float/double");
  using uint_lane = std::make_unsigned_t<typename simd::same_width_int<elem>::type>;
  typedef uint_lane uint_type __attribute__((vector_size(sizeof(V))));
  static constexpr int lanes = int(sizeof(V) / sizeof(elem));
};

namespace detail {

/// Bit-level constants of the IEEE binary32 / binary64 formats and of the approximations.
template <class T> struct consts;

template <> struct consts<float> {
  static constexpr int mant_bits = 23;
  static constexpr uint32_t bias = 127;
  static constexpr uint32_t mant_mask = 0x007fffffu;
  static constexpr float shifter = 0x1.8p23f;   ///< 1.5 * 2^23: adding it rounds to an integer
  static constexpr float log2e = 0x1.715476p0f;
  static constexpr float ln2_hi = 0x1.62e4p-1f;  ///< ln2 in 15 bits: n * ln2_hi exact for |n| < 2^9
  static constexpr float ln2_lo = 0x1.7f7d1cp-20f;  ///< ln2 - ln2_hi, rounded
  static constexpr float exp_lo = -104.0f;  ///< exp(x) < 2^-150 below: rounds to +0
  static constexpr float exp_hi = 89.0f;    ///< exp(x) > FLT_MAX above: rounds to +inf
  static constexpr float flush_lo = -86.0f;   ///< exp_nonpositive_approx's clamp (n >= -124)
  static constexpr float sqrt_half = 0x1.6a09e6p-1f;  ///< sqrt(2)/2 (rounded)
  static constexpr float subnormal_scale = 0x1p24f;   ///< lifts every subnormal to a normal
  static constexpr float subnormal_log2 = 24.0f;
  static constexpr float log1p_corr_max = 0x1p100f;  ///< log1p: c/u (< 2^-24) skipped above
};

template <> struct consts<double> {
  static constexpr int mant_bits = 52;
  static constexpr uint64_t bias = 1023;
  static constexpr uint64_t mant_mask = 0x000fffffffffffffull;
  static constexpr double shifter = 0x1.8p52;
  static constexpr double log2e = 0x1.71547652b82fep0;
  static constexpr double ln2_hi = 0x1.62e42ffp-1;  ///< ln2 in 29 bits: n * ln2_hi exact for |n| < 2^24
  static constexpr double ln2_lo = -0x1.718432a1b0e26p-35;  ///< ln2 - ln2_hi, rounded
  static constexpr double exp_lo = -746.0;  ///< exp(x) < 2^-1075 below: rounds to +0
  static constexpr double exp_hi = 710.0;   ///< exp(x) > DBL_MAX above: rounds to +inf
  static constexpr double flush_lo = -700.0;  ///< exp_nonpositive_approx's clamp (n >= -1010)
  static constexpr double sqrt_half = 0x1.6a09e667f3bcdp-1;
  static constexpr double subnormal_scale = 0x1p54;
  static constexpr double subnormal_log2 = 54.0;
  static constexpr double log1p_corr_max = 0x1p900;  ///< log1p: c/u (< 2^-53) skipped above
};

/// V with every lane equal to c (c itself for scalars).
template <class V, class S> inline V splat(S c) {
  if constexpr (std::is_arithmetic_v<V>) {
    return V(c);
  } else {
    return simd::broadcast<V>(c);
  }
}

/// Bit pattern of x, scalar or vector (memcpy: no type punning UB; compiles to nothing or one register move).
template <class V> inline typename lane_traits<V>::uint_type to_bits(V x) {
  typename lane_traits<V>::uint_type u;
  static_assert(sizeof(u) == sizeof(x));
  std::memcpy(&u, &x, sizeof(x));
  return u;
}

/// Float scalar/vector with bit pattern u.
template <class V> inline V from_bits(typename lane_traits<V>::uint_type u) {
  V x;
  static_assert(sizeof(u) == sizeof(x));
  std::memcpy(&x, &u, sizeof(x));
  return x;
}

/// mask ? a : b per lane, without a branch. Vectors: GCC's vector ?: (a blend). Scalars:
/// a bit blend, because a scalar ?: becomes control flow that GCC may jump-thread (it
/// constant-folds the clamped paths), which blocks if-conversion and so vectorisation on
/// targets without masked FP operations (SSE, AVX2).
template <class M, class V> inline V select(M mask, V a, V b) {
  if constexpr (std::is_arithmetic_v<V>) {
    using U = typename lane_traits<V>::uint_type;
    // m = all ones where mask: b ^ ((a ^ b) & m) is a where mask, else b
    const U m = U(0) - U(mask);
    return from_bits<V>(to_bits(b) ^ ((to_bits(a) ^ to_bits(b)) & m));
  } else {
    return mask ? a : b;
  }
}

/// max(x, lo) for x not NaN: one vmaxps/vmaxpd on AVX-512 registers (GCC turns the select
/// into a compare and a masked move), a select elsewhere.
template <class V> inline V max_not_nan(V x, typename lane_traits<V>::elem lo) {
#if defined(__AVX512F__)
  if constexpr (std::is_same_v<V, simd::vec_t<float>> && sizeof(V) == 64)
    return V(_mm512_max_ps(__m512(x), __m512(splat<V>(lo))));
  if constexpr (std::is_same_v<V, simd::vec_t<double>> && sizeof(V) == 64)
    return V(_mm512_max_pd(__m512d(x), __m512d(splat<V>(lo))));
#endif
  return select(x < splat<V>(lo), splat<V>(lo), x);
}

/// p 2^n for integer-valued n (also given as the integer lanes n_u) with p 2^n normal: one
/// vscalefps/pd on AVX-512 registers, an add to p's exponent bits elsewhere.
template <class V> inline V scale_pow2(V p, V n, typename lane_traits<V>::uint_type n_u) {
#if defined(__AVX512F__)
  if constexpr (std::is_same_v<V, simd::vec_t<float>> && sizeof(V) == 64)
    return V(_mm512_scalef_ps(__m512(p), __m512(n)));
  if constexpr (std::is_same_v<V, simd::vec_t<double>> && sizeof(V) == 64)
    return V(_mm512_scalef_pd(__m512d(p), __m512d(n)));
#endif
  (void)n;
  return from_bits<V>(to_bits(p) + (n_u << consts<typename lane_traits<V>::elem>::mant_bits));
}

/// 2^k for integer k (as the wrapped unsigned lanes k_u), normal range only:
/// bits(2^k) = (k + bias) << mant_bits.
template <class V> inline V pow2i(typename lane_traits<V>::uint_type k_u) {
  using E = typename lane_traits<V>::elem;
  using U = typename lane_traits<V>::uint_type;
  using UL = typename lane_traits<V>::uint_lane;
  return from_bits<V>((k_u + splat<U>(UL(consts<E>::bias))) << consts<E>::mant_bits);
}

/// Core of log and log1p: decomposition u = 2^e * m, m in [sqrt2/2, sqrt2), done on the bits.
/// Returns f = m - 1 (exact), e as a float (exact), and the biased exponent bits e + bias.
template <class V> struct split_t {
  V f;
  V e;
  typename lane_traits<V>::uint_type e_biased;
};

template <class V> inline split_t<V> split_exponent(V u) {
  using E = typename lane_traits<V>::elem;
  using C = consts<E>;
  using U = typename lane_traits<V>::uint_type;
  using UL = typename lane_traits<V>::uint_lane;
  const UL one_bits = UL(C::bias) << C::mant_bits;
  const UL sqrt_half_bits = to_bits(C::sqrt_half);
  // t = bits(u) - bits(sqrt2/2) + bits(1): t >> mant_bits = e + bias with m in [sqrt2/2, sqrt2)
  const U t = to_bits(u) + splat<U>(UL(one_bits - sqrt_half_bits));
  const U e_biased = t >> C::mant_bits;
  // m keeps u's mantissa; the exponent field is that of sqrt2/2 (-1) or of 1 (0), with the carry
  const V m = from_bits<V>((t & splat<U>(UL(C::mant_mask))) + splat<U>(sqrt_half_bits));
  // exact integer -> float: bits(1.5*2^p) + k is the float 1.5*2^p + k for |k| < 2^(p-1)
  const V e = from_bits<V>(e_biased + splat<U>(UL(to_bits(C::shifter) - UL(C::bias)))) -
              splat<V>(C::shifter);
  // Sterbenz: m in [1/2, 2], so m - 1 is exact
  return {m - splat<V>(E(1)), e, e_biased};
}

/// Q(r) = (e^r - 1 - r) / r^2 on |r| <= ln2/2: Remez fit (relative error of e^r).
template <class V> inline V exp_tail(V r) {
  using E = typename lane_traits<V>::elem;
  if constexpr (std::is_same_v<E, float>) {
    // Horner, degree 6 in total
    return splat<V>(0.49999994f) +
           r * (splat<V>(0.166665196f) +
                r * (splat<V>(0.0416684002f) +
                     r * (splat<V>(0.00836885069f) + r * splat<V>(0.00138143206f))));
  } else {
    // Estrin, degree 11 in total
    const V r2 = r * r;
    const V r4 = r2 * r2;
    const V r8 = r4 * r4;
    const V q01 = splat<V>(0.50000000000000111) + r * splat<V>(0.16666666666666408);
    const V q23 = splat<V>(0.041666666666528102) + r * splat<V>(0.0083333333334969228);
    const V q45 = splat<V>(0.0013888888944249187) + r * splat<V>(0.00019841269502740908);
    const V q67 = splat<V>(0.000024801492388293636) + r * splat<V>(0.0000027557588421289217);
    const V q89 = splat<V>(0.00000027630523467353602) + r * splat<V>(0.00000002499985827047285);
    return ((q01 + r2 * q23) + r4 * (q45 + r2 * q67)) + r8 * q89;
  }
}

/// R(z) = 2 atanh(s)/s - 2 with z = s^2 in [0, (3 - 2 sqrt2)^2]: Remez fit z * P(z).
template <class V> inline V log_tail(V z) {
  using E = typename lane_traits<V>::elem;
  if constexpr (std::is_same_v<E, float>) {
    // Horner, degree 3 in z (|s| <= 0.172: s^6 terms already below 2^-30)
    return z * (splat<V>(0.666667759f) +
                z * (splat<V>(0.39977482f) + z * splat<V>(0.298736244f)));
  } else {
    // Estrin, degree 7 in z
    const V z2 = z * z;
    const V z4 = z2 * z2;
    const V p01 = splat<V>(0.66666666666667351) + z * splat<V>(0.39999999999409203);
    const V p23 = splat<V>(0.28571428743764671) + z * splat<V>(0.22222198416484298);
    const V p45 = splat<V>(0.1818357322679505) + z * splat<V>(0.15313804405926049);
    const V p6 = splat<V>(0.14798588825922462);
    return z * ((p01 + z2 * p23) + z4 * (p45 + z2 * p6));
  }
}

}  // namespace detail

/// e^x, branch-free, for V = float, double or a GCC vector of them.
/// Max error < 1 ulp, gradual underflow (see the file header for special values).
/// @param[in] x  any value, including +-inf and NaN
template <class V> GENFAST_VMATH_INLINE V exp_approx(V x) {
  using E = typename lane_traits<V>::elem;
  using C = detail::consts<E>;
  using U = typename lane_traits<V>::uint_type;
  using UL = typename lane_traits<V>::uint_lane;
  using detail::splat;

  // Clamp to [exp_lo, exp_hi]: beyond, the result already rounds to 0 / +inf; NaN passes
  // through (both comparisons are false) and propagates through the arithmetic below.
  x = detail::select(x < splat<V>(C::exp_lo), splat<V>(C::exp_lo), x);
  x = detail::select(x > splat<V>(C::exp_hi), splat<V>(C::exp_hi), x);

  // n = round(x / ln2): adding 1.5*2^p rounds to an integer held in the low mantissa bits
  const V big = x * splat<V>(C::log2e) + splat<V>(C::shifter);
  const V n = big - splat<V>(C::shifter);
  // integer n (two's complement in unsigned lanes) = bits(big) - bits(1.5*2^p)
  const U n_u = detail::to_bits(big) - detail::splat<U>(detail::to_bits(C::shifter));

  // Cody-Waite: r = x - n ln2 = r_hi - n ln2_lo with r_hi = x - n ln2_hi exact (Sterbenz)
  const V r_hi = x - n * splat<V>(C::ln2_hi);
  const V r_lo = n * splat<V>(C::ln2_lo);
  const V r = r_hi - r_lo;

  // exp(r) = 1 + r + r^2 Q(r) on |r| <= ln2/2
  const V r2 = r * r;
  const V q = detail::exp_tail(r);
  // p = 1 + (r_hi + (r^2 Q - n ln2_lo)): the rounding of r only enters through r^2 Q
  const V p = splat<V>(E(1)) + (r_hi + (r2 * q - r_lo));

  // 2^n = 2^n1 * 2^n2 with n1 = floor(n/2), n2 = n - n1: both factors stay normal over the
  // clamped range, p * 2^n1 is exact and the last product rounds once (gradual underflow,
  // overflow to +inf). floor(n/2) = ((n + 2048) >> 1) - 1024 uses only a logical shift.
  const U n1 = ((n_u + detail::splat<U>(UL(2048))) >> 1) - detail::splat<U>(UL(1024));
  const U n2 = n_u - n1;
  return (p * detail::pow2i<V>(n1)) * detail::pow2i<V>(n2);
}

/// e^x for x <= 0 (or -inf), the terms of a max-shifted sum such as a log-sum-exp: about half
/// the work of exp_approx (no overflow or gradual-underflow handling), for a result that only
/// matters relative to a sum of at least 1. Max error < 1.1 ulp for x >= flush_lo (-86 float,
/// -700 double); below, and at -inf, the result is some value in [0, e^flush_lo], which moves
/// such a sum by less than 2^-124 per term. NaN and x > 0 are not handled: check for them first.
template <class V> GENFAST_VMATH_INLINE V exp_nonpositive_approx(V x) {
  using E = typename lane_traits<V>::elem;
  using C = detail::consts<E>;
  using U = typename lane_traits<V>::uint_type;
  using detail::splat;

  // max(x, flush_lo) keeps n >= -124 (float) / -1010 (double): p 2^n stays normal
  x = detail::max_not_nan(x, C::flush_lo);
  // n = round(x / ln2) held in the low mantissa bits of big
  const V big = x * splat<V>(C::log2e) + splat<V>(C::shifter);
  const V n = big - splat<V>(C::shifter);
  // Cody-Waite: r = (x - n ln2_hi) - n ln2_lo, the first product exact with or without FMA
  const V r = (x - n * splat<V>(C::ln2_hi)) - n * splat<V>(C::ln2_lo);
  const V p = splat<V>(E(1)) + (r + r * r * detail::exp_tail(r));
  // n as integer lanes: its two's complement sits in the low bits of big
  return detail::scale_pow2(p, n, detail::to_bits(big) - detail::splat<U>(detail::to_bits(C::shifter)));
}

/// Natural logarithm, branch-free, for V = float, double or a GCC vector of them.
/// Max error < 1 ulp; subnormal inputs are handled exactly.
/// @param[in] x  any value: log(+-0) = -inf, log(x < 0) = NaN, log(+inf) = +inf, NaN -> NaN
template <class V> GENFAST_VMATH_INLINE V log_approx(V x) {
  using E = typename lane_traits<V>::elem;
  using C = detail::consts<E>;
  using detail::splat;
  constexpr E inf = std::numeric_limits<E>::infinity();

  // subnormal x: log(x) = log(x * 2^k) - k ln2, with x * 2^k normal
  const auto tiny = x < splat<V>(std::numeric_limits<E>::min());
  const V xs = detail::select(tiny, x * splat<V>(C::subnormal_scale), x);
  const detail::split_t<V> sp = detail::split_exponent(xs);
  const V f = sp.f;
  const V e = sp.e - detail::select(tiny, splat<V>(C::subnormal_log2), splat<V>(E(0)));

  // log(1+f) = 2 atanh(s), s = f/(2+f): = f - (f^2/2 - s (f^2/2 + R(s^2))), f exact
  const V s = f / (splat<V>(E(2)) + f);
  const V hfsq = splat<V>(E(0.5)) * f * f;
  const V rt = detail::log_tail(s * s);
  // log(x) = e ln2_hi + (f - (hfsq - (s (hfsq + R) + e ln2_lo))); e ln2_hi is exact
  V y = e * splat<V>(C::ln2_hi) + (f - (hfsq - (s * (hfsq + rt) + e * splat<V>(C::ln2_lo))));

  // special values: +inf and NaN return x; x < 0 gives NaN; +-0 gives -inf
  y = detail::select(x < splat<V>(inf), y, x);
  y = detail::select(x < splat<V>(E(0)), splat<V>(std::numeric_limits<E>::quiet_NaN()), y);
  y = detail::select(x == splat<V>(E(0)), splat<V>(-inf), y);
  return y;
}

/// log(1 + x), accurate also for small |x|, branch-free, for V = float, double or a GCC
/// vector of them. Max error < 1 ulp.
/// @param[in] x  any value: log1p(-1) = -inf, log1p(x < -1) = NaN, log1p(+inf) = +inf,
///               log1p(+-0) = +-0, NaN -> NaN
template <class V> GENFAST_VMATH_INLINE V log1p_approx(V x) {
  using E = typename lane_traits<V>::elem;
  using C = detail::consts<E>;
  using U = typename lane_traits<V>::uint_type;
  using UL = typename lane_traits<V>::uint_lane;
  using detail::splat;
  constexpr E inf = std::numeric_limits<E>::infinity();
  const V one = splat<V>(E(1));

  // 2Sum: u + c = 1 + x exactly (u = fl(1 + x), c its rounding error)
  const V u = one + x;
  const V bb = u - x;
  const V c = (one - bb) + (x - (u - bb));

  // u = 2^e m (u >= 2^-p whenever x > -1, so never subnormal)
  const detail::split_t<V> sp = detail::split_exponent(u);
  const V e = sp.e;
  // e = 0 (x in about [-0.29, 0.41]): 1 + x = 1 + f exactly with f = x, no correction needed
  const auto e0 = e == splat<V>(E(0));
  const V f = detail::select(e0, x, sp.f);
  const V m = sp.f + one;

  // log(1+x) = log(u) + log(1 + c/u) ~ log(u) + c/u with c/u = (c 2^-e) / m;
  // 2^-e has bits (2 bias - e_biased) << mant_bits (valid for u < 2^bias, see below)
  const V cs = c * detail::from_bits<V>((splat<U>(UL(2 * C::bias)) - sp.e_biased) << C::mant_bits);
  // one division for both quotients: s = f/(2+f) = f m q and c/u = cs (2+f) q, q = 1/((2+f) m)
  // (for e != 0, c/u < 2^-p |result|, so the few-ulp error of this c/u is harmless)
  const V two_f = splat<V>(E(2)) + f;
  const V q = one / (two_f * m);
  const V s = (f * m) * q;
  // c/u: zero for e = 0 (f = x is exact); dropped for huge u, where it is below 1/64 ulp of
  // log(u) and 2^-e would leave the normal range
  const auto use_corr = (u < splat<V>(C::log1p_corr_max)) & !e0;
  const V corr = detail::select(use_corr, (cs * two_f) * q, splat<V>(E(0)));

  const V hfsq = splat<V>(E(0.5)) * f * f;
  const V rt = detail::log_tail(s * s);
  // log1p(x) = e ln2_hi + (f - (hfsq - (s (hfsq + R) + (e ln2_lo + c/u))))
  V y = e * splat<V>(C::ln2_hi) +
        (f - (hfsq - (s * (hfsq + rt) + (e * splat<V>(C::ln2_lo) + corr))));

  // special values: +inf and NaN return x; x < -1 gives NaN; -1 gives -inf; +-0 keeps its sign
  y = detail::select(x < splat<V>(inf), y, x);
  y = detail::select(x < -one, splat<V>(std::numeric_limits<E>::quiet_NaN()), y);
  y = detail::select(x == -one, splat<V>(-inf), y);
  y = detail::select(x == splat<V>(E(0)), x, y);
  return y;
}

/// Result of log1p_reciprocal_unit: log(1 + x) and 1 / (1 + x).
template <class V> struct Log1pReciprocal {
  V log1p;
  V reciprocal;
};

/// log(1 + x) and 1 / (1 + x) for 0 <= x <= 1, branch-free: the pieces of softplus(l) =
/// max(l, 0) + log1p(exp(-|l|)) and sigmoid(l) given x = exp(-|l|). Cheaper than log1p_approx
/// plus a division: the range has no special values. float: a degree-10 polynomial for
/// log1p(x)/x (no exponent split) and one division; double: 1 + x in [1, 2] needs only a
/// choice between two exponents, and log1p and the reciprocal share one division.
/// Max error (cpp/tests/test_vmath.cpp, float inputs in [0, 1] and a double sweep; measured):
/// float log1p < 2 ulp (1.61 with FMA, 1.93 without), reciprocal < 2 ulp (1.50); double
/// log1p < 1 ulp (0.78), reciprocal < 3 ulp (2.82: three roundings, (2+f) u, the division and
/// (2+f) q). Outside [0, 1] the results are unspecified; NaN gives NaN.
/// @param[in] x  0 <= x <= 1
template <class V> GENFAST_VMATH_INLINE Log1pReciprocal<V> log1p_reciprocal_unit(V x) {
  using E = typename lane_traits<V>::elem;
  using C = detail::consts<E>;
  using detail::splat;
  const V one = splat<V>(E(1));
  if constexpr (std::is_same_v<E, float>) {
    // float: log1p(x) = x P(x), P the degree-10 Chebyshev fit of log1p(x)/x on [0, 1] (Horner),
    // and 1/(1+x) by a division: no exponent split and no shared division needed
    V p = splat<V>(0.00203769049f);
    for (const float c : {-0.0134448307f, 0.0415576212f, -0.0825353339f, 0.12425103f, -0.161086321f,
                          0.198915377f, -0.249873921f, 0.333325684f, -0.499999821f, 1.0f})
      p = p * x + splat<V>(c);
    return {x * p, one / (one + x)};
  }
  // Fast2Sum (1 >= x): u + c = 1 + x exactly, u in [1, 2]
  const V u = one + x;
  const V c = x - (u - one);
  // u = 2^k m with m in [sqrt2/2, sqrt2): k = 1 (m = u/2, exact) from sqrt2 on, else k = 0
  const auto upper = u >= splat<V>(E(2) * C::sqrt_half);
  const V k = detail::select(upper, one, splat<V>(E(0)));
  const V m = detail::select(upper, u * splat<V>(E(0.5)), u);
  const V f = m - one;  // exact (Sterbenz)
  // one division: q = 1/((2+f) u) gives s = f/(2+f) = f u q and 1/u = (2+f) q
  const V two_f = splat<V>(E(2)) + f;
  const V q = one / (two_f * u);
  const V s = (f * u) * q;
  const V reciprocal = two_f * q;
  // log(1+x) = log(u) + log(1 + c/u) ~ log(u) + c/u (|c/u| <= 2^-p)
  const V corr = c * reciprocal;
  // log(u) = k ln2 + 2 atanh(s) = k ln2_hi + (f - (hfsq - (s (hfsq + R) + (k ln2_lo + c/u))))
  const V hfsq = splat<V>(E(0.5)) * f * f;
  const V rt = detail::log_tail(s * s);
  const V log1p = k * splat<V>(C::ln2_hi) +
                  (f - (hfsq - (s * (hfsq + rt) + (k * splat<V>(C::ln2_lo) + corr))));
  return {log1p, reciprocal};
}

}  // namespace genfast::vmath
