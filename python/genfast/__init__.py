"""genfast: fast, exact kernels for the fundamental generative models on CPU and CUDA.

- ``genfast.KMeans``: scikit-learn compatible k-means (Lloyd) on CPU or CUDA.
- ``genfast.GaussianMixture``: scikit-learn compatible Gaussian mixture fit by EM.
- ``genfast.Gaussian``: the maximum-likelihood multivariate Gaussian.
- ``genfast.ops``: functional kernels on numpy arrays and torch tensors.
- ``genfast.torch``: the fused VAE ELBO as differentiable torch custom ops (imports torch).
- ``genfast.VAE``: a variational autoencoder (torch nn.Module) trained on those ops.
- ``genfast.reference``: the pure-numpy float64 oracle the kernels are tested against.
- ``genfast.show_config()``: what was built and what this process can use.
- ``genfast.dask``: KMeans and GaussianMixture on dask arrays (needs ``genfast[dask]``).

Threads: the CPU kernels run on OpenMP (``OMP_NUM_THREADS``; ``show_config()`` prints the
count) and release the GIL, so Python threads may call them concurrently. Results do not
depend on the thread count. ``threadpoolctl.threadpool_limits`` limits them; like every OpenMP
setting the limit holds for the Python thread that sets it. The kernels never call BLAS and
the estimators call numpy (BLAS) only between kernel calls, so the two pools never compute at once.
"""

from . import mc, ops, reference
from ._config import config, show_config
from ._kmeans import KMeans
from ._mixture import Gaussian, GaussianMixture

__version__ = config()["version"]

__all__ = ["KMeans", "GaussianMixture", "Gaussian", "mc", "ops", "reference", "show_config", "config", "__version__"]


def __getattr__(name):
    """genfast.torch and genfast.VAE need torch, and genfast.dask needs dask (an optional
    extra), so they are imported on first use: `import genfast` never imports torch or dask
    (and they stay out of __all__, so `from genfast import *` does not either)."""
    if name in ("torch", "dask"):
        import importlib

        return importlib.import_module("." + name, __name__)
    if name == "VAE":
        from ._vae import VAE

        return VAE
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
