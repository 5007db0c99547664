// genfast: self-checking accuracy test for cpp/include/genfast/vmath.hpp (no framework).
//
// Compares exp_approx / log_approx / log1p_approx with glibc (float: the double libm
// functions; double: the long double ones) for float and double, in four forms:
//   scalar  one call per element through a non-inlined function (plain scalar code)
//   loop    a plain loop `y[i] = f(x[i])`, auto-vectorised by the compiler
//   vec     genfast::simd::vec_t<T> (the native register width)
//   vec16   a 16-byte GCC vector (exercises another vector width)
// over a strided sweep of all bit patterns (with jitter), a dense uniform sweep of the
// interesting interval, random bit patterns and the over/underflow edges; reports the max
// ulp error per function, type and form; checks the special values exactly.
// Exit status 0 when every error is within the documented bound and every special value
// is right. log1p_reciprocal_unit (defined on [0, 1] only) is checked over [0, 1] on its own:
// both of its results, scalar and native-vector forms.
//
// Usage: test_vmath [--full] [--bench]
//   --full   exhaustive over all 2^32 float bit patterns, 8x denser double sweeps (minutes)
//   --bench  also time exp/log/log1p over 4096*784 elements against std:: scalar loops
#include <algorithm>
#include <chrono>
#include <cinttypes>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "genfast/simd.hpp"
#include "genfast/vmath.hpp"

namespace {

namespace vm = genfast::vmath;
namespace simd = genfast::simd;
using LD = long double;

enum class Fn { exp, log, log1p };
const char* fn_name(Fn fn) { return fn == Fn::exp ? "exp" : fn == Fn::log ? "log" : "log1p"; }
template <class T> const char* type_name() { return sizeof(T) == 4 ? "float" : "double"; }

/// 16-byte vector of T (4 floats / 2 doubles).
template <class T> struct vec16 {
  typedef T type __attribute__((vector_size(16)));
};

/// Max allowed error in ulp (the bound documented in vmath.hpp).
template <class T> double ulp_bound() { return 1.0; }

template <class T> T from_bits(typename vm::lane_traits<T>::uint_type u) {
  T x;
  std::memcpy(&x, &u, sizeof(x));
  return x;
}
template <class T> typename vm::lane_traits<T>::uint_type to_bits(T x) {
  typename vm::lane_traits<T>::uint_type u;
  std::memcpy(&u, &x, sizeof(x));
  return u;
}

// ---- the four forms ---------------------------------------------------------------------

template <class V> inline V apply(Fn fn, V x) {
  switch (fn) {
    case Fn::exp: return vm::exp_approx(x);
    case Fn::log: return vm::log_approx(x);
    default: return vm::log1p_approx(x);
  }
}

/// One element through a call that cannot be inlined or vectorised.
template <class T> __attribute__((noinline)) T scalar_one(Fn fn, T x) { return apply(fn, x); }

template <class T> __attribute__((noinline)) void form_scalar(Fn fn, const T* x, T* y, size_t n) {
  for (size_t i = 0; i < n; ++i) y[i] = scalar_one(fn, x[i]);
}

/// The usage pattern of the kernels: the compiler vectorises this loop.
template <class T> __attribute__((noinline)) void form_loop(Fn fn, const T* x, T* y, size_t n) {
  switch (fn) {
    case Fn::exp:
      for (size_t i = 0; i < n; ++i) y[i] = vm::exp_approx(x[i]);
      break;
    case Fn::log:
      for (size_t i = 0; i < n; ++i) y[i] = vm::log_approx(x[i]);
      break;
    case Fn::log1p:
      for (size_t i = 0; i < n; ++i) y[i] = vm::log1p_approx(x[i]);
      break;
  }
}

/// Explicit vector type V; n is a multiple of its lanes.
template <class V, class T>
__attribute__((noinline)) void form_vector(Fn fn, const T* x, T* y, size_t n) {
  constexpr size_t lanes = sizeof(V) / sizeof(T);
  switch (fn) {
    case Fn::exp:
      for (size_t i = 0; i < n; i += lanes) simd::store(y + i, vm::exp_approx(simd::load<V>(x + i)));
      break;
    case Fn::log:
      for (size_t i = 0; i < n; i += lanes) simd::store(y + i, vm::log_approx(simd::load<V>(x + i)));
      break;
    case Fn::log1p:
      for (size_t i = 0; i < n; i += lanes) simd::store(y + i, vm::log1p_approx(simd::load<V>(x + i)));
      break;
  }
}

constexpr int kForms = 4;
const char* const kFormNames[kForms] = {"scalar", "loop", "vec", "vec16"};

template <class T> void run_form(int form, Fn fn, const T* x, T* y, size_t n) {
  switch (form) {
    case 0: form_scalar(fn, x, y, n); break;
    case 1: form_loop(fn, x, y, n); break;
    case 2: form_vector<simd::vec_t<T>>(fn, x, y, n); break;
    default: form_vector<typename vec16<T>::type>(fn, x, y, n); break;
  }
}

// ---- reference and error ----------------------------------------------------------------

/// libm reference in a wider type (double libm for float, long double libm for double).
template <class T> long double reference(Fn fn, T x) {
  using W = std::conditional_t<sizeof(T) == 4, double, long double>;
  const W w = W(x);
  switch (fn) {
    case Fn::exp: return std::exp(w);
    case Fn::log: return std::log(w);
    default: return std::log1p(w);
  }
}

/// One ulp of T at the reference value (the subnormal ulp below the normal range).
template <class T> long double ulp_at(long double ref) {
  const long double a = std::fabs(ref);
  if (!(a >= std::numeric_limits<T>::min()) || std::isinf(a)) return std::numeric_limits<T>::denorm_min();
  int ex = 0;
  std::frexp(a, &ex);  // a = f 2^ex, f in [1/2, 1)
  return std::ldexp(1.0L, ex - std::numeric_limits<T>::digits);
}

/// Error of y in units of T's ulp at the reference value; inf/NaN must match exactly
/// (returns +inf otherwise).
template <class T> double ulp_error(T y, long double ref, long double ulp) {
  if (std::isnan(ref) || std::isnan(y)) return (std::isnan(ref) && std::isnan(y)) ? 0.0 : HUGE_VAL;
  const T rounded = T(ref);
  if (std::isinf(rounded) || std::isinf(y)) return y == rounded ? 0.0 : HUGE_VAL;
  return double(std::fabs(LD(y) - ref) / ulp);
}
template <class T> double ulp_error(T y, long double ref) { return ulp_error(y, ref, ulp_at<T>(ref)); }

/// Same value for the purpose of "scalar and vector forms agree" (any NaN equals any NaN).
template <class T> bool same(T a, T b) {
  return (std::isnan(a) && std::isnan(b)) || to_bits(a) == to_bits(b);
}

struct Stat {
  double max_ulp = 0;
  long double at = 0;
  uint64_t count = 0, bad = 0, differ = 0;
};

constexpr size_t kChunk = 1 << 14;  // a multiple of every vector width

/// Runs every form over inputs produced chunk by chunk by gen(buffer, first_index, n).
template <class T, class Gen>
void check_inputs(Fn fn, uint64_t total, Gen gen, Stat (&st)[kForms]) {
  std::vector<T> x(kChunk), y(kChunk), y0(kChunk);
  std::vector<long double> ref(kChunk), ulp(kChunk);
  for (uint64_t base = 0; base < total; base += kChunk) {
    const size_t n = size_t(std::min<uint64_t>(kChunk, total - base));
    gen(x.data(), base, n);
    for (size_t i = n; i < kChunk; ++i) x[i] = T(1);  // pad the tail to whole vectors
    for (size_t i = 0; i < n; ++i) {
      ref[i] = reference(fn, x[i]);
      ulp[i] = ulp_at<T>(ref[i]);
    }
    for (int form = 0; form < kForms; ++form) {
      run_form(form, fn, x.data(), form == 0 ? y0.data() : y.data(), kChunk);
      const T* out = form == 0 ? y0.data() : y.data();
      Stat& s = st[form];
      for (size_t i = 0; i < n; ++i) {
        const double e = ulp_error(out[i], ref[i], ulp[i]);
        if (!(e <= s.max_ulp)) {
          s.max_ulp = e;
          s.at = x[i];
        }
        s.bad += !(e <= ulp_bound<T>());
        s.differ += !same(out[i], y0[i]);
      }
      s.count += n;
    }
  }
}

template <class T> bool check_accuracy(Fn fn, bool full) {
  using UL = typename vm::lane_traits<T>::uint_lane;
  constexpr bool is_float = sizeof(T) == 4;
  Stat st[kForms];
  std::mt19937_64 rng(0x9e3779b97f4a7c15ull ^ (uint64_t(fn) << 8) ^ sizeof(T));

  // 1) all bit patterns: float exhaustive (--full) or strided; double strided with jitter
  {
    const uint64_t n = is_float ? (full ? (uint64_t(1) << 32) : (uint64_t(1) << 32) / 509)
                                : (full ? (uint64_t(1) << 26) : (uint64_t(1) << 23));
    const uint64_t stride = is_float ? (full ? 1 : 509) : (~uint64_t(0) / n);
    check_inputs<T>(fn, n, [&](T* x, uint64_t base, size_t m) {
      for (size_t i = 0; i < m; ++i) {
        const uint64_t jitter = (is_float && full) ? 0 : rng() % stride;
        x[i] = from_bits<T>(UL((base + i) * stride + jitter));
      }
    }, st);
  }
  // 2) dense uniform sweep of the interval where the result is finite and non-trivial
  {
    long double lo, hi;
    if (fn == Fn::exp) {
      lo = std::log(LD(std::numeric_limits<T>::denorm_min())) - 1;
      hi = std::log(LD(std::numeric_limits<T>::max())) + 1;
    } else if (fn == Fn::log) {
      lo = 0.25L, hi = 4.0L;  // around 1, where log(x) is small and e = 0 or +-1
    } else {
      lo = -1.0L, hi = 3.0L;
    }
    const uint64_t n = full ? (uint64_t(1) << 26) : (uint64_t(1) << 22);
    check_inputs<T>(fn, n, [&](T* x, uint64_t base, size_t m) {
      for (size_t i = 0; i < m; ++i) x[i] = T(lo + (hi - lo) * LD(base + i) / LD(n));
    }, st);
  }
  // 3) random bit patterns
  {
    const uint64_t n = full ? (uint64_t(1) << 26) : (uint64_t(1) << 22);
    check_inputs<T>(fn, n, [&](T* x, uint64_t, size_t m) {
      for (size_t i = 0; i < m; ++i) x[i] = from_bits<T>(UL(rng()));
    }, st);
  }
  // 4) edges: 2^12 neighbours on each side of the over/underflow thresholds and of 1, -1, 0
  {
    std::vector<T> centers;
    if (fn == Fn::exp) {
      for (long double v : {LD(std::numeric_limits<T>::max()), LD(std::numeric_limits<T>::min()),
                            LD(std::numeric_limits<T>::denorm_min()),
                            LD(std::numeric_limits<T>::denorm_min()) / 2})
        centers.push_back(T(std::log(v)));
      centers.push_back(T(0));
    } else {
      centers = {T(1), T(0), T(-1), std::numeric_limits<T>::min(), std::numeric_limits<T>::max()};
    }
    constexpr int half = 1 << 12;
    std::vector<T> edges;
    for (const T c : centers) {
      std::vector<T> below;
      T v = c;
      for (int s = 0; s < half; ++s) below.push_back(v = std::nextafter(v, -std::numeric_limits<T>::infinity()));
      edges.insert(edges.end(), below.rbegin(), below.rend());
      v = c;
      for (int s = 0; s < half; ++s) edges.push_back(v = std::nextafter(v, std::numeric_limits<T>::infinity()));
      edges.push_back(c);
    }
    check_inputs<T>(fn, edges.size(), [&](T* x, uint64_t base, size_t m) {
      std::copy(edges.begin() + std::ptrdiff_t(base), edges.begin() + std::ptrdiff_t(base + m), x);
    }, st);
  }

  bool ok = true;
  for (int form = 0; form < kForms; ++form) {
    const Stat& s = st[form];
    const bool pass = s.bad == 0;
    ok = ok && pass;
    std::printf("%-6s %-6s %-6s max %.3f ulp at x = %-+14.8Lg (%" PRIu64 " inputs, %" PRIu64
                " over %.0f ulp, %" PRIu64 " differ from scalar)  %s\n",
                fn_name(fn), type_name<T>(), kFormNames[form], s.max_ulp, s.at, s.count, s.bad,
                ulp_bound<T>(), s.differ, pass ? "ok" : "FAIL");
  }
  return ok;
}

// ---- special values ---------------------------------------------------------------------

/// Expected result: an exact value (zeros compared with their sign, any NaN matches NaN), or
/// "libm": within the ulp bound of the reference.
template <class T> struct Special {
  Fn fn;
  T x;
  T expect;
  bool exact;
};

template <class T> bool check_specials() {
  using L = std::numeric_limits<T>;
  const T inf = L::infinity(), nan = L::quiet_NaN(), tiny = L::denorm_min();
  const T below_m1 = std::nextafter(T(-1), -inf);
  const std::vector<Special<T>> cases = {
      {Fn::exp, -inf, T(0), true},        {Fn::exp, inf, inf, true},
      {Fn::exp, nan, nan, true},          {Fn::exp, -nan, nan, true},
      {Fn::exp, T(0), T(1), true},        {Fn::exp, T(-0.0), T(1), true},
      {Fn::exp, L::max(), inf, true},     {Fn::exp, L::lowest(), T(0), true},
      {Fn::exp, T(-1e4), T(0), true},     {Fn::exp, T(1e4), inf, true},
      {Fn::exp, tiny, T(1), true},        {Fn::exp, T(1), T(0), false},
      {Fn::exp, T(-1), T(0), false},
      {Fn::log, T(0), -inf, true},        {Fn::log, T(-0.0), -inf, true},
      {Fn::log, -tiny, nan, true},        {Fn::log, T(-1), nan, true},
      {Fn::log, -inf, nan, true},         {Fn::log, inf, inf, true},
      {Fn::log, nan, nan, true},          {Fn::log, -nan, nan, true},
      {Fn::log, T(1), T(0), true},        {Fn::log, tiny, T(0), false},
      {Fn::log, L::min(), T(0), false},   {Fn::log, L::max(), T(0), false},
      {Fn::log, T(2), T(0), false},
      {Fn::log1p, T(-1), -inf, true},     {Fn::log1p, below_m1, nan, true},
      {Fn::log1p, T(-2), nan, true},      {Fn::log1p, -inf, nan, true},
      {Fn::log1p, inf, inf, true},        {Fn::log1p, nan, nan, true},
      {Fn::log1p, T(0), T(0), true},      {Fn::log1p, T(-0.0), T(-0.0), true},
      {Fn::log1p, tiny, tiny, true},      {Fn::log1p, -tiny, -tiny, true},
      {Fn::log1p, L::min(), L::min(), true}, {Fn::log1p, L::max(), T(0), false},
      {Fn::log1p, T(1), T(0), false},
  };
  bool ok = true;
  int failures = 0;
  for (const auto& c : cases) {
    // every form on a buffer full of the same input, so each vector lane is checked too
    std::vector<T> x(kChunk, c.x), y(kChunk);
    for (int form = 0; form < kForms; ++form) {
      run_form(form, c.fn, x.data(), y.data(), 64);
      for (size_t i = 0; i < 64; ++i) {
        const bool pass = c.exact ? same(y[i], c.expect)
                                  : ulp_error(y[i], reference(c.fn, c.x)) <= ulp_bound<T>();
        if (!pass) {
          ok = false;
          if (++failures <= 20)
            std::printf("FAIL special %s<%s> %s(%Lg) = %Lg, expected %Lg\n", kFormNames[form],
                        type_name<T>(), fn_name(c.fn), LD(c.x), LD(y[i]),
                        c.exact ? LD(c.expect) : reference(c.fn, c.x));
          break;
        }
      }
    }
  }
  std::printf("special values %-6s: %zu cases x %d forms  %s\n", type_name<T>(), cases.size(), kForms,
              ok ? "ok" : "FAIL");
  return ok;
}

// ---- log1p_reciprocal_unit --------------------------------------------------------------

/// Max allowed error in ulp of log1p_reciprocal_unit's two results (documented in vmath.hpp).
template <class T> constexpr double kLog1pUnitBound = sizeof(T) == 4 ? 2.0 : 1.0;
template <class T> constexpr double kReciprocalUnitBound = sizeof(T) == 4 ? 2.0 : 3.0;

template <class T> __attribute__((noinline)) vm::Log1pReciprocal<T> unit_scalar(T x) {
  return vm::log1p_reciprocal_unit(x);
}

/// Both results of every form for the inputs in [0, 1] at x[0, n) (n a multiple of the lanes).
template <class T>
void unit_forms(const T* x, size_t n, T (*log1p)[2], T (*reciprocal)[2]) {
  using V = simd::vec_t<T>;
  constexpr size_t lanes = sizeof(V) / sizeof(T);
  for (size_t i = 0; i < n; ++i) {
    const auto r = unit_scalar(x[i]);
    log1p[i][0] = r.log1p, reciprocal[i][0] = r.reciprocal;
  }
  for (size_t i = 0; i < n; i += lanes) {
    const auto r = vm::log1p_reciprocal_unit(simd::load<V>(x + i));
    for (size_t l = 0; l < lanes; ++l) log1p[i + l][1] = r.log1p[l], reciprocal[i + l][1] = r.reciprocal[l];
  }
}

/// Every float in [0, 1] (--full; else a strided sweep with jitter) or a double sweep, a
/// dense uniform sweep, and 2^12 neighbours of 0, 1 and sqrt2 - 1 (where the exponent of
/// 1 + x changes) on each side.
template <class T> bool check_log1p_reciprocal_unit(bool full) {
  using UL = typename vm::lane_traits<T>::uint_lane;
  constexpr bool is_float = sizeof(T) == 4;
  const UL one_bits = to_bits(T(1));
  std::mt19937_64 rng(0x5eed ^ sizeof(T));
  std::vector<T> inputs;
  const uint64_t patterns = is_float ? (full ? uint64_t(one_bits) + 1 : uint64_t(1) << 24) : uint64_t(1) << 23;
  const uint64_t stride = (uint64_t(one_bits) + 1) / patterns;
  for (uint64_t i = 0; i < patterns; ++i)
    inputs.push_back(from_bits<T>(UL(std::min<uint64_t>(i * stride + (stride > 1 ? rng() % stride : 0), one_bits))));
  const uint64_t dense = uint64_t(1) << 22;
  for (uint64_t i = 0; i <= dense; ++i) inputs.push_back(T(LD(i) / LD(dense)));
  for (const T c : {T(0), T(1), T(std::sqrt(2.0L) - 1)}) {
    T below = c, above = c;
    for (int s = 0; s < (1 << 12); ++s) {
      below = std::nextafter(below, T(-1));
      above = std::nextafter(above, T(2));
      if (below >= 0) inputs.push_back(below);
      if (above <= 1) inputs.push_back(above);
    }
    inputs.push_back(c);
  }
  while (inputs.size() % kChunk) inputs.push_back(T(0.5));

  double worst[2][2] = {};  // [log1p | reciprocal][form]
  T at[2][2] = {};
  uint64_t bad = 0;
  std::vector<T> log1p(2 * kChunk), reciprocal(2 * kChunk);
  for (size_t base = 0; base < inputs.size(); base += kChunk) {
    const T* x = inputs.data() + base;
    unit_forms(x, kChunk, reinterpret_cast<T(*)[2]>(log1p.data()), reinterpret_cast<T(*)[2]>(reciprocal.data()));
    for (size_t i = 0; i < kChunk; ++i) {
      const long double refs[2] = {reference(Fn::log1p, x[i]), 1.0L / (1.0L + LD(x[i]))};
      for (int form = 0; form < 2; ++form) {
        const T got[2] = {log1p[2 * i + form], reciprocal[2 * i + form]};
        for (int r = 0; r < 2; ++r) {
          const double e = ulp_error(got[r], refs[r]);
          if (!(e <= worst[r][form])) worst[r][form] = e, at[r][form] = x[i];
          bad += !(e <= (r == 0 ? kLog1pUnitBound<T> : kReciprocalUnitBound<T>));
        }
      }
    }
  }
  const char* forms[2] = {"scalar", "vec"};
  for (int r = 0; r < 2; ++r)
    for (int form = 0; form < 2; ++form)
      std::printf("log1p_reciprocal_unit %-10s %-6s %-6s max %.3f ulp at x = %-+14.8Lg (%zu inputs in [0, 1])\n",
                  r == 0 ? "log1p" : "reciprocal", type_name<T>(), forms[form], worst[r][form],
                  LD(at[r][form]), inputs.size());
  std::printf("log1p_reciprocal_unit %-6s: %" PRIu64 " results over the bound  %s\n", type_name<T>(), bad,
              bad == 0 ? "ok" : "FAIL");
  return bad == 0;
}

/// exp_nonpositive_approx over x in [flush_lo, 0] (every float with --full, else a strided
/// sweep; a double sweep), scalar and native-vector forms: under 1.1 ulp (r = x - n ln2 is
/// rounded once more than in exp_approx); below flush_lo and at
/// -inf, in [0, e^flush_lo] (up to that bound's rounding).
template <class T> bool check_exp_nonpositive(bool full) {
  using V = simd::vec_t<T>;
  constexpr int lanes = simd::vector<T>::lanes;
  const T lo = vm::detail::consts<T>::flush_lo;
  std::vector<T> inputs;
  const uint64_t patterns = sizeof(T) == 4 ? (full ? uint64_t(1) << 31 : uint64_t(1) << 24) : uint64_t(1) << 23;
  for (uint64_t i = 0; i <= patterns; ++i) inputs.push_back(T(LD(lo) * LD(i) / LD(patterns)));
  for (const T x : {T(0), T(-0.0), lo, std::nextafter(lo, T(0)), std::nextafter(lo, T(-1)), T(2 * lo), T(-1e30),
                    -std::numeric_limits<T>::infinity()})
    inputs.push_back(x);
  while (inputs.size() % lanes) inputs.push_back(T(-1));
  double worst = 0;
  T at = 0;
  uint64_t bad = 0;
  for (size_t base = 0; base < inputs.size(); base += lanes) {
    const V y_vec = vm::exp_nonpositive_approx(simd::load<V>(inputs.data() + base));
    for (int l = 0; l < lanes; ++l) {
      const T x = inputs[base + l];
      for (const T y : {T(y_vec[l]), vm::exp_nonpositive_approx(x)}) {
        if (x < lo) {
          bad += !(y >= 0 && LD(y) <= std::exp(LD(lo)) * (1 + 8 * LD(std::numeric_limits<T>::epsilon())));
          continue;
        }
        const double e = ulp_error(y, std::exp(LD(x)));
        if (!(e <= worst)) worst = e, at = x;
        bad += !(e <= 1.1);
      }
    }
  }
  std::printf("exp_nonpositive_approx %-6s max %.3f ulp at x = %-+14.8Lg (%zu inputs): %" PRIu64
              " over the bound  %s\n", type_name<T>(), worst, LD(at), inputs.size(), bad, bad == 0 ? "ok" : "FAIL");
  return bad == 0;
}

// ---- throughput -------------------------------------------------------------------------

template <class F> double best_ns_per_elem(F f, size_t n, int reps) {
  double best = 1e30;
  for (int r = 0; r < reps; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    f();
    const auto t1 = std::chrono::steady_clock::now();
    best = std::min(best, std::chrono::duration<double, std::nano>(t1 - t0).count() / double(n));
  }
  return best;
}

template <class T> __attribute__((noinline)) void std_loop(Fn fn, const T* x, T* y, size_t n) {
  switch (fn) {
    case Fn::exp:
      for (size_t i = 0; i < n; ++i) y[i] = std::exp(x[i]);
      break;
    case Fn::log:
      for (size_t i = 0; i < n; ++i) y[i] = std::log(x[i]);
      break;
    case Fn::log1p:
      for (size_t i = 0; i < n; ++i) y[i] = std::log1p(x[i]);
      break;
  }
}

template <class T> void bench() {
  const size_t n = size_t(4096) * 784;
  std::vector<T> x(n), y(n);
  std::mt19937_64 rng(42);
  for (Fn fn : {Fn::exp, Fn::log, Fn::log1p}) {
    // exp: log-sum-exp terms x - max in [-50, 0]; log: (0, 100]; log1p: [-0.99, 10]
    std::uniform_real_distribution<double> d(fn == Fn::exp ? -50.0 : fn == Fn::log ? 1e-6 : -0.99,
                                             fn == Fn::exp ? 0.0 : fn == Fn::log ? 100.0 : 10.0);
    for (auto& v : x) v = T(d(rng));
    const int reps = 7;
    const double t_std = best_ns_per_elem([&] { std_loop(fn, x.data(), y.data(), n); }, n, reps);
    const double t_loop = best_ns_per_elem([&] { form_loop(fn, x.data(), y.data(), n); }, n, reps);
    const double t_vec =
        best_ns_per_elem([&] { form_vector<simd::vec_t<T>>(fn, x.data(), y.data(), n); }, n, reps);
    std::printf("bench %-6s %-6s n=%zu: std:: loop %.3f ns/elem, %s_approx loop %.3f ns/elem (%.1fx), "
                "vec_t %.3f ns/elem (%.1fx)\n",
                fn_name(fn), type_name<T>(), n, t_std, fn_name(fn), t_loop, t_std / t_loop, t_vec,
                t_std / t_vec);
  }
}

}  // namespace

int main(int argc, char** argv) {
  bool full = false, do_bench = false;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--full") {
      full = true;
    } else if (a == "--bench") {
      do_bench = true;
    } else {
      std::fprintf(stderr, "usage: %s [--full] [--bench]\n", argv[0]);
      return 2;
    }
  }
  std::printf("genfast vmath test: SIMD %s, %d-byte vectors%s\n", simd::kName, simd::kVectorBytes,
              full ? ", full sweep" : "");
  bool ok = check_specials<float>();
  ok = check_specials<double>() && ok;
  for (Fn fn : {Fn::exp, Fn::log, Fn::log1p}) {
    ok = check_accuracy<float>(fn, full) && ok;
    ok = check_accuracy<double>(fn, full) && ok;
  }
  ok = check_log1p_reciprocal_unit<float>(full) && ok;
  ok = check_log1p_reciprocal_unit<double>(full) && ok;
  ok = check_exp_nonpositive<float>(full) && ok;
  ok = check_exp_nonpositive<double>(full) && ok;
  if (do_bench) {
    bench<float>();
    bench<double>();
  }
  std::printf("%s\n", ok ? "PASSED" : "FAILED");
  return ok ? 0 : 1;
}
