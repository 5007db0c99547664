// genfast CUDA: error handling shared by every kernel family and the _cuda bindings.
// Plain C++ (runtime API only), so the host compiler can include it too.
#pragma once

#include <cuda_runtime_api.h>

#include <algorithm>
#include <climits>
#include <cstddef>
#include <cstdint>
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

/// Blocks of `threads` threads that give one thread per item, at least 1 and at most
/// INT_MAX (grid-stride loops cover the rest).
inline unsigned grid_for(int64_t items, int64_t threads) {
  return unsigned(std::clamp<int64_t>((items + threads - 1) / threads, 1, INT_MAX));
}

/// Alignment of a workspace and of every sub-buffer carved from it.
constexpr size_t kWorkspaceAlign = 256;

/// Lays out a workspace: each carve(bytes) reserves an aligned sub-buffer after the previous
/// ones and returns its byte offset; `total` is the size of the whole.
struct WorkspaceLayout {
  size_t total = 0;
  size_t carve(size_t bytes) {
    const size_t offset = total;
    total += (bytes + kWorkspaceAlign - 1) / kWorkspaceAlign * kWorkspaceAlign;
    return offset;
  }
};

/// Throws std::invalid_argument unless `workspace` is aligned to kWorkspaceAlign and its
/// `bytes` cover the `needed` ones. `op` names the operation; op + "_workspace_bytes" is its
/// size query.
inline void check_workspace(const std::string& op, const void* workspace, size_t bytes, size_t needed) {
  if (bytes < needed)
    throw std::invalid_argument(op + ": workspace has " + std::to_string(bytes) + " bytes, needs " +
                                std::to_string(needed) + " (" + op + "_workspace_bytes, on this device)");
  if (reinterpret_cast<uintptr_t>(workspace) % kWorkspaceAlign != 0)
    throw std::invalid_argument(op + ": workspace must be " + std::to_string(kWorkspaceAlign) + "-byte aligned");
}

}  // namespace genfast::gpu
