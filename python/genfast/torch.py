"""genfast.torch: the fused VAE ELBO as differentiable PyTorch operators.

    loss = -genfast.torch.elbo(x, logits, mu, logvar)          # mean over the batch
    loss.backward()

Two custom operators (``torch.library.custom_op``, namespace ``genfast``) do the work:

- ``genfast::elbo_forward`` computes the per-sample ELBO, reconstruction log-likelihood and KL
  and, for every input that requires grad, its gradient rows, all in one pass over the data.
  The rows are computed for the upstream gradient of ``loss = -elbo(...)`` (reduced as asked),
  the way the ELBO is trained; when the backward finds exactly that upstream gradient (the
  usual case, checked on its B values; on CUDA that check synchronises the stream once per
  backward), the rows are the gradient and are passed on as they are: the training step
  touches each element once.
- ``genfast::elbo_backward`` (the backward for any other upstream gradient, itself a custom op)
  rescales the rows per sample: one multiply per element, no transcendental math. Compiled
  and traced graphs always take this op (the check reads tensor values).

Both run on CPU tensors (genfast._core, OpenMP + SIMD) and CUDA tensors (genfast._cuda, on
the current stream of the tensor's device), accept non-contiguous inputs (copied to
contiguous ones), have fake implementations for torch.compile / export, and pass
``torch.library.opcheck``. CUDA also takes float16 / bfloat16 (float32 arithmetic inside).

This module imports torch; ``import genfast`` does not import it.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

from . import ops as _ops

__all__ = ["elbo", "kl_normal_std", "bernoulli_log_likelihood", "gaussian_log_likelihood", "logmeanexp"]

REDUCTIONS = ("mean", "sum", "none")
_VALUES = ("elbo", "rec", "kl")
#: The term each input's gradient comes from: 0 reconstruction, 1 KL.
_TERM_OF_INPUT = (0, 0, 0, 1, 1)


# --------------------------------------------------------------------------- custom ops
def _gradient_rows(inputs, gradients):
    """Which inputs get gradient rows: those asked for that are present."""
    return [want and t is not None for t, want in zip(inputs, gradients)]


def _first(tensors):
    return next(t for t in tensors if t is not None)


@torch.library.custom_op("genfast::elbo_forward", mutates_args=())
def elbo_forward(x: Optional[Tensor], decoder_out: Optional[Tensor], decoder_logvar: Optional[Tensor],
                 mu: Optional[Tensor], logvar: Optional[Tensor], likelihood: str, fixed_logvar: float,
                 beta: float, gradients: list[bool], rec_scale: float, kl_scale: float
                 ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(elbo, rec, kl) per sample (B,), then for x, decoder_out, decoder_logvar, mu, logvar in
    turn the gradient rows where gradients[i] is set: rec_scale d rec_b / d input for the data
    inputs, kl_scale d kl_b / d input for the latents, shaped as the input; else an absent
    marker, an empty (0,) tensor. Inputs are 2-d, (B, D) or (B, L); at least one is given."""
    inputs = [None if t is None else t.contiguous() for t in (x, decoder_out, decoder_logvar, mu, logvar)]
    first = _first(inputs)
    values = [first.new_empty(first.shape[0]) for _ in _VALUES]
    rows = [t.new_empty(t.shape) if want else first.new_empty(0)
            for t, want in zip(inputs, _gradient_rows(inputs, gradients))]
    _ops._elbo_kernel(dict(zip(_ops.ELBO_INPUTS, inputs)),
                      {**dict(zip(_VALUES, values)),
                       **{"grad_" + n: r for n, r, t, want in
                          zip(_ops.ELBO_INPUTS, rows, inputs, _gradient_rows(inputs, gradients)) if want}},
                      likelihood=likelihood, fixed_logvar=fixed_logvar, beta=beta, rec_scale=rec_scale,
                      kl_scale=kl_scale)
    return (*values, *rows)


@elbo_forward.register_fake
def _elbo_forward_fake(x, decoder_out, decoder_logvar, mu, logvar, likelihood, fixed_logvar, beta, gradients,
                       rec_scale, kl_scale):
    inputs = (x, decoder_out, decoder_logvar, mu, logvar)
    first = _first(inputs)
    values = [first.new_empty(first.shape[0]) for _ in _VALUES]
    rows = [t.new_empty(t.shape) if want else first.new_empty(0)
            for t, want in zip(inputs, _gradient_rows(inputs, gradients))]
    return (*values, *rows)


@torch.library.custom_op("genfast::elbo_backward", mutates_args=())
def elbo_backward(grad_x: Tensor, grad_decoder_out: Tensor, grad_decoder_logvar: Tensor, grad_mu: Tensor,
                  grad_logvar: Tensor, rec_weight: Optional[Tensor], kl_weight: Optional[Tensor]
                  ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Gradient rows rescaled per sample: row b times rec_weight[b] for the data inputs, times
    kl_weight[b] for the latents (shape (B,) each). An input whose rows are absent (a (0,)
    tensor), or whose weight is None, gets an absent (0,) tensor."""
    weights = (rec_weight, kl_weight)
    out = []
    for rows, term in zip((grad_x, grad_decoder_out, grad_decoder_logvar, grad_mu, grad_logvar), _TERM_OF_INPUT):
        weight = weights[term]
        if weight is None or rows.ndim != 2:
            out.append(rows.new_empty(0))
            continue
        result = rows.new_empty(rows.shape)
        _ops._scale_rows_kernel(rows.contiguous(), weight.contiguous(), result)
        out.append(result)
    return tuple(out)


@elbo_backward.register_fake
def _elbo_backward_fake(grad_x, grad_decoder_out, grad_decoder_logvar, grad_mu, grad_logvar, rec_weight, kl_weight):
    weights = (rec_weight, kl_weight)
    return tuple(rows.new_empty(0) if weights[term] is None or rows.ndim != 2 else rows.new_empty(rows.shape)
                 for rows, term in zip((grad_x, grad_decoder_out, grad_decoder_logvar, grad_mu, grad_logvar),
                                       _TERM_OF_INPUT))


def _setup_elbo_forward(ctx, inputs, output):
    x, decoder_out, decoder_logvar, mu, logvar, _, _, beta, gradients, rec_scale, kl_scale = inputs
    ctx.beta, ctx.scales = beta, (rec_scale, kl_scale)
    ctx.has_rows = _gradient_rows((x, decoder_out, decoder_logvar, mu, logvar), gradients)
    ctx.save_for_backward(*output[3:])
    ctx.mark_non_differentiable(*output[3:])
    ctx.set_materialize_grads(False)  # an unused output's gradient stays None, never a zero tensor


def _add(a, b):
    return b if a is None else a if b is None else a + b


def _is_uniform(weight: Tensor, value: float) -> bool:
    """Whether the upstream weight is `value` for every sample. Read only from plain tensors
    outside compilation: traced graphs (fake or functional tensors) have no values to read."""
    return type(weight) is Tensor and not torch.compiler.is_compiling() and bool((weight == value).all())


def _backward_elbo_forward(ctx, grad_elbo, grad_rec, grad_kl, *_rows):
    for name, needed, has in zip(_ops.ELBO_INPUTS, ctx.needs_input_grad, ctx.has_rows):
        if needed and not has:
            raise RuntimeError(f"genfast::elbo_forward was called with gradients=False for {name}, "
                               f"which requires grad; call genfast.torch.elbo instead")
    # ELBO_b = rec_b - beta kl_b: the upstream weight of sample b's rec and kl gradients
    weights = (_add(grad_elbo, grad_rec), _add(None if grad_elbo is None else -ctx.beta * grad_elbo, grad_kl))
    rows = ctx.saved_tensors
    # Rows computed for exactly these weights are the gradient; otherwise rescale them by
    # weight / scale (one pass, in the elbo_backward op).
    as_computed = [w is not None and _is_uniform(w, scale) for w, scale in zip(weights, ctx.scales)]
    rescale = [None if w is None or done else w / scale for w, done, scale in zip(weights, as_computed, ctx.scales)]
    rescaled = elbo_backward(*rows, *rescale) if any(r is not None for r in rescale) else rows
    grads = []
    for row, new, needed, term in zip(rows, rescaled, ctx.needs_input_grad, _TERM_OF_INPUT):
        grads.append(None if not needed or weights[term] is None else row if as_computed[term] else new)
    return (*grads, None, None, None, None, None, None)


torch.library.register_autograd("genfast::elbo_forward", _backward_elbo_forward, setup_context=_setup_elbo_forward)


# --------------------------------------------------------------------------- validation
def _check_tensor(name: str, t, ref_name: str | None = None, ref: Tensor | None = None) -> None:
    """TypeError / ValueError naming `name` unless t is a floating tensor that genfast can run
    on, with ref's dtype and device."""
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if not t.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {t.dtype}")
    if t.device.type not in ("cpu", "cuda"):
        raise ValueError(f"{name} is on {t.device}; genfast supports cpu and cuda tensors")
    if t.device.type == "cpu" and t.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"{name} has dtype {t.dtype}; on the CPU genfast takes float32 or float64 "
                        f"(float16 and bfloat16 run on CUDA)")
    if ref is not None:
        if t.device != ref.device:
            raise ValueError(f"{name} is on {t.device} but {ref_name} is on {ref.device}; "
                             f"they must be on the same device")
        if t.dtype != ref.dtype:
            raise TypeError(f"{name} has dtype {t.dtype} but {ref_name} has {ref.dtype}; "
                            f"they must have the same dtype")


def _data(x, decoder_out, decoder_logvar, out_name, logvar_name="decoder_logvar"):
    """x, decoder_out, decoder_logvar (named as the caller's arguments) checked to share the
    shape (B, *features), and flattened to (B, D)."""
    _check_tensor("x", x)
    _check_tensor(out_name, decoder_out, "x", x)
    if x.ndim < 2:
        raise ValueError(f"x must have shape (B, D) or (B, *features), got {tuple(x.shape)}")
    if decoder_out.shape != x.shape:
        raise ValueError(f"{out_name} has shape {tuple(decoder_out.shape)} but x has {tuple(x.shape)}; "
                         f"they must match")
    if decoder_logvar is not None:
        _check_tensor(logvar_name, decoder_logvar, "x", x)
        if decoder_logvar.shape != x.shape:
            raise ValueError(f"{logvar_name} has shape {tuple(decoder_logvar.shape)} but x has "
                             f"{tuple(x.shape)}; they must match")
    # (B, D) with D = the product of the feature sizes (reshape(B, -1) fails when B is 0)
    flat = lambda t: None if t is None else t.reshape(t.shape[0], math.prod(t.shape[1:]))  # noqa: E731
    return flat(x), flat(decoder_out), flat(decoder_logvar)


def _latent(mu, logvar, ref_name=None, ref=None):
    _check_tensor("mu", mu, ref_name, ref)
    _check_tensor("logvar", logvar, "mu", mu)
    if mu.ndim != 2:
        raise ValueError(f"mu must have shape (B, L), got {tuple(mu.shape)}")
    if logvar.shape != mu.shape:
        raise ValueError(f"logvar has shape {tuple(logvar.shape)} but mu has {tuple(mu.shape)}; they must match")
    if ref is not None and mu.shape[0] != ref.shape[0]:
        raise ValueError(f"mu holds {mu.shape[0]} samples but {ref_name} holds {ref.shape[0]}; they must match")
    return mu, logvar


def _reduce(t: Tensor, reduction: str) -> Tensor:
    if reduction == "mean":
        return t.mean()
    return t.sum() if reduction == "sum" else t


def _check_reduction(reduction):
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")


def _terms(x, decoder_out, decoder_logvar, mu, logvar, likelihood, fixed_logvar, beta, reduction):
    """(elbo, rec, kl) per sample through the custom op, with gradient rows for the inputs that
    require grad (when autograd records). The rows are computed for the upstream gradient of
    the loss these terms are trained with: -elbo and -log-likelihood (so +kl), reduced as asked
    (for reduction='none' as if summed)."""
    inputs = (x, decoder_out, decoder_logvar, mu, logvar)
    record = torch.is_grad_enabled()
    gradients = [record and t is not None and t.requires_grad for t in inputs]
    # an empty batch (B = 0) has no rows to scale: any non-zero scale does (its mean is NaN, as torch's)
    per_sample = -1.0 / max(_first(inputs).shape[0], 1) if reduction == "mean" else -1.0
    # kl's weight in the ELBO is -beta; with beta = 0 the rows keep a non-zero scale to be rescaled
    kl_scale = -beta * per_sample if beta > 0 else -per_sample
    return elbo_forward(*inputs, likelihood, fixed_logvar, beta, gradients, per_sample, kl_scale)[:3]


@torch.library.custom_op("genfast::logmeanexp_rows", mutates_args=())
def logmeanexp_rows(a: Tensor) -> Tensor:
    """log((1/M) sum_j exp(a[b, j])) per row of a (B, M) tensor (CPU or CUDA; streaming kernel)."""
    return _ops.logmeanexp(a.contiguous(), -1)


@logmeanexp_rows.register_fake
def _logmeanexp_rows_fake(a):
    return a.new_empty(a.shape[:1])


def _setup_logmeanexp_rows(ctx, inputs, output):
    ctx.save_for_backward(inputs[0])


def _backward_logmeanexp_rows(ctx, grad):
    (a,) = ctx.saved_tensors
    # d/da_j log mean exp(a) = exp(a_j) / sum_i exp(a_i) (softmax(a), the normalised weights),
    # shifted by the row's max, not by the result: in float32 a result near 1e14 is rounded by
    # more than log M, and exp(a_j - result) / M was off by up to a factor M. A row that is
    # all -inf has no weight anywhere: zero gradient, not exp(-inf + inf) = NaN.
    top = a.amax(dim=1, keepdim=True)
    finite = torch.isfinite(top)
    shifted = torch.exp(a - torch.where(finite, top, 0.0))
    return grad[:, None] * torch.where(finite, shifted / shifted.sum(dim=1, keepdim=True), 0.0)


logmeanexp_rows.register_autograd(_backward_logmeanexp_rows, setup_context=_setup_logmeanexp_rows)


# --------------------------------------------------------------------------- public functions
def logmeanexp(a: Tensor, dim: int = -1) -> Tensor:
    """log((1/M) sum_i exp(a_i)) along dim (M = a.shape[dim]), differentiable: the gradient is
    the normalised weights exp(a_i) / sum_j exp(a_j) (over M) times the upstream gradient; a
    slice that is all -inf gives -inf and a zero gradient. CPU or CUDA tensors, float32/float64."""
    if not isinstance(a, Tensor):
        raise TypeError(f"a must be a torch.Tensor, got {type(a).__name__}")
    if isinstance(dim, bool) or not isinstance(dim, int) or not -a.ndim <= dim < a.ndim:
        raise ValueError(f"dim must be an int in [-{a.ndim}, {a.ndim}) for a with shape {tuple(a.shape)}, got {dim!r}")
    moved = a.movedim(dim, -1)
    # rows given explicitly: reshape(-1, 0) of an empty slice is ambiguous to torch
    rows = moved.reshape(math.prod(moved.shape[:-1]), moved.shape[-1])
    return logmeanexp_rows(rows).reshape(moved.shape[:-1])



def elbo(x: Tensor, decoder_out: Tensor, mu: Tensor, logvar: Tensor, likelihood: str = "bernoulli",
         beta: float = 1.0, reduction: str = "mean", *, decoder_logvar: Tensor | None = None,
         variance: float | None = None, return_terms: bool = False):
    """The VAE evidence lower bound, fused and differentiable.

    ELBO_b = sum_d log p(x_bd | decoder_out_bd) - beta KL(N(mu_b, exp(logvar_b)) || N(0, I))

    Parameters
    ----------
    x : (B, D) or (B, *features) data; features are flattened (for images, (B, C, H, W) works)
    decoder_out : shaped as x: Bernoulli logits, or Gaussian means
    mu, logvar : (B, L) the encoder's q(z | x)
    likelihood : 'bernoulli' (x in [0, 1]; stable softplus form, finite for any logit) or
        'gaussian' (per-element ``decoder_logvar`` shaped as x, or one fixed ``variance``;
        default variance 1)
    beta : weight of the KL term (>= 0; beta-VAE, KL annealing)
    reduction : 'mean' (over the batch; default), 'sum' or 'none' (per sample, shape (B,))
    return_terms : return (elbo, rec, kl), each reduced the same way, instead of the ELBO alone

    Maximise it: ``loss = -elbo(...)``. Gradients flow to every input that requires grad.
    All tensors must share device and dtype (float32/float64; on CUDA also float16/bfloat16).
    """
    fixed_logvar = _ops.gaussian_fixed_logvar(likelihood, decoder_logvar, variance)
    beta = _ops.check_beta(beta)
    _check_reduction(reduction)
    x2, out2, logvar2 = _data(x, decoder_out, decoder_logvar, "decoder_out")
    mu, logvar = _latent(mu, logvar, "x", x)
    terms = _terms(x2, out2, logvar2, mu, logvar, likelihood, fixed_logvar, beta, reduction)
    return tuple(_reduce(t, reduction) for t in terms) if return_terms else _reduce(terms[0], reduction)


def kl_normal_std(mu: Tensor, logvar: Tensor, reduction: str = "mean") -> Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)) per sample = 1/2 sum_l (mu^2 + exp(logvar) - logvar - 1),
    reduced over the batch ('mean', 'sum' or 'none' for shape (B,)). mu, logvar: (B, L)."""
    _check_reduction(reduction)
    mu, logvar = _latent(mu, logvar)
    return _reduce(_terms(None, None, None, mu, logvar, "bernoulli", 0.0, 1.0, reduction)[2], reduction)


def bernoulli_log_likelihood(x: Tensor, logits: Tensor, reduction: str = "mean") -> Tensor:
    """sum_d log Bernoulli(x_bd | sigmoid(logits_bd)) = sum_d x l - softplus(l) per sample, in
    the stable softplus form, reduced over the batch. x, logits: (B, D) or (B, *features)."""
    _check_reduction(reduction)
    x2, logits2, _ = _data(x, logits, None, "logits")
    return _reduce(_terms(x2, logits2, None, None, None, "bernoulli", 0.0, 1.0, reduction)[1], reduction)


def gaussian_log_likelihood(x: Tensor, mean: Tensor, logvar: Tensor | None = None, *,
                            variance: float | None = None, reduction: str = "mean") -> Tensor:
    """sum_d log N(x_bd | mean_bd, exp(logvar_bd)) per sample, reduced over the batch; with a
    per-element ``logvar`` shaped as x, or one fixed ``variance`` (default 1)."""
    _check_reduction(reduction)
    fixed_logvar = _ops.gaussian_fixed_logvar("gaussian", logvar, variance)
    x2, mean2, logvar2 = _data(x, mean, logvar, "mean", "logvar")
    return _reduce(_terms(x2, mean2, logvar2, None, None, "gaussian", fixed_logvar, 1.0, reduction)[1],
                   reduction)
