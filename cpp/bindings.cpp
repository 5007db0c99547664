// genfast._core: thin pybind11 bindings for the CPU kernels. Shapes and dtypes are
// checked here (std::invalid_argument -> ValueError); every kernel runs without the GIL.
// Arrays must already have the exact dtype and be C-contiguous (noconvert): the Python
// layer decides about copies, so none is ever made silently here.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <omp.h>
#include <signal.h>

#include <genfast/simd.hpp>

#include <stdexcept>
#include <string>
#include <vector>

#include "blocked_sum.hpp"
#include "elbo.hpp"
#include "gmm.hpp"
#include "interrupt.hpp"
#include "kmeans.hpp"
#include "mc.hpp"

namespace py = pybind11;

namespace {

template <class T> using carray = py::array_t<T, py::array::c_style>;

/// Stands in for Python's SIGINT handler while a kernel runs without the GIL (see
/// interrupt.hpp): a Ctrl-C sets genfast::sigint_received, which the kernel polls. Only on
/// Python's main thread (where Python runs signal handlers) and only while Python's handler
/// is the default one (which raises KeyboardInterrupt); otherwise nothing is installed and
/// the kernel runs to the end.
class SigintWatch {
 public:
  SigintWatch() {
    if (!python_raises_keyboard_interrupt()) return;
    genfast::sigint_received.store(false);
    struct sigaction action {};
    action.sa_handler = [](int) { genfast::sigint_received.store(true, std::memory_order_relaxed); };
    sigemptyset(&action.sa_mask);
    if (sigaction(SIGINT, &action, &previous_) != 0) return;
    installed_ = true;
    genfast::interrupt_flag = &genfast::sigint_received;
  }
  SigintWatch(const SigintWatch&) = delete;
  SigintWatch& operator=(const SigintWatch&) = delete;
  ~SigintWatch() { restore(); }

  /// Puts Python's handler back; raises KeyboardInterrupt if a Ctrl-C came meanwhile (as
  /// Python would have on the kernel's return). Call with the GIL held.
  void restore_and_raise() {
    const bool received = installed_ && genfast::sigint_received.load();
    restore();
    if (received) {
      PyErr_SetNone(PyExc_KeyboardInterrupt);
      throw py::error_already_set();
    }
  }

 private:
  static bool python_raises_keyboard_interrupt() {
    // Looked up once and kept for the life of the process (never destroyed after Python).
    static const auto* signal_module = new py::object(py::module_::import("signal"));
    static const auto* threading = new py::object(py::module_::import("threading"));
    if (!threading->attr("current_thread")().is(threading->attr("main_thread")())) return false;
    return signal_module->attr("getsignal")(SIGINT).is(signal_module->attr("default_int_handler"));
  }
  void restore() {
    if (!installed_) return;
    sigaction(SIGINT, &previous_, nullptr);
    genfast::interrupt_flag = nullptr;
    installed_ = false;
  }
  struct sigaction previous_ {};
  bool installed_ = false;
};

/// Runs a fit-loop kernel without the GIL; a Ctrl-C meanwhile stops it within one block of
/// points and raises KeyboardInterrupt (its outputs are then incomplete and never returned).
template <class Kernel> void run_interruptible(Kernel&& kernel) {
  SigintWatch watch;
  {
    py::gil_scoped_release release;
    kernel();
  }
  watch.restore_and_raise();
}

void require(bool ok, const std::string& what) {
  if (!ok) throw std::invalid_argument(what);
}

void require_shape(const py::array& a, const std::string& name, const std::vector<py::ssize_t>& shape) {
  std::string expected = "(";
  for (auto d : shape) expected += std::to_string(d) + ",";
  expected.back() = ')';
  bool ok = a.ndim() == py::ssize_t(shape.size());
  int i = 0;
  for (auto d : shape) ok = ok && a.shape(i++) == d;
  require(ok, std::string(name) + " must have shape " + expected);
}

/// Shape of an assignment, X [B, N, D] against C [B, K, D], with its outputs checked.
template <class T>
genfast::kmeans::Shape assign_shape(const carray<T>& X, const carray<T>& C,
                                    const carray<int64_t>& labels, const carray<T>& sq_dist) {
  require(X.ndim() == 3, "X must be 3-d (B, N, D)");
  require(C.ndim() == 3, "C must be 3-d (B, K, D)");
  genfast::kmeans::Shape s{X.shape(0), X.shape(1), C.shape(1), X.shape(2)};
  require(C.shape(0) == s.B && C.shape(2) == s.D, "C must have shape (B, K, D) matching X");
  require(s.K >= 1 && s.K <= INT32_MAX, "C must hold between 1 and 2**31-1 centres");
  require_shape(labels, "labels", {s.B, s.N});
  require_shape(sq_dist, "sq_dist", {s.B, s.N});
  return s;
}

/// Checks the M-step arrays against s: optional weights [B, N], sums [B, K, D], wsum [B, K].
template <class T>
void check_update_arrays(const genfast::kmeans::Shape& s, const std::optional<carray<T>>& weights,
                         const carray<T>& sums, const carray<T>& wsum) {
  require_shape(sums, "sums", {s.B, s.K, s.D});
  require_shape(wsum, "wsum", {s.B, s.K});
  if (weights) require_shape(*weights, "sample_weight", {s.B, s.N});
}

template <class T>
void kmeans_assign(const carray<T>& X, const carray<T>& C, carray<int64_t>& labels,
                   carray<T>& sq_dist) {
  const auto s = assign_shape(X, C, labels, sq_dist);
  const T* x = X.data();
  const T* c = C.data();
  int64_t* l = labels.mutable_data();
  T* d = sq_dist.mutable_data();
  run_interruptible([&] { genfast::kmeans::assign_labels<T>(s, x, c, l, d); });
}

template <class T>
void kmeans_update(const carray<T>& X, const carray<int64_t>& labels,
                   const std::optional<carray<T>>& weights, carray<T>& sums, carray<T>& wsum) {
  require(X.ndim() == 3, "X must be 3-d (B, N, D)");
  require(sums.ndim() == 3 && sums.shape(1) >= 1, "sums must be 3-d (B, K, D) with K >= 1");
  const genfast::kmeans::Shape s{X.shape(0), X.shape(1), sums.shape(1), X.shape(2)};
  require_shape(labels, "labels", {s.B, s.N});
  check_update_arrays(s, weights, sums, wsum);
  const T* x = X.data();
  const int64_t* l = labels.data();
  const T* w = weights ? weights->data() : nullptr;
  T* out = sums.mutable_data();
  T* ws = wsum.mutable_data();
  run_interruptible([&] { genfast::kmeans::update_centers<T>(s, x, l, w, out, ws); });
}

template <class T>
void kmeans_lloyd_step(const carray<T>& X, const carray<T>& C,
                       const std::optional<carray<T>>& weights, carray<int64_t>& labels,
                       carray<T>& sq_dist, carray<T>& sums, carray<T>& wsum) {
  const auto s = assign_shape(X, C, labels, sq_dist);
  check_update_arrays(s, weights, sums, wsum);
  const T* x = X.data();
  const T* c = C.data();
  const T* w = weights ? weights->data() : nullptr;
  int64_t* l = labels.mutable_data();
  T* d = sq_dist.mutable_data();
  T* out = sums.mutable_data();
  T* ws = wsum.mutable_data();
  run_interruptible([&] { genfast::kmeans::lloyd_step<T>(s, x, c, w, l, d, out, ws); });
}

template <class T>
void kmeans_lloyd_step_accumulate(const carray<T>& X, const std::optional<carray<T>>& shift,
                                  const carray<T>& C, const std::optional<carray<T>>& weights,
                                  carray<int64_t>& labels, carray<T>& sq_dist,
                                  carray<genfast::accumulate_t<T>>& totals) {
  const auto s = assign_shape(X, C, labels, sq_dist);
  if (shift) require_shape(*shift, "shift", {s.D});
  if (weights) require_shape(*weights, "sample_weight", {s.B, s.N});
  require_shape(totals, "totals", {s.B, s.K * s.D + s.K});
  const T* x = X.data();
  const T* m = shift ? shift->data() : nullptr;
  const T* c = C.data();
  const T* w = weights ? weights->data() : nullptr;
  int64_t* l = labels.mutable_data();
  T* d = sq_dist.mutable_data();
  genfast::accumulate_t<T>* t = totals.mutable_data();
  run_interruptible([&] { genfast::kmeans::lloyd_step_accumulate<T>(s, x, m, c, w, l, d, t); });
}

/// Shape of the precision Cholesky factors (scikit-learn's) for K components in D dims.
std::vector<py::ssize_t> precision_shape(genfast::gmm::Covariance cov, py::ssize_t K, py::ssize_t D) {
  using genfast::gmm::Covariance;
  switch (cov) {
    case Covariance::full: return {K, D, D};
    case Covariance::tied: return {D, D};
    case Covariance::diag: return {K, D};
    case Covariance::spherical: break;
  }
  return {K};
}

/// The shape of a mixture's E-step inputs, checked against each other.
template <class T>
genfast::gmm::Shape mixture_shape(genfast::gmm::Covariance cov, const carray<T>& X, const carray<T>& weights,
                                  const carray<T>& means, const carray<T>& prec_chol) {
  require(X.ndim() == 2, "X must be 2-d (N, D)");
  require(means.ndim() == 2 && means.shape(1) == X.shape(1), "means must have shape (K, D) matching X");
  const genfast::gmm::Shape s{X.shape(0), means.shape(0), X.shape(1)};
  require(s.K >= 1, "means must hold at least one component");
  require_shape(weights, "weights", {s.K});
  require_shape(prec_chol, "precisions_cholesky", precision_shape(cov, s.K, s.D));
  return s;
}

/// Checks the shapes of the M-step statistics' outputs.
template <class T>
void require_statistics(genfast::gmm::Covariance cov, const genfast::gmm::Shape& s, const carray<T>& nk,
                        const carray<T>& sums, const carray<T>& scatter) {
  require_shape(nk, "nk", {s.K});
  require_shape(sums, "sums", {s.K, s.D});
  require_shape(scatter, "scatter",
                cov == genfast::gmm::Covariance::spherical ? std::vector<py::ssize_t>{s.K}
                                                           : precision_shape(cov, s.K, s.D));
}

template <class T>
void gmm_log_resp(const carray<T>& X, const carray<T>& weights, const carray<T>& means,
                  const carray<T>& prec_chol, const std::string& covariance_type,
                  carray<T>& log_prob, const std::optional<carray<T>>& log_resp) {
  const auto cov = genfast::gmm::covariance_from_name(covariance_type);
  const auto s = mixture_shape(cov, X, weights, means, prec_chol);
  require_shape(log_prob, "log_prob", {s.N});
  if (log_resp) require_shape(*log_resp, "log_resp", {s.N, s.K});
  const T *x = X.data(), *w = weights.data(), *mu = means.data(), *p = prec_chol.data();
  T* lp = log_prob.mutable_data();
  T* lr = log_resp ? carray<T>(*log_resp).mutable_data() : nullptr;
  run_interruptible([&] { genfast::gmm::log_resp<T>(s, cov, x, w, mu, p, lp, lr); });
}

template <class T>
void gmm_suff_stats(const carray<T>& X, const carray<T>& resp, bool resp_is_log,
                    const std::string& covariance_type, carray<T>& nk, carray<T>& sums,
                    carray<T>& scatter) {
  const auto cov = genfast::gmm::covariance_from_name(covariance_type);
  require(X.ndim() == 2, "X must be 2-d (N, D)");
  require(resp.ndim() == 2 && resp.shape(0) == X.shape(0), "resp must have shape (N, K) matching X");
  const genfast::gmm::Shape s{X.shape(0), resp.shape(1), X.shape(1)};
  require(s.K >= 1, "resp must have at least one component column");
  require_statistics(cov, s, nk, sums, scatter);
  const T *x = X.data(), *r = resp.data();
  T *n = nk.mutable_data(), *sm = sums.mutable_data(), *sc = scatter.mutable_data();
  run_interruptible([&] { genfast::gmm::suff_stats<T>(s, cov, x, r, resp_is_log, n, sm, sc); });
}

template <class T>
void gmm_em_step(const carray<T>& X, const carray<T>& weights, const carray<T>& means,
                 const carray<T>& prec_chol, const std::string& covariance_type,
                 carray<T>& log_prob, carray<T>& nk, carray<T>& sums, carray<T>& scatter) {
  const auto cov = genfast::gmm::covariance_from_name(covariance_type);
  const auto s = mixture_shape(cov, X, weights, means, prec_chol);
  require_shape(log_prob, "log_prob", {s.N});
  require_statistics(cov, s, nk, sums, scatter);
  const T *x = X.data(), *w = weights.data(), *mu = means.data(), *p = prec_chol.data();
  T *lp = log_prob.mutable_data(), *n = nk.mutable_data(), *sm = sums.mutable_data(), *sc = scatter.mutable_data();
  run_interruptible([&] { genfast::gmm::em_step<T>(s, cov, x, w, mu, p, lp, n, sm, sc); });
}

template <class T> void bind_gmm(py::module_& m) {
  m.def("gmm_log_resp", &gmm_log_resp<T>, py::arg("X").noconvert(), py::arg("weights").noconvert(),
        py::arg("means").noconvert(), py::arg("precisions_cholesky").noconvert(),
        py::arg("covariance_type"), py::arg("log_prob").noconvert(), py::arg("log_resp").noconvert(),
        "Gaussian-mixture E-step: writes log_prob (and log_resp unless None).");
  m.def("gmm_suff_stats", &gmm_suff_stats<T>, py::arg("X").noconvert(), py::arg("resp").noconvert(),
        py::arg("resp_is_log"), py::arg("covariance_type"), py::arg("nk").noconvert(),
        py::arg("sums").noconvert(), py::arg("scatter").noconvert(),
        "Gaussian-mixture M-step statistics: writes nk, sums and the centred scatter.");
  m.def("gmm_em_step", &gmm_em_step<T>, py::arg("X").noconvert(), py::arg("weights").noconvert(),
        py::arg("means").noconvert(), py::arg("precisions_cholesky").noconvert(),
        py::arg("covariance_type"), py::arg("log_prob").noconvert(), py::arg("nk").noconvert(),
        py::arg("sums").noconvert(), py::arg("scatter").noconvert(),
        "E-step and M-step statistics in one pass: writes log_prob, nk, sums and the scatter.");
}

template <class T> void bind_kmeans(py::module_& m) {
  m.def("kmeans_assign", &kmeans_assign<T>, py::arg("X").noconvert(), py::arg("C").noconvert(),
        py::arg("labels").noconvert(), py::arg("sq_dist").noconvert(),
        "Nearest centre (lowest index on ties) and its squared distance; writes labels, sq_dist.");
  m.def("kmeans_update", &kmeans_update<T>, py::arg("X").noconvert(),
        py::arg("labels").noconvert(), py::arg("weights").noconvert(),
        py::arg("sums").noconvert(), py::arg("wsum").noconvert(),
        "Per-cluster weighted sums and total weights; writes sums, wsum.");
  m.def("kmeans_lloyd_step", &kmeans_lloyd_step<T>, py::arg("X").noconvert(),
        py::arg("C").noconvert(), py::arg("weights").noconvert(), py::arg("labels").noconvert(),
        py::arg("sq_dist").noconvert(), py::arg("sums").noconvert(), py::arg("wsum").noconvert(),
        "kmeans_assign then kmeans_update of that assignment in one pass over X.");
  m.def("kmeans_lloyd_step_accumulate", &kmeans_lloyd_step_accumulate<T>, py::arg("X").noconvert(),
        py::arg("shift").noconvert(), py::arg("C").noconvert(), py::arg("weights").noconvert(),
        py::arg("labels").noconvert(), py::arg("sq_dist").noconvert(),
        py::arg("totals").noconvert(),
        "kmeans_lloyd_step on the points X - shift (shift (D,) or None; each difference rounded "
        "to X's dtype, as numpy's), with the sums (then the weights) of each cluster added in "
        "float64 to totals (B, K*D + K); rows from a multiple of 8192 on continue a split X "
        "bitwise.");
}

// ---- VAE ELBO ----------------------------------------------------------------------------
template <class T> using optional_array = std::optional<carray<T>>;
/// Arrays that share a shape, with their argument names.
template <class T> using named_arrays = std::initializer_list<std::pair<const char*, const optional_array<T>*>>;

/// Size of axis `axis` of the first of `arrays` that is given, or `fallback` when none is.
template <class T> py::ssize_t first_extent(named_arrays<T> arrays, int axis, py::ssize_t fallback) {
  for (const auto& [name, a] : arrays)
    if (*a) return (*a)->ndim() > axis ? (*a)->shape(axis) : -1;
  return fallback;
}

template <class T> void require_shapes(named_arrays<T> arrays, const std::vector<py::ssize_t>& shape) {
  for (const auto& [name, a] : arrays)
    if (*a) require_shape(**a, name, shape);
}

template <class T> const T* in_ptr(const optional_array<T>& a) { return a ? a->data() : nullptr; }
template <class T> T* out_ptr(const optional_array<T>& a) { return a ? carray<T>(*a).mutable_data() : nullptr; }

template <class T>
void elbo_evaluate(const optional_array<T>& x, const optional_array<T>& decoder_out,
                   const optional_array<T>& decoder_logvar, const optional_array<T>& mu,
                   const optional_array<T>& logvar, const std::string& likelihood,
                   double fixed_logvar, double beta, double rec_scale, double kl_scale,
                   const optional_array<T>& elbo,
                   const optional_array<T>& rec, const optional_array<T>& kl,
                   const optional_array<T>& grad_x, const optional_array<T>& grad_decoder_out,
                   const optional_array<T>& grad_decoder_logvar, const optional_array<T>& grad_mu,
                   const optional_array<T>& grad_logvar) {
  using genfast::elbo::Likelihood;
  require(likelihood == "bernoulli" || likelihood == "gaussian",
          "likelihood must be 'bernoulli' or 'gaussian', got '" + likelihood + "'");
  const named_arrays<T> data = {{"x", &x}, {"decoder_out", &decoder_out}, {"decoder_logvar", &decoder_logvar},
                                {"grad_x", &grad_x}, {"grad_decoder_out", &grad_decoder_out},
                                {"grad_decoder_logvar", &grad_decoder_logvar}};
  const named_arrays<T> latent = {{"mu", &mu}, {"logvar", &logvar}, {"grad_mu", &grad_mu},
                                  {"grad_logvar", &grad_logvar}};
  const named_arrays<T> per_sample = {{"elbo", &elbo}, {"rec", &rec}, {"kl", &kl}};
  // B, D and L from the first array given of each kind; every other one must agree.
  const py::ssize_t B = first_extent(data, 0, first_extent(latent, 0, first_extent(per_sample, 0, 0)));
  const py::ssize_t D = first_extent(data, 1, 0), L = first_extent(latent, 1, 0);
  require_shapes(data, {B, D});
  require_shapes(latent, {B, L});
  require_shapes(per_sample, {B});
  genfast::elbo::Problem<T> p;
  p.x = in_ptr(x), p.decoder_out = in_ptr(decoder_out), p.decoder_logvar = in_ptr(decoder_logvar);
  p.mu = in_ptr(mu), p.logvar = in_ptr(logvar);
  p.fixed_logvar = fixed_logvar, p.beta = beta, p.rec_scale = rec_scale, p.kl_scale = kl_scale;
  p.elbo = out_ptr(elbo), p.rec = out_ptr(rec), p.kl = out_ptr(kl);
  p.grad_x = out_ptr(grad_x), p.grad_decoder_out = out_ptr(grad_decoder_out);
  p.grad_decoder_logvar = out_ptr(grad_decoder_logvar);
  p.grad_mu = out_ptr(grad_mu), p.grad_logvar = out_ptr(grad_logvar);
  const genfast::elbo::Shape s{B, D, L};
  const auto lik = likelihood == "bernoulli" ? Likelihood::bernoulli : Likelihood::gaussian;
  py::gil_scoped_release release;
  genfast::elbo::evaluate<T>(s, lik, p);
}

template <class T> void elbo_scale_rows(const carray<T>& grad, const carray<T>& weight, carray<T>& out) {
  require(grad.ndim() == 2, "grad must be 2-d (B, n)");
  require_shape(weight, "weight", {grad.shape(0)});
  require_shape(out, "out", {grad.shape(0), grad.shape(1)});
  const T *g = grad.data(), *w = weight.data();
  T* o = out.mutable_data();
  py::gil_scoped_release release;
  genfast::elbo::scale_rows<T>(grad.shape(0), grad.shape(1), g, w, o);
}

template <class T> void bind_elbo(py::module_& m) {
  const auto array = [](const char* name) { return py::arg(name).noconvert() = py::none(); };
  m.def("elbo", &elbo_evaluate<T>, array("x"), array("decoder_out"), array("decoder_logvar"),
        array("mu"), array("logvar"), py::arg("likelihood") = "bernoulli",
        py::arg("fixed_logvar") = 0.0, py::arg("beta") = 1.0, py::arg("rec_scale") = 1.0,
        py::arg("kl_scale") = 1.0, array("elbo"), array("rec"), array("kl"), array("grad_x"),
        array("grad_decoder_out"), array("grad_decoder_logvar"), array("grad_mu"),
        array("grad_logvar"),
        "VAE ELBO in one pass: writes every output array given (per-sample elbo, rec, kl; the "
        "gradients of sum_b rec_scale rec_b + kl_scale kl_b).");
  m.def("elbo_scale_rows", &elbo_scale_rows<T>, py::arg("grad").noconvert(), py::arg("weight").noconvert(),
        py::arg("out").noconvert(), "out[b] = weight[b] grad[b] for every row b of a 2-d array.");
}

template <class T>
void mc_logmeanexp_update(const carray<T>& a, carray<double>& max, carray<double>& sum, carray<double>& sum_sq) {
  require(a.ndim() == 2, "a must be 2-d (B, m)");
  for (const auto& [name, s] : {std::pair<const char*, carray<double>*>{"max", &max}, {"sum", &sum}, {"sum_sq", &sum_sq}})
    require_shape(*s, name, {a.shape(0)});
  const T* in = a.data();
  double *mx = max.mutable_data(), *s = sum.mutable_data(), *q = sum_sq.mutable_data();
  py::gil_scoped_release release;
  genfast::mc::logmeanexp_update<T>(a.shape(0), a.shape(1), in, mx, s, q);
}

template <class T>
void mc_logmeanexp_finish(double n_samples, const carray<double>& max, const carray<double>& sum,
                          const carray<double>& sum_sq, carray<T>& log_mean, carray<T>& ess, carray<T>& std_error) {
  require(max.ndim() == 1, "max must be 1-d (B,)");
  require(n_samples >= 1, "n_samples must be at least 1");
  const py::ssize_t B = max.shape(0);
  require_shape(sum, "sum", {B});
  require_shape(sum_sq, "sum_sq", {B});
  require_shape(log_mean, "log_mean", {B});
  require_shape(ess, "ess", {B});
  require_shape(std_error, "std_error", {B});
  const double *mx = max.data(), *s = sum.data(), *q = sum_sq.data();
  T *lm = log_mean.mutable_data(), *e = ess.mutable_data(), *se = std_error.mutable_data();
  py::gil_scoped_release release;
  genfast::mc::logmeanexp_finish<T>(B, n_samples, mx, s, q, lm, e, se);
}

template <class T>
void mc_logmeanexp(const carray<T>& a, carray<T>& log_mean, carray<T>& ess, carray<T>& std_error) {
  require(a.ndim() == 2, "a must be 2-d (B, M)");
  require(a.shape(1) >= 1, "a must have at least one sample per row");
  const py::ssize_t B = a.shape(0);
  require_shape(log_mean, "log_mean", {B});
  require_shape(ess, "ess", {B});
  require_shape(std_error, "std_error", {B});
  const T* in = a.data();
  T *lm = log_mean.mutable_data(), *e = ess.mutable_data(), *se = std_error.mutable_data();
  py::gil_scoped_release release;
  genfast::mc::logmeanexp<T>(B, a.shape(1), in, lm, e, se);
}

template <class T>
void mc_log_importance_weights(const carray<T>& x, const carray<T>& decoder_out,
                               const optional_array<T>& decoder_logvar, const std::string& likelihood,
                               double fixed_logvar, const carray<T>& log_prior, const carray<T>& log_proposal,
                               carray<T>& log_w) {
  using genfast::elbo::Likelihood;
  require(likelihood == "bernoulli" || likelihood == "gaussian",
          "likelihood must be 'bernoulli' or 'gaussian', got '" + likelihood + "'");
  require(x.ndim() == 2, "x must be 2-d (B, D)");
  require(decoder_out.ndim() == 3, "decoder_out must be 3-d (B, m, D)");
  const py::ssize_t B = x.shape(0), D = x.shape(1), m = decoder_out.shape(1);
  require_shape(decoder_out, "decoder_out", {B, m, D});
  if (decoder_logvar) require_shape(*decoder_logvar, "decoder_logvar", {B, m, D});
  require(!(decoder_logvar && likelihood == "bernoulli"), "the Bernoulli likelihood has no log-variance");
  require_shape(log_prior, "log_prior", {B, m});
  require_shape(log_proposal, "log_proposal", {B, m});
  require_shape(log_w, "log_w", {B, m});
  const auto lik = likelihood == "bernoulli" ? Likelihood::bernoulli : Likelihood::gaussian;
  const T *xp = x.data(), *out = decoder_out.data(), *lv = in_ptr(decoder_logvar);
  const T *lp = log_prior.data(), *lq = log_proposal.data();
  T* w = log_w.mutable_data();
  py::gil_scoped_release release;
  genfast::mc::log_importance_weights<T>(B, m, D, lik, xp, out, lv, fixed_logvar, lp, lq, w);
}

template <class T> void bind_mc(py::module_& m) {
  const auto array = [](const char* name) { return py::arg(name).noconvert(); };
  m.def("mc_logmeanexp_update", &mc_logmeanexp_update<T>, array("a"), array("max"), array("sum"),
        array("sum_sq"), "Adds a chunk a (B, m) of log-weights to the running per-row state (float64, (B,)).");
  m.def("mc_logmeanexp_finish", &mc_logmeanexp_finish<T>, py::arg("n_samples"), array("max"), array("sum"),
        array("sum_sq"), array("log_mean"), array("ess"), array("std_error"),
        "Per-row log mean exp, effective sample size and standard error from the running state.");
  m.def("mc_logmeanexp", &mc_logmeanexp<T>, array("a"), array("log_mean"), array("ess"), array("std_error"),
        "Per-row log mean exp, effective sample size and standard error of a (B, M), in one pass.");
  m.def("mc_log_importance_weights", &mc_log_importance_weights<T>, array("x"), array("decoder_out"),
        py::arg("decoder_logvar").noconvert() = py::none(), py::arg("likelihood") = "bernoulli",
        py::arg("fixed_logvar") = 0.0, array("log_prior"), array("log_proposal"), array("log_w"),
        "log w = sum_d log p(x_d | decoder_out) + log_prior - log_proposal, (B, m), fused.");
}

}  // namespace

PYBIND11_MODULE(_core, m, py::mod_gil_not_used()) {
  m.doc() = "genfast CPU kernels (C++17, OpenMP)";
  bind_kmeans<float>(m);
  bind_kmeans<double>(m);
  bind_gmm<float>(m);
  bind_gmm<double>(m);
  bind_elbo<float>(m);
  bind_elbo<double>(m);
  bind_mc<float>(m);
  bind_mc<double>(m);
  m.attr("SUM_BLOCK_POINTS") = genfast::kSumBlockPoints;  // the fixed summation block (rows)
  m.def("openmp_max_threads", [] { return omp_get_max_threads(); },
        "Threads an OpenMP parallel region would use now.");
  m.def("build_info", [] {
    py::dict info;
    info["version"] = GENFAST_VERSION;
    info["compiler"] = GENFAST_CXX_ID;
    info["flags"] = GENFAST_CXX_FLAGS;
    info["simd"] = genfast::simd::kName;
    info["vector_bytes"] = genfast::simd::kVectorBytes;
    info["openmp"] = std::to_string(_OPENMP);
    return info;
  });
}
