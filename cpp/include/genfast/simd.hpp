// genfast: portable SIMD vectors for the CPU kernels (not used by CUDA).
//
// GCC/Clang vector extensions: the compiler emits AVX-512, AVX2 or SSE/NEON code for the
// target chosen at build time (-march=native by default, GENFAST_NATIVE=OFF for portable
// builds), so one source serves every x86/Arm machine without hand-written intrinsics.
#pragma once

#include <cstdint>
#include <cstring>
#include <type_traits>

namespace genfast::simd {

#if defined(__AVX512F__)
inline constexpr int kVectorBytes = 64;   ///< width of one vector register
inline constexpr int kVectorRegisters = 32;
inline constexpr const char* kName = "AVX-512";
#elif defined(__AVX__)
inline constexpr int kVectorBytes = 32;
inline constexpr int kVectorRegisters = 16;
inline constexpr const char* kName = "AVX2";
#elif defined(__SSE2__)
inline constexpr int kVectorBytes = 16;
inline constexpr int kVectorRegisters = 16;
inline constexpr const char* kName = "SSE2";
#elif defined(__ARM_NEON)
inline constexpr int kVectorBytes = 16;
inline constexpr int kVectorRegisters = 32;
inline constexpr const char* kName = "NEON";
#else
inline constexpr int kVectorBytes = 16;
inline constexpr int kVectorRegisters = 16;
inline constexpr const char* kName = "generic";
#endif

/// Same-width signed integer for T (the type of comparison masks on T vectors).
template <class T> struct same_width_int;
template <> struct same_width_int<float> { using type = int32_t; };
template <> struct same_width_int<double> { using type = int64_t; };

/// One register of T: kVectorBytes / sizeof(T) lanes.
template <class T> struct vector {
  static constexpr int lanes = kVectorBytes / int(sizeof(T));
  typedef T type __attribute__((vector_size(kVectorBytes)));
  typedef typename same_width_int<T>::type int_lane;
  typedef int_lane mask __attribute__((vector_size(kVectorBytes)));
};
template <class T> using vec_t = typename vector<T>::type;
template <class T> using mask_t = typename vector<T>::mask;

/// Unaligned load / store (compiles to a single vector move).
template <class V, class T> inline V load(const T* p) {
  V v;
  std::memcpy(&v, p, sizeof(V));
  return v;
}
template <class V, class T> inline void store(T* p, V v) { std::memcpy(p, &v, sizeof(V)); }

/// Vector with every lane equal to s. Written as s - 0 (exact for every s, -0 and NaN
/// included) so that GCC emits one broadcast instruction; filling the lanes one by one
/// goes through the stack and stalls every later load of the vector.
template <class V, class S> inline V broadcast(S s) {
  using Lane = std::remove_cv_t<std::remove_reference_t<decltype(V{}[0])>>;
  return Lane(s) - V{};
}

/// Keeps v in a register from here on. GCC otherwise folds a loaded vector that feeds several
/// FMAs back into each of them as a memory operand (one load per FMA), which makes a
/// register-tiled loop bound by loads instead of FMAs. Generates no instruction.
template <class V> inline void keep_in_register(V& v) {
#if defined(__AVX512F__)
  asm("" : "+v"(v));
#elif defined(__SSE2__)
  asm("" : "+x"(v));
#elif defined(__aarch64__)
  asm("" : "+w"(v));
#else
  (void)v;
#endif
}

/// Lanes of a vector type.
template <class V> inline constexpr int lanes_of = int(sizeof(V) / sizeof(V{}[0]));

/// Vector whose lane l is v[(l + Shift) mod lanes]; M is the same-width integer vector.
template <int Shift, class V, class M> inline V rotate_lanes(V v) {
  M idx;
  for (int l = 0; l < lanes_of<V>; ++l) idx[l] = (l + Shift) % lanes_of<V>;
  return __builtin_shuffle(v, idx);
}

/// Minimum over the lanes, in every lane: log2(lanes) rotate-and-min steps.
template <class V, class M, int Shift = lanes_of<V> / 2> inline V all_lanes_min(V v) {
  if constexpr (Shift >= 1) {
    const V other = rotate_lanes<Shift, V, M>(v);
    return all_lanes_min<V, M, Shift / 2>(other < v ? other : v);
  } else {
    return v;
  }
}

}  // namespace genfast::simd
