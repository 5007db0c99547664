// genfast._cuda: thin pybind11 bindings for the CUDA kernels. Arrays arrive as device
// pointers (torch's data_ptr()) with their shapes; outputs are preallocated by torch, and the
// kernels are enqueued on the caller's stream without synchronising. Bad arguments raise
// ValueError (std::invalid_argument), CUDA failures RuntimeError (std::runtime_error).
#include <pybind11/pybind11.h>

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime_api.h>

#include <cstdint>
#include <stdexcept>
#include <string>

#include "common.cuh"
#include "gmm.cuh"
#include "elbo.cuh"
#include "kmeans.cuh"
#include "mc.cuh"

namespace py = pybind11;
namespace kmeans_gpu = genfast::kmeans::gpu;
namespace gmm_gpu = genfast::gmm::gpu;
namespace mc_gpu = genfast::mc::gpu;

namespace {

void require(bool ok, const std::string& what) {
  if (!ok) throw std::invalid_argument(what);
}

/// A device pointer passed from Python as an integer; null is allowed only for an empty array.
template <class T> T* device_ptr(std::uintptr_t address, const char* name, int64_t elements) {
  require(address != 0 || elements == 0, std::string(name) + " is a null pointer");
  return reinterpret_cast<T*>(address);
}

kmeans_gpu::Shape make_shape(int64_t B, int64_t N, int64_t K, int64_t D) {
  require(B >= 0 && N >= 0 && K >= 0 && D >= 0, "B, N, K and D must be non-negative");
  return {B, N, K, D};
}

/// Makes `device` current for this host thread in genfast's own (static) CUDA runtime, whose
/// current device is separate from torch's.
void use_device(int device) {
  require(device >= 0, "device must be a CUDA device index >= 0, got " + std::to_string(device));
  genfast::gpu::check(cudaSetDevice(device), "cudaSetDevice");
}

/// Calls f(T{}) with T the C++ type named by dtype ("float32" or "float64").
template <class F> void dispatch_dtype(const std::string& dtype, F&& f) {
  if (dtype == "float32")
    f(float{});
  else if (dtype == "float64")
    f(double{});
  else
    throw std::invalid_argument("dtype must be 'float32' or 'float64', got '" + dtype + "'");
}

void kmeans_assign(std::uintptr_t X, std::uintptr_t C, std::uintptr_t labels,
                   std::uintptr_t sq_dist, int64_t B, int64_t N, int64_t K, int64_t D,
                   const std::string& dtype, int device, std::uintptr_t stream) {
  const kmeans_gpu::Shape s = make_shape(B, N, K, D);
  dispatch_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    const T* x = device_ptr<const T>(X, "X", B * N * D);
    const T* c = device_ptr<const T>(C, "C", B * K * D);
    int64_t* l = device_ptr<int64_t>(labels, "labels", B * N);
    T* d = device_ptr<T>(sq_dist, "sq_dist", B * N);
    py::gil_scoped_release release;
    use_device(device);
    kmeans_gpu::assign_labels<T>(s, x, c, l, d, reinterpret_cast<cudaStream_t>(stream));
  });
}

size_t kmeans_update_workspace_bytes(int64_t B, int64_t N, int64_t K, int device) {
  py::gil_scoped_release release;  // the first CUDA call of a process can take a while
  if (device != -1) use_device(device);
  return kmeans_gpu::update_workspace_bytes(B, N, K);
}

void kmeans_update(std::uintptr_t X, std::uintptr_t labels, std::uintptr_t weights,
                   std::uintptr_t sums, std::uintptr_t wsum, std::uintptr_t workspace,
                   size_t workspace_bytes, int64_t B, int64_t N, int64_t K, int64_t D,
                   const std::string& dtype, int device, std::uintptr_t stream) {
  const kmeans_gpu::Shape s = make_shape(B, N, K, D);
  dispatch_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    const T* x = device_ptr<const T>(X, "X", B * N * D);
    const int64_t* l = device_ptr<const int64_t>(labels, "labels", B * N);
    const T* w = reinterpret_cast<const T*>(weights);  // 0: unit weights
    T* out = device_ptr<T>(sums, "sums", B * K * D);
    T* ws = device_ptr<T>(wsum, "wsum", B * K);
    void* scratch = device_ptr<void>(workspace, "workspace", int64_t(workspace_bytes));
    py::gil_scoped_release release;
    use_device(device);
    kmeans_gpu::update_centers<T>(s, x, l, w, out, ws, scratch, workspace_bytes,
                           reinterpret_cast<cudaStream_t>(stream));
  });
}

genfast::gmm::Shape gmm_shape(int64_t N, int64_t K, int64_t D) {
  require(N >= 0 && K >= 0 && D >= 0, "N, K and D must be non-negative");
  return {N, K, D};
}

size_t gmm_log_resp_workspace_bytes(int64_t K) { return gmm_gpu::log_resp_workspace_bytes(K); }

void gmm_log_resp(std::uintptr_t X, std::uintptr_t weights, std::uintptr_t means,
                  std::uintptr_t prec_chol, const std::string& covariance_type,
                  std::uintptr_t log_prob, std::uintptr_t log_resp, std::uintptr_t workspace,
                  size_t workspace_bytes, int64_t N, int64_t K, int64_t D,
                  const std::string& dtype, int device, std::uintptr_t stream) {
  const auto cov = genfast::gmm::covariance_from_name(covariance_type);
  const genfast::gmm::Shape s = gmm_shape(N, K, D);
  dispatch_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    const T* x = device_ptr<const T>(X, "X", N * D);
    const T* w = device_ptr<const T>(weights, "weights", K);
    const T* mu = device_ptr<const T>(means, "means", K * D);
    const T* p = device_ptr<const T>(prec_chol, "precisions_cholesky",
                                     genfast::gmm::factor_elements(cov, K, D));
    T* lp = device_ptr<T>(log_prob, "log_prob", N);
    T* lr = reinterpret_cast<T*>(log_resp);  // 0: log_prob only
    void* scratch = device_ptr<void>(workspace, "workspace", int64_t(workspace_bytes));
    py::gil_scoped_release release;
    use_device(device);
    gmm_gpu::log_resp<T>(s, cov, x, w, mu, p, lp, lr, scratch, workspace_bytes,
                         reinterpret_cast<cudaStream_t>(stream));
  });
}

size_t gmm_suff_stats_workspace_bytes(int64_t N, int64_t K, int64_t D,
                                      const std::string& covariance_type) {
  return gmm_gpu::suff_stats_workspace_bytes(gmm_shape(N, K, D),
                                             genfast::gmm::covariance_from_name(covariance_type));
}

void gmm_suff_stats(std::uintptr_t X, std::uintptr_t resp, bool resp_is_log,
                    const std::string& covariance_type, std::uintptr_t nk, std::uintptr_t sums,
                    std::uintptr_t scatter, std::uintptr_t workspace, size_t workspace_bytes,
                    int64_t N, int64_t K, int64_t D, const std::string& dtype, int device,
                    std::uintptr_t stream) {
  const auto cov = genfast::gmm::covariance_from_name(covariance_type);
  const genfast::gmm::Shape s = gmm_shape(N, K, D);
  dispatch_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    const T* x = device_ptr<const T>(X, "X", N * D);
    const T* r = device_ptr<const T>(resp, "resp", N * K);
    T* n = device_ptr<T>(nk, "nk", K);
    T* sm = device_ptr<T>(sums, "sums", K * D);
    T* sc = device_ptr<T>(scatter, "scatter", genfast::gmm::factor_elements(cov, K, D));
    void* scratch = device_ptr<void>(workspace, "workspace", int64_t(workspace_bytes));
    py::gil_scoped_release release;
    use_device(device);
    gmm_gpu::suff_stats<T>(s, cov, x, r, resp_is_log, n, sm, sc, scratch, workspace_bytes,
                           reinterpret_cast<cudaStream_t>(stream));
  });
}

// ---- VAE ELBO ------------------------------------------------------------------------------
/// Calls f(T{}) with T the storage type named by dtype: float32, float64, float16, bfloat16.
template <class F> void dispatch_elbo_dtype(const std::string& dtype, F&& f) {
  if (dtype == "float16")
    f(__half{});
  else if (dtype == "bfloat16")
    f(__nv_bfloat16{});
  else if (dtype == "float32" || dtype == "float64")
    dispatch_dtype(dtype, f);
  else
    throw std::invalid_argument("dtype must be 'float32', 'float64', 'float16' or 'bfloat16', got '" + dtype + "'");
}

/// A pointer passed from Python as an integer, 0 for an array that is absent.
template <class T> T* optional_ptr(std::uintptr_t address) { return reinterpret_cast<T*>(address); }

void elbo(std::uintptr_t x, std::uintptr_t decoder_out, std::uintptr_t decoder_logvar, std::uintptr_t mu,
          std::uintptr_t logvar, const std::string& likelihood, double fixed_logvar, double beta,
          double rec_scale, double kl_scale, std::uintptr_t elbo, std::uintptr_t rec, std::uintptr_t kl,
          std::uintptr_t grad_x, std::uintptr_t grad_decoder_out, std::uintptr_t grad_decoder_logvar,
          std::uintptr_t grad_mu, std::uintptr_t grad_logvar, int64_t B, int64_t D, int64_t L,
          const std::string& dtype, int device, std::uintptr_t stream) {
  using genfast::elbo::Likelihood;
  require(likelihood == "bernoulli" || likelihood == "gaussian",
          "likelihood must be 'bernoulli' or 'gaussian', got '" + likelihood + "'");
  require(B >= 0 && D >= 0 && L >= 0, "B, D and L must be non-negative");
  dispatch_elbo_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    genfast::elbo::Problem<T> p;
    p.x = optional_ptr<const T>(x), p.decoder_out = optional_ptr<const T>(decoder_out);
    p.decoder_logvar = optional_ptr<const T>(decoder_logvar);
    p.mu = optional_ptr<const T>(mu), p.logvar = optional_ptr<const T>(logvar);
    p.fixed_logvar = fixed_logvar, p.beta = beta, p.rec_scale = rec_scale, p.kl_scale = kl_scale;
    p.elbo = optional_ptr<T>(elbo), p.rec = optional_ptr<T>(rec), p.kl = optional_ptr<T>(kl);
    p.grad_x = optional_ptr<T>(grad_x), p.grad_decoder_out = optional_ptr<T>(grad_decoder_out);
    p.grad_decoder_logvar = optional_ptr<T>(grad_decoder_logvar);
    p.grad_mu = optional_ptr<T>(grad_mu), p.grad_logvar = optional_ptr<T>(grad_logvar);
    const auto lik = likelihood == "bernoulli" ? Likelihood::bernoulli : Likelihood::gaussian;
    py::gil_scoped_release release;
    use_device(device);
    genfast::elbo::gpu::evaluate<T>({B, D, L}, lik, p, reinterpret_cast<cudaStream_t>(stream));
  });
}

void elbo_scale_rows(std::uintptr_t rows, std::uintptr_t weight, std::uintptr_t out, int64_t B, int64_t n,
                     const std::string& dtype, int device, std::uintptr_t stream) {
  require(B >= 0 && n >= 0, "B and n must be non-negative");
  dispatch_elbo_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    const T* r = device_ptr<const T>(rows, "rows", B * n);
    const T* w = device_ptr<const T>(weight, "weight", B);
    T* o = device_ptr<T>(out, "out", B * n);
    py::gil_scoped_release release;
    use_device(device);
    genfast::elbo::gpu::scale_rows<T>(B, n, r, w, o, reinterpret_cast<cudaStream_t>(stream));
  });
}

// ---- Monte Carlo likelihood -----------------------------------------------------------------
void mc_logmeanexp_update(std::uintptr_t a, std::uintptr_t max, std::uintptr_t sum, std::uintptr_t sum_sq,
                          int64_t B, int64_t m, const std::string& dtype, int device, std::uintptr_t stream) {
  require(B >= 0 && m >= 0, "B and m must be non-negative");
  dispatch_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    const T* rows = device_ptr<const T>(a, "a", B * m);
    double* mx = device_ptr<double>(max, "max", B);
    double* s = device_ptr<double>(sum, "sum", B);
    double* q = device_ptr<double>(sum_sq, "sum_sq", B);
    py::gil_scoped_release release;
    use_device(device);
    mc_gpu::logmeanexp_update<T>(B, m, rows, mx, s, q, reinterpret_cast<cudaStream_t>(stream));
  });
}

void mc_logmeanexp_finish(double n_samples, std::uintptr_t max, std::uintptr_t sum, std::uintptr_t sum_sq,
                          std::uintptr_t log_mean, std::uintptr_t ess, std::uintptr_t std_error, int64_t B,
                          const std::string& dtype, int device, std::uintptr_t stream) {
  require(B >= 0, "B must be non-negative");
  dispatch_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    const double* mx = device_ptr<const double>(max, "max", B);
    const double* s = device_ptr<const double>(sum, "sum", B);
    const double* q = device_ptr<const double>(sum_sq, "sum_sq", B);
    T* lm = device_ptr<T>(log_mean, "log_mean", B);
    T* e = device_ptr<T>(ess, "ess", B);
    T* se = device_ptr<T>(std_error, "std_error", B);
    py::gil_scoped_release release;
    use_device(device);
    mc_gpu::logmeanexp_finish<T>(B, n_samples, mx, s, q, lm, e, se, reinterpret_cast<cudaStream_t>(stream));
  });
}

void mc_log_importance_weights(std::uintptr_t x, std::uintptr_t decoder_out, std::uintptr_t decoder_logvar,
                               const std::string& likelihood, double fixed_logvar, std::uintptr_t log_prior,
                               std::uintptr_t log_proposal, std::uintptr_t log_w, int64_t B, int64_t m, int64_t D,
                               const std::string& dtype, int device, std::uintptr_t stream) {
  using genfast::elbo::Likelihood;
  require(likelihood == "bernoulli" || likelihood == "gaussian",
          "likelihood must be 'bernoulli' or 'gaussian', got '" + likelihood + "'");
  require(B >= 0 && m >= 0 && D >= 0, "B, m and D must be non-negative");
  dispatch_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    const T* xp = device_ptr<const T>(x, "x", B * D);
    const T* out = device_ptr<const T>(decoder_out, "decoder_out", B * m * D);
    const T* lv = optional_ptr<const T>(decoder_logvar);  // 0: fixed_logvar everywhere
    const T* lp = device_ptr<const T>(log_prior, "log_prior", B * m);
    const T* lq = device_ptr<const T>(log_proposal, "log_proposal", B * m);
    T* w = device_ptr<T>(log_w, "log_w", B * m);
    const auto lik = likelihood == "bernoulli" ? Likelihood::bernoulli : Likelihood::gaussian;
    py::gil_scoped_release release;
    use_device(device);
    mc_gpu::log_importance_weights<T>(B, m, D, lik, xp, out, lv, fixed_logvar, lp, lq, w,
                                      reinterpret_cast<cudaStream_t>(stream));
  });
}

/// (usable device count, message). Never throws: with no driver or no GPU the count is 0
/// and the message is CUDA's reason. Devices older than the oldest architecture the build
/// has code for (GENFAST_CUDA_MIN_ARCH) are listed but not counted.
py::tuple device_status() {
  int count = 0;
  const cudaError_t status = cudaGetDeviceCount(&count);
  if (status != cudaSuccess) {
    cudaGetLastError();  // clear the error so that later calls start clean
    return py::make_tuple(0, std::string("no usable CUDA device: ") + cudaGetErrorString(status));
  }
  if (count == 0) return py::make_tuple(0, std::string("no CUDA device found"));
  int usable = 0;
  std::string list;
  for (int d = 0; d < count; ++d) {
    cudaDeviceProp prop;
    const cudaError_t st = cudaGetDeviceProperties(&prop, d);
    list += d ? ", " : "";
    if (st != cudaSuccess) {
      cudaGetLastError();
      list += "device " + std::to_string(d) + " (" + cudaGetErrorString(st) + ")";
      continue;
    }
    const int arch = prop.major * 10 + prop.minor;
    list += std::string(prop.name) + " (sm_" + std::to_string(arch);
    if (arch >= GENFAST_CUDA_MIN_ARCH) {
      ++usable;
    } else {
      list += ", unsupported: this build needs sm_" + std::to_string(GENFAST_CUDA_MIN_ARCH) +
              " or newer";
    }
    list += ")";
  }
  const std::string head = usable == count ? std::to_string(count) + " device(s): "
                                           : std::to_string(usable) + " of " +
                                                 std::to_string(count) + " device(s) usable: ";
  return py::make_tuple(usable, head + list);
}

py::dict build_info() {
  py::dict info;
  info["cuda_version"] =
      std::to_string(CUDART_VERSION / 1000) + "." + std::to_string(CUDART_VERSION % 1000 / 10);
  info["compiler"] = "nvcc " GENFAST_NVCC_VERSION;
  info["architectures"] = GENFAST_CUDA_ARCHS;
  info["flags"] = GENFAST_CUDA_FLAGS;
  info["runtime"] = "static";
  return info;
}

}  // namespace

PYBIND11_MODULE(_cuda, m, py::mod_gil_not_used()) {
  m.doc() = "genfast CUDA kernels (device pointers in, kernels enqueued on the given stream)";
  m.def("kmeans_assign", &kmeans_assign, py::arg("X"), py::arg("C"), py::arg("labels"),
        py::arg("sq_dist"), py::arg("B"), py::arg("N"), py::arg("K"), py::arg("D"),
        py::arg("dtype"), py::arg("device"), py::arg("stream"),
        "Nearest centre (lowest index on ties) and its squared distance; writes labels, sq_dist.");
  m.def("kmeans_update_workspace_bytes", &kmeans_update_workspace_bytes, py::arg("B"),
        py::arg("N"), py::arg("K"), py::arg("device") = -1,
        "Bytes of device workspace kmeans_update needs on `device` (-1: the device of the "
        "last genfast CUDA call on this thread, initially 0).");
  m.def("kmeans_update", &kmeans_update, py::arg("X"), py::arg("labels"), py::arg("weights"),
        py::arg("sums"), py::arg("wsum"), py::arg("workspace"), py::arg("workspace_bytes"),
        py::arg("B"), py::arg("N"), py::arg("K"), py::arg("D"), py::arg("dtype"),
        py::arg("device"), py::arg("stream"),
        "Per-cluster weighted sums and total weights (deterministic); writes sums, wsum.");
  m.def("gmm_log_resp_workspace_bytes", &gmm_log_resp_workspace_bytes, py::arg("K"),
        "Bytes of device workspace gmm_log_resp needs for K components.");
  m.def("gmm_log_resp", &gmm_log_resp, py::arg("X"), py::arg("weights"), py::arg("means"),
        py::arg("precisions_cholesky"), py::arg("covariance_type"), py::arg("log_prob"),
        py::arg("log_resp"), py::arg("workspace"), py::arg("workspace_bytes"), py::arg("N"),
        py::arg("K"), py::arg("D"), py::arg("dtype"), py::arg("device"), py::arg("stream"),
        "Gaussian-mixture E-step: writes log_prob (and log_resp unless 0). Checks the factors "
        "and weights first (one wait on the stream) and raises ValueError before writing.");
  m.def("gmm_suff_stats_workspace_bytes", &gmm_suff_stats_workspace_bytes, py::arg("N"),
        py::arg("K"), py::arg("D"), py::arg("covariance_type"),
        "Bytes of device workspace gmm_suff_stats needs for these shapes.");
  m.def("gmm_suff_stats", &gmm_suff_stats, py::arg("X"), py::arg("resp"), py::arg("resp_is_log"),
        py::arg("covariance_type"), py::arg("nk"), py::arg("sums"), py::arg("scatter"),
        py::arg("workspace"), py::arg("workspace_bytes"), py::arg("N"), py::arg("K"), py::arg("D"),
        py::arg("dtype"), py::arg("device"), py::arg("stream"),
        "Gaussian-mixture M-step statistics (deterministic, centred); writes nk, sums, scatter.");
  m.def("elbo", &elbo, py::arg("x"), py::arg("decoder_out"), py::arg("decoder_logvar"), py::arg("mu"),
        py::arg("logvar"), py::arg("likelihood"), py::arg("fixed_logvar"), py::arg("beta"),
        py::arg("rec_scale"), py::arg("kl_scale"), py::arg("elbo"), py::arg("rec"), py::arg("kl"),
        py::arg("grad_x"), py::arg("grad_decoder_out"), py::arg("grad_decoder_logvar"), py::arg("grad_mu"),
        py::arg("grad_logvar"), py::arg("B"), py::arg("D"), py::arg("L"), py::arg("dtype"),
        py::arg("device"), py::arg("stream"),
        "VAE ELBO in one pass (0 for an absent array): writes every output given (per-sample "
        "elbo, rec, kl; the gradients of sum_b rec_scale rec_b + kl_scale kl_b).");
  m.def("elbo_scale_rows", &elbo_scale_rows, py::arg("rows"), py::arg("weight"), py::arg("out"),
        py::arg("B"), py::arg("n"), py::arg("dtype"), py::arg("device"), py::arg("stream"),
        "out[b] = weight[b] rows[b] for every row b of a (B, n) array.");
  m.def("mc_logmeanexp_update", &mc_logmeanexp_update, py::arg("a"), py::arg("max"), py::arg("sum"),
        py::arg("sum_sq"), py::arg("B"), py::arg("m"), py::arg("dtype"), py::arg("device"), py::arg("stream"),
        "Adds a chunk a (B, m) of log-weights to the running per-row state (float64, (B,) each).");
  m.def("mc_logmeanexp_finish", &mc_logmeanexp_finish, py::arg("n_samples"), py::arg("max"), py::arg("sum"),
        py::arg("sum_sq"), py::arg("log_mean"), py::arg("ess"), py::arg("std_error"), py::arg("B"),
        py::arg("dtype"), py::arg("device"), py::arg("stream"),
        "Per-row log mean exp, effective sample size and standard error from the running state.");
  m.def("mc_log_importance_weights", &mc_log_importance_weights, py::arg("x"), py::arg("decoder_out"),
        py::arg("decoder_logvar"), py::arg("likelihood"), py::arg("fixed_logvar"), py::arg("log_prior"),
        py::arg("log_proposal"), py::arg("log_w"), py::arg("B"), py::arg("m"), py::arg("D"), py::arg("dtype"),
        py::arg("device"), py::arg("stream"),
        "log w = sum_d log p(x_d | decoder_out) + log_prior - log_proposal, (B, m), fused (decoder_logvar 0: "
        "fixed_logvar everywhere).");
  m.def("device_status", &device_status,
        "(usable CUDA devices, message); never raises, also without a driver or GPU.");
  m.def("build_info", &build_info, "CUDA version, architectures and nvcc flags of the build.");
}
