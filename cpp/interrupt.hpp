// genfast CPU: stopping a running kernel early when the user presses Ctrl-C.
//
// A kernel runs without the GIL, so Python cannot run its SIGINT handler (which raises
// KeyboardInterrupt) until the call returns. The bindings therefore install their own SIGINT
// handler around each kernel called from Python's main thread; it only sets
// `sigint_received`. Kernels poll it between fixed units of work (a block of points) and skip
// the remaining units once it is set, and the bindings then raise KeyboardInterrupt. Polling
// never changes what is computed or in which order, only whether the rest is computed.
#pragma once

#include <atomic>

namespace genfast {

/// Set by the bindings' SIGINT handler (async-signal-safe: a lock-free atomic store).
inline std::atomic<bool> sigint_received{false};

/// The flag the kernels called from this thread poll, or nullptr when nothing interrupts them.
/// The bindings point it at sigint_received on Python's main thread only, so that a kernel
/// running on another thread (a dask worker, say) is never cut short by a signal meant for
/// the main thread.
inline thread_local const std::atomic<bool>* interrupt_flag = nullptr;

/// Read on the kernel's calling thread (before any parallel region), polled from any thread.
class Interruption {
 public:
  Interruption() : flag_(interrupt_flag) {}
  bool requested() const { return flag_ != nullptr && flag_->load(std::memory_order_relaxed); }

 private:
  const std::atomic<bool>* flag_;
};

}  // namespace genfast
