// genfast CUDA: error handling shared by every kernel family and the _cuda bindings.
// Plain C++ (runtime API only), so the host compiler can include it too.
#pragma once

#include <cuda_runtime_api.h>

#include <stdexcept>
#include <string>

namespace genfast::gpu {

/// Throws std::runtime_error naming `what` and the CUDA error string unless status is
/// cudaSuccess (the bindings turn it into a Python RuntimeError).
inline void check(cudaError_t status, const char* what) {
  if (status != cudaSuccess)
    throw std::runtime_error(std::string("genfast CUDA error in ") + what + ": " +
                             cudaGetErrorName(status) + " (" + cudaGetErrorString(status) + ")");
}

/// Checks the launch that was just made (bad configuration, missing kernel image).
inline void check_launch(const char* kernel) { check(cudaGetLastError(), kernel); }

}  // namespace genfast::gpu
