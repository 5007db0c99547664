"""Helpers shared by genfast's estimators: device choice, validation of X (numpy arrays,
torch CPU tensors as zero-copy views, CUDA tensors checked on their device), and returning
results of the same kind as the input."""

from __future__ import annotations

import functools
import re

import numpy as np
from sklearn.utils.validation import validate_data

from . import _backend as be

__all__ = ["resolve_device", "validate_X", "same_kind", "restores_state_on_error"]


def resolve_device(device, X):
    """'cpu' or 'cuda': 'auto' runs where X lives (a CUDA tensor on the GPU, anything else on
    the CPU); 'cuda' needs a usable CUDA device (genfast._backend.cuda_status())."""
    on_cuda = be.is_torch(X) and X.device.type == "cuda"
    if device == "cpu":
        if on_cuda:
            raise ValueError("device='cpu' but X is a CUDA tensor; move it to the CPU or use device='cuda'")
        return "cpu"
    if device == "cuda" or on_cuda:
        usable, why = be.cuda_status()
        if not usable:
            raise ValueError(f"device={device!r} needs a usable CUDA device: {why}")
        return "cuda"
    return "cpu"


def validate_X(est, X, *, reset, copy=False, ensure_min_samples=1):
    """X as a C-contiguous float32/float64 numpy array, or as a float CUDA tensor (checked on
    the device). torch CPU tensors are validated as zero-copy numpy views."""
    if be.is_torch(X) and X.device.type == "cuda":
        if X.ndim != 2:
            raise ValueError(f"X must be 2-d (n_samples, n_features), got shape {tuple(X.shape)}")
        if X.shape[0] < ensure_min_samples:
            raise ValueError(f"X: found array with {X.shape[0]} sample(s) (shape={tuple(X.shape)}) while a "
                             f"minimum of {ensure_min_samples} is required.")
        if X.shape[1] < 1:
            raise ValueError(f"X: found array with 0 feature(s) (shape={tuple(X.shape)}) while a minimum of 1 is required.")
        if reset:
            est.n_features_in_ = X.shape[1]
        elif X.shape[1] != est.n_features_in_:
            raise ValueError(f"X has {X.shape[1]} features, but {type(est).__name__} is expecting "
                             f"{est.n_features_in_} features as input.")
        return be.as_float("X", X)
    if be.is_torch(X):
        X = X.detach()
        if X.dtype == be._torch().bfloat16:  # numpy has no bfloat16: float64, as for float16 below
            X = X.double()
        X = X.numpy()
    try:
        return validate_data(est, X, reset=reset, dtype=[np.float64, np.float32], order="C",
                             copy=copy, accept_sparse=False, ensure_min_samples=ensure_min_samples)
    except (TypeError, ValueError) as exc:
        if re.search(r"\bX\b", str(exc)):
            raise
        raise type(exc)(f"X: {exc}") from exc


def same_kind(result, X_in):
    """torch CPU input gives torch CPU output (X was validated as a numpy view)."""
    if be.is_torch(X_in) and not be.is_torch(result):
        import torch

        return torch.from_numpy(np.ascontiguousarray(result))
    return result


def restores_state_on_error(fit):
    """Decorator for a fit method: if it raises (a bad input, or KeyboardInterrupt from a
    Ctrl-C during a kernel), the estimator's attributes are put back as they were before the
    call. An unfitted estimator stays unfitted, a fitted one keeps its previous fit, never a
    mix of the two (validation sets n_features_in_ before the loop, for example)."""
    @functools.wraps(fit)
    def fit_or_restore(self, *args, **kwargs):
        before = dict(vars(self))
        try:
            return fit(self, *args, **kwargs)
        except BaseException:
            self.__dict__ = before  # one assignment: a second Ctrl-C cannot land halfway
            raise
    return fit_or_restore
