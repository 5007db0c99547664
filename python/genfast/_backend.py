"""Backend dispatch and input validation shared by every op.

numpy array        -> genfast._core (C++/OpenMP)
torch CPU tensor   -> genfast._core on a zero-copy numpy view
torch CUDA tensor  -> genfast._cuda with the data pointer and the tensor's current stream;
                      outputs are allocated by torch so its caching allocator owns them.

Validation happens here, once, with messages that name the argument. Inputs are never
modified: a contiguous copy is made when (and only when) the layout or dtype needs it.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import numpy as np

from . import _core

try:  # built only when a CUDA compiler was found at build time
    from . import _cuda
except ImportError:  # pragma: no cover - depends on the build
    _cuda = None

FLOAT_DTYPES = ("float32", "float64")


def _torch():
    """The torch module if the caller already imported it (genfast never imports it first)."""
    return sys.modules.get("torch")


def is_torch(x) -> bool:
    torch = _torch()
    return torch is not None and isinstance(x, torch.Tensor)


@dataclass(frozen=True)
class Placement:
    """Where an op's inputs live, and so which backend runs it and what it returns."""

    kind: str  # "numpy" or "torch"
    device: object = None  # torch.device for torch inputs

    @property
    def cuda(self) -> bool:
        return self.kind == "torch" and self.device.type == "cuda"


def placement_of(name: str, x) -> Placement:
    if is_torch(x):
        if x.device.type not in ("cpu", "cuda"):
            raise ValueError(f"{name} is on device {x.device}; genfast supports cpu and cuda tensors")
        return Placement("torch", x.device)
    return Placement("numpy")


def same_placement(ref_name: str, ref: Placement, name: str, x) -> None:
    """Raise unless x lives where ref does (numpy with numpy, same torch device)."""
    p = placement_of(name, x)
    if p != ref:
        where = lambda q: "a numpy array" if q.kind == "numpy" else f"a torch tensor on {q.device}"
        raise ValueError(f"{name} is {where(p)} but {ref_name} is {where(ref)}; pass both the same way")


def dtype_name(x) -> str:
    return str(x.dtype).replace("torch.", "")


def as_float(name: str, x, *, dtype: str | None = None, check_finite: bool = True):
    """x as a C-contiguous float32/float64 array or tensor (a copy only when needed).

    Integer and bool inputs become float64 and float16/bfloat16 become float32, as in
    scikit-learn; complex, object and string inputs raise TypeError. With `dtype`, the
    result has that dtype (used to match a second operand to the first).
    """
    if is_torch(x):
        torch = _torch()
        if x.is_complex():
            raise TypeError(f"{name} must be real-valued, got a complex tensor ({x.dtype})")
        if dtype is None:
            if x.dtype in (torch.float32, torch.float64):
                dtype = dtype_name(x)
            elif x.is_floating_point():
                dtype = "float32"
            else:
                dtype = "float64"
        x = x.detach().to(getattr(torch, dtype)).contiguous()
        if check_finite and x.numel() and not bool(torch.isfinite(x).all()):
            raise ValueError(f"{name} contains NaN or infinity")
        return x
    arr = np.asarray(x)  # no copy for an ndarray
    kind = arr.dtype.kind
    if kind not in "biuf":
        raise TypeError(
            f"{name} must be a real numeric array (float32 or float64), got dtype {arr.dtype}"
        )
    if dtype is None:
        dtype = arr.dtype.name if arr.dtype.name in FLOAT_DTYPES else ("float32" if kind == "f" else "float64")
    arr = np.ascontiguousarray(arr, dtype=dtype)
    if check_finite and arr.size and not np.isfinite(arr).all():
        raise ValueError(f"{name} contains NaN or infinity")
    return arr


def as_labels(name: str, labels):
    """labels as a C-contiguous int64 array/tensor on the same backend as `like`."""
    if is_torch(labels):
        torch = _torch()
        if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
            raise TypeError(f"{name} must hold integers, got {labels.dtype}")
        return labels.detach().to(torch.int64).contiguous()
    arr = np.asarray(labels)
    if arr.dtype.kind not in "iu":
        raise TypeError(f"{name} must hold integers, got dtype {arr.dtype}")
    return np.ascontiguousarray(arr, dtype=np.int64)


def empty(place: Placement, shape, dtype: str):
    """Uninitialised output on the same backend/device as the inputs."""
    if place.kind == "torch":
        torch = _torch()
        return torch.empty(shape, dtype=getattr(torch, dtype), device=place.device)
    return np.empty(shape, dtype=dtype)


def from_numpy(a, place: Placement):
    """A numpy array on the inputs' backend and device (torch: a tensor holding a copy)."""
    if place.kind == "torch":
        return _torch().as_tensor(a, device=place.device)
    return a


def to_numpy(x):
    """A numpy array of x's values (copied to the host for CUDA tensors)."""
    return x.detach().cpu().numpy() if is_torch(x) else np.asarray(x)


def host_view(x):
    """A numpy view (no copy) of a contiguous numpy array or CPU tensor, for _core."""
    return x.numpy() if is_torch(x) else x


def require_cuda():
    """The _cuda module, or a RuntimeError saying why CUDA tensors cannot be used."""
    if _cuda is None:
        raise RuntimeError(
            "genfast was built without CUDA support (no CUDA compiler at build time); "
            "rebuild with nvcc on PATH or GENFAST_CUDA=ON to use CUDA tensors"
        )
    return _cuda


def cuda_launch_args(x):
    """(device index, current stream handle) for a CUDA tensor: kernels run on that stream."""
    torch = _torch()
    return x.device.index, torch.cuda.current_stream(x.device).cuda_stream


def cuda_workspace(nbytes: int, like):
    """Uninitialised device scratch of nbytes bytes on like's CUDA device, from torch's caching
    allocator (whose blocks are 512-byte aligned, as the kernels require)."""
    torch = _torch()
    return torch.empty(int(nbytes), dtype=torch.uint8, device=like.device)


def cuda_status() -> tuple[bool, str]:
    """Whether a CUDA device is usable by genfast, and why not if it is not."""
    if _cuda is None:
        return False, "the _cuda module was not built (no CUDA compiler at build time)"
    count, message = _cuda.device_status()
    return count > 0, message
