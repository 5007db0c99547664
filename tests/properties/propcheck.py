"""Strategies and the oracle for genfast's property-based tests (hypothesis).

An input is an `Arg`: float64 values (the numbers the caller means), drawn with a value
pattern (ordinary, tiny/huge scales, all-equal or duplicated rows, a few special values
NaN/inf/-inf/1e38/3e38/denormals/-0 placed by hypothesis), then stored in a dtype (float16/
32/64, integers, bool, object, complex; torch also bfloat16) and a memory layout (C, Fortran,
negative strides, zero strides, a slice of a larger buffer; for torch non-contiguous views:
transposed, sliced, expanded). `Arg.value` is what the op receives.

The oracle, `outcome(...)`, runs one call and sorts it into exactly one of:
- rejected: a ValueError/TypeError whose message names one of the arguments the test allows
  to be blamed (the test then checks that the input really was invalid where it knows);
- returned: the outputs, for the test to compare with genfast.reference.
Any other exception fails the test; so does an input modified by the call (every array
argument is compared with a copy taken before the call). An interpreter crash is caught one
level up: tests/test_properties.py runs these files in a subprocess, and `record_example`
writes each example to a trace file first, so the crashing example is reported.
"""

from __future__ import annotations

import collections
import math
import os
import re
import sys
from dataclasses import dataclass

import numpy as np
from hypothesis import strategies as st

import torch

# -------------------------------------------------------------------------- profile, counting, crash trace
#: hypothesis settings profile (registered in conftest.py): "ci" or "thorough"
PROFILE = os.environ.get("GENFAST_HYPOTHESIS_PROFILE", "ci")


def examples(n: int):
    """settings(max_examples=...) for a test with n examples under "ci" (20 n under "thorough")."""
    from hypothesis import settings

    return settings(max_examples=n * (20 if PROFILE == "thorough" else 1))


#: examples run per test (node name -> count), written out by conftest.py at the end
EXAMPLE_COUNTS: collections.Counter = collections.Counter()
_TRACE_PATH = os.environ.get("GENFAST_PROPS_TRACE")


def record_example(test_name: str, example: dict) -> None:
    """Count one example of `test_name` and, when a trace file is set, overwrite it with the
    example so that a crash of the interpreter leaves the crashing example behind."""
    EXAMPLE_COUNTS[test_name] += 1
    if _TRACE_PATH:
        with np.printoptions(threshold=sys.maxsize, precision=17, floatmode="unique"):
            text = f"{test_name}\n" + "\n".join(f"  {k} = {v!r}" for k, v in example.items())
        with open(_TRACE_PATH, "w") as f:
            f.write(text)
            f.flush()


def counted(fn):
    """Decorator for a test under @given: every example is counted and traced (see above)."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        record_example(fn.__name__, kwargs)
        return fn(*args, **kwargs)

    return wrapper


# -------------------------------------------------------------------------- dtypes and layouts
NUMPY_DTYPES = ("float32", "float64", "float16", "int32", "int64", "uint8", "bool", "object", "complex128")
TORCH_DTYPES = ("float32", "float64", "float16", "bfloat16", "int32", "int64", "uint8", "bool", "complex64")
#: dtypes weighted so that most examples reach the kernels: float32/float64 thrice as likely
_WEIGHTED = {"numpy": ("float32",) * 3 + ("float64",) * 3 + NUMPY_DTYPES[2:],
             "torch": ("float32",) * 3 + ("float64",) * 3 + TORCH_DTYPES[2:]}
NUMPY_LAYOUTS = ("C", "C", "F", "negative", "zero", "sliced")
TORCH_LAYOUTS = ("C", "C", "transposed", "sliced", "expanded")
#: special values placed into arrays (denormals of both float types, float32's largest)
SPECIALS = (math.nan, math.inf, -math.inf, 1e38, -1e38, 3e38, 1e-40, 5e-324, -0.0, 1e19)
#: value patterns: ordinary, scaled, all rows equal, duplicated rows, a large offset
PATTERNS = ("normal", "normal", "tiny", "huge", "equal", "duplicated", "offset", "integers")


def _torch_dtype(name):
    return getattr(torch, name)


@dataclass
class Arg:
    """One array argument: the values meant (float64), the dtype and layout it is stored in,
    and the object handed to the op (`value`)."""

    values: np.ndarray  # float64 values before the dtype cast
    dtype: str
    layout: str
    kind: str  # "numpy" or "torch"
    value: object = None

    def __post_init__(self):
        self.values = np.asarray(self.values, dtype=np.float64)
        self.value = build(self.values, self.dtype, self.layout, self.kind)

    def __repr__(self):
        return (f"Arg(kind={self.kind!r}, dtype={self.dtype!r}, layout={self.layout!r}, "
                f"values=np.{self.values!r})")

    @property
    def stored(self) -> np.ndarray:
        """The values as the caller's dtype holds them, as numpy (object/complex kept)."""
        v = self.value
        if isinstance(v, torch.Tensor):
            return (v.float() if v.dtype == torch.bfloat16 else v).numpy().copy()
        return np.array(v, copy=True)


def cast(values: np.ndarray, dtype: str) -> np.ndarray:
    """values in a numpy dtype (bool: nonzero; integers: rounded and clipped to the range;
    bfloat16 goes through torch; object: Python floats; complex: imaginary part 0)."""
    if dtype == "bool":
        return np.asarray(np.nan_to_num(values) != 0)
    if dtype in ("int32", "int64", "uint8"):
        info = np.iinfo(dtype)
        with np.errstate(invalid="ignore"):
            return np.asarray(np.clip(np.nan_to_num(np.round(values)), info.min, info.max // 2)).astype(dtype)
    if dtype == "object":
        out = np.empty(values.shape, dtype=object)
        out.ravel()[:] = [float(v) for v in values.ravel()]
        return out
    with np.errstate(over="ignore"):
        return np.asarray(values.astype(dtype))


def build(values, dtype, layout, kind):
    """The array (numpy) or tensor (torch CPU) holding `values` in `dtype` and `layout`."""
    if kind == "torch":
        if dtype == "bfloat16":
            base = torch.from_numpy(np.asarray(values, dtype=np.float32)).to(torch.bfloat16)
        elif dtype == "complex64":
            base = torch.from_numpy(np.asarray(values, dtype=np.complex64))
        else:
            base = torch.from_numpy(cast(values, dtype).copy())
        if layout == "transposed" and base.ndim >= 2:
            return base.transpose(-1, -2).contiguous().transpose(-1, -2)
        if layout == "sliced" and base.ndim >= 1:
            big = base.new_zeros(base.shape[:-1] + (2 * base.shape[-1],))
            big[..., ::2] = base
            return big[..., ::2]
        if layout == "expanded" and base.ndim >= 1 and base.shape[0] >= 1:
            return base[:1].expand(base.shape)
        return base
    arr = cast(values, dtype)
    if arr.ndim == 0:
        return arr  # no layout to vary (np.asfortranarray would make it 1-d)
    if layout == "F":
        return np.asfortranarray(arr)
    if layout == "negative" and arr.ndim >= 1:
        return arr[::-1].copy()[::-1]
    if layout == "zero" and arr.ndim >= 1 and arr.shape[0] >= 1:
        return np.broadcast_to(arr[:1], arr.shape)  # read-only, stride 0 along axis 0
    if layout == "sliced" and arr.ndim >= 1:
        big = np.zeros(arr.shape[:-1] + (2 * arr.shape[-1],), dtype=arr.dtype)
        big[..., ::2] = arr
        return big[..., ::2]
    return arr


@st.composite
def float_values(draw, shape, *, patterns=PATTERNS, specials=SPECIALS, low=None, high=None):
    """float64 values of `shape` in one of the value patterns (clipped to [low, high]), with up
    to three special values (from `specials`) at positions hypothesis picks, so that shrinking
    can remove them."""
    shape = tuple(shape)
    pattern = draw(st.sampled_from(patterns))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    scale = {"tiny": 1e-30, "huge": 1e15}.get(pattern, 1.0)
    v = np.asarray(rng.standard_normal(shape) * scale, dtype=np.float64)
    if pattern == "integers":
        v = np.round(v * 3)
    if pattern == "offset":
        v = v * 1e-2 + 1e4
    if v.ndim >= 1 and v.shape[0] > 1 and pattern in ("equal", "duplicated"):
        rows = v[:1] if pattern == "equal" else v[: max(1, v.shape[0] // 3)]
        v = rows[rng.integers(0, rows.shape[0], size=v.shape[0])] if pattern == "duplicated" else \
            np.broadcast_to(rows, v.shape).copy()
    if low is not None or high is not None:
        v = np.asarray(np.clip(v, low, high))
    if specials and v.size and draw(st.integers(0, 3)) == 0:  # a quarter of the arrays get some
        for _ in range(draw(st.integers(1, 3))):
            pos = draw(st.integers(0, v.size - 1))
            v.reshape(-1)[pos] = draw(st.sampled_from(specials))
    return v


@st.composite
def args(draw, shape, kind, *, dtypes=None, layouts=None, **value_options):
    """An Arg of `shape` for an array argument (dtype, layout and values drawn)."""
    dtype = draw(st.sampled_from(dtypes or _WEIGHTED[kind]))
    layout = draw(st.sampled_from(layouts or (NUMPY_LAYOUTS if kind == "numpy" else TORCH_LAYOUTS)))
    values = draw(float_values(shape, **value_options))
    if layout in ("zero", "expanded") and values.ndim >= 1 and values.shape[0] >= 1:
        values = np.broadcast_to(values[:1], values.shape).copy()  # what such a view holds
    return Arg(values, dtype, layout, kind)


kinds = st.sampled_from(("numpy", "torch"))

#: small sizes, with 0 and 1 likely and a few odd ones
def sizes(low=0, high=9):
    return st.one_of(st.sampled_from([s for s in (0, 1, 1, 2, 3, 5, 7) if low <= s <= high]),
                     st.integers(low, high))


# -------------------------------------------------------------------------- the model of validation
class Invalid(Exception):
    """What the test's own model of the documented rules expects: a ValueError/TypeError
    naming one of `names`."""

    def __init__(self, *names):
        super().__init__(names)
        self.names = names


def computed_dtype(a: Arg, like: str | None = None) -> str:
    """The float dtype an op computes an argument in (genfast's documented conversion):
    float32/float64 kept, float16/bfloat16 -> float32, integers and bool -> float64; a
    second operand takes the first one's (`like`). complex/object: Invalid (TypeError)."""
    if a.dtype in ("object", "complex128", "complex64"):
        raise Invalid("type")
    if like is not None:
        return like
    if a.dtype in ("float32", "float64"):
        return a.dtype
    return "float32" if a.dtype in ("float16", "bfloat16") else "float64"


def effective(a: Arg, name: str, like: str | None = None, *, finite=True, allow_neg_inf=False):
    """(values as the op sees them, as float64; their dtype): the stored values cast to the
    computing dtype. Raises Invalid(name) where the documented rules reject them: a complex
    or object dtype, NaN/inf (after the cast) when `finite` (-inf allowed with allow_neg_inf)."""
    try:
        dtype = computed_dtype(a, like)
    except Invalid:
        raise Invalid(name) from None
    stored = a.stored
    with np.errstate(over="ignore", invalid="ignore"):
        v = stored.astype(dtype).astype(np.float64)
    if finite:
        bad = np.isnan(v) | (v == np.inf) | ((v == -np.inf) & (not allow_neg_inf))
        if bad.any():
            raise Invalid(name)
    return v, dtype


# -------------------------------------------------------------------------- the oracle
def _snapshot(x):
    if isinstance(x, torch.Tensor):
        return ("torch", x.dtype, tuple(x.shape), x.stride(), x.detach().clone())
    if isinstance(x, np.ndarray):
        return ("numpy", x.dtype, x.shape, x.strides, np.array(x, copy=True))
    return None


def _unchanged(before, x) -> bool:
    """x still has the dtype, shape, strides and bytes it had when `before` was taken."""
    kind, dtype, shape, strides, copy = before
    if kind == "torch":
        def as_bytes(t):  # a fresh dense copy, viewed as its bytes
            return torch.empty(t.numel(), dtype=t.dtype).copy_(t.detach().reshape(-1)).view(torch.uint8)

        return (x.dtype == dtype and tuple(x.shape) == shape and x.stride() == strides
                and torch.equal(as_bytes(x), as_bytes(copy)))
    if x.dtype != dtype or x.shape != shape or x.strides != strides:
        return False
    if dtype == object:
        return [repr(v) for v in x.ravel().tolist()] == [repr(v) for v in copy.ravel().tolist()]
    return np.ascontiguousarray(x).tobytes() == np.ascontiguousarray(copy).tobytes()


def names_any(msg: str, names) -> list:
    """The names among `names` that `msg` contains as a word."""
    return [n for n in names if re.search(rf"(?<![A-Za-z_]){re.escape(n)}(?![A-Za-z_])", msg)]


class Expect:
    """The test's model of one call: the arguments it finds invalid by genfast's documented
    rules (dtype, NaN/inf, shapes, ranges). `effective` converts an Arg as the op would."""

    def __init__(self):
        self.bad: list[str] = []

    def effective(self, a: Arg, name: str, like=None, **options):
        """effective(a, name, like, **options), or (None, like) after noting `name` as invalid."""
        try:
            return effective(a, name, like, **options)
        except Invalid:
            self.bad.append(name)
            return None, like

    def invalid(self, *names) -> None:
        self.bad.extend(names)

    @property
    def ok(self) -> bool:
        return not self.bad


def outcome(call, arrays: dict, *, expect: Expect, may_blame=(), numerical_failure=None):
    """Run `call()` once. Returns ("returned", result) or ("rejected", exception).

    arrays : {name: object passed to the op}; each must be unchanged after the call.
    expect : the model's verdict. Valid (no invalid argument): the call must return. Invalid:
        the call must raise ValueError or TypeError whose message names one of the invalid
        arguments (or one of `may_blame`, names the op may give for the same fault).
    numerical_failure : a name that a documented numerical failure of valid input names (the
        mixtures' "not positive definite ... use a larger reg_covar"): such a ValueError is
        accepted for valid input too.
    Any other exception propagates and fails the test.
    """
    before = {n: _snapshot(a) for n, a in arrays.items()}
    try:
        result = ("returned", call())
    except (ValueError, TypeError) as exc:
        result = ("rejected", exc)
    for n, a in arrays.items():
        if before[n] is not None:
            assert _unchanged(before[n], a), f"the call modified its input {n}"
    from hypothesis import event

    event(result[0])  # shown by --hypothesis-show-statistics: how many reached the kernels
    if result[0] == "rejected":
        exc = result[1]
        documented = (numerical_failure is not None and isinstance(exc, ValueError)
                      and names_any(str(exc), [numerical_failure]))
        assert documented or not expect.ok, f"valid input rejected: {type(exc).__name__}: {exc}"
        allowed = list(dict.fromkeys([*expect.bad, *may_blame]))
        assert names_any(str(exc), allowed), (
            f"{type(exc).__name__} names none of the invalid arguments {allowed}: {str(exc)!r}")
    else:
        assert expect.ok, f"invalid input accepted: expected an error naming one of {expect.bad}"
    return result


# -------------------------------------------------------------------------- comparisons
def to_np64(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().double().numpy()
    return np.asarray(x, dtype=np.float64)


def check_output(out, *, kind, dtype, shape, what):
    """out has the input's kind (numpy / torch CPU), `dtype` (name) and `shape`."""
    if kind == "torch":
        assert isinstance(out, torch.Tensor), f"{what}: expected a torch tensor, got {type(out).__name__}"
        assert out.device.type == "cpu", f"{what}: on {out.device}"
        assert out.dtype == getattr(torch, dtype), f"{what}: dtype {out.dtype}, expected {dtype}"
    else:
        assert isinstance(out, (np.ndarray, np.generic)), f"{what}: expected numpy, got {type(out).__name__}"
        assert np.asarray(out).dtype == np.dtype(dtype), f"{what}: dtype {np.asarray(out).dtype}, expected {dtype}"
    assert tuple(out.shape) == tuple(shape), f"{what}: shape {tuple(out.shape)}, expected {tuple(shape)}"


#: relative tolerance against the float64 reference, per output dtype (DESIGN.md: float32
#: within 1e-4 relative; float64 to about a million ulps, for cancellation in sums)
RTOL = {"float32": 1e-4, "float64": 1e-9}
EPS = {"float32": float(np.finfo(np.float32).eps), "float64": float(np.finfo(np.float64).eps)}


def rounded(ref: np.ndarray, dtype: str) -> np.ndarray:
    """The float64 reference in the output's precision semantics: rounded to `dtype`, so a
    value beyond its range is +-inf (IEEE overflow), as float64 again."""
    with np.errstate(over="ignore"):
        return np.asarray(ref, dtype=np.float64).astype(dtype).astype(np.float64)


def assert_close(out, ref, *, dtype, what, scale=None, rtol=None, atol=0.0, neg_inf_ok=None, inf_ok=None):
    """Every element of out equals the reference rounded to dtype: infinities exactly (sign
    included), NaN only where the reference is NaN, finite values within
    rtol * max(|ref|, scale) + atol (scale: the size of the terms summed, for cancellation).
    neg_inf_ok: a mask of elements where -inf is accepted as well; inf_ok: where an infinity
    of the reference's sign is (an intermediate term overflowed the dtype)."""
    out = to_np64(out)
    ref = np.asarray(ref, dtype=np.float64)
    exp = rounded(ref, dtype)
    if neg_inf_ok is not None:
        accept = np.broadcast_to(neg_inf_ok, exp.shape) & (out == -np.inf)
        exp = np.where(accept, -np.inf, exp)
    if inf_ok is not None:
        accept = np.broadcast_to(inf_ok, exp.shape) & np.isinf(out) & (np.sign(out) == np.sign(exp))
        exp = np.where(accept, out, exp)
    rtol = RTOL[dtype] if rtol is None else rtol
    assert out.shape == exp.shape, f"{what}: shape {out.shape} vs reference {exp.shape}"
    nan_bad = np.isnan(out) & ~np.isnan(exp)
    assert not nan_bad.any(), f"{what}: NaN where the reference is {exp[nan_bad][:5]} (first at {np.argwhere(nan_bad)[0].tolist()})"
    inf = np.isinf(exp)
    assert np.array_equal(out[inf], exp[inf]), f"{what}: expected {exp[inf][:5]}, got {out[inf][:5]} where the reference overflows"
    fin = np.isfinite(exp)
    s = np.abs(exp) if scale is None else np.maximum(np.abs(exp), np.broadcast_to(scale, exp.shape))
    tiny = float(np.finfo(dtype).tiny) * 4  # denormal results: absolute tolerance
    with np.errstate(invalid="ignore"):
        err = np.abs(out - exp)
    tol = rtol * s + atol + tiny
    bad = fin & ~(err <= tol)
    if bad.any():
        i = tuple(np.argwhere(bad)[0])
        raise AssertionError(f"{what}: {bad.sum()} elements differ from the reference; first at {list(i)}: "
                             f"got {out[i]!r}, reference {exp[i]!r} (tolerance {np.broadcast_to(tol, exp.shape)[i]:.3g})")

