// genfast: definitions shared by every kernel family, on the CPU and on CUDA.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define GENFAST_HD __host__ __device__ __forceinline__
#else
#define GENFAST_HD inline
#endif

namespace genfast {

/// Type in which long sums over data of type T are accumulated: float data is summed in
/// double so float32 results stay within 1e-4 relative of a float64 reference.
template <class T> struct accumulate { using type = double; };
template <class T> using accumulate_t = typename accumulate<T>::type;

}  // namespace genfast
