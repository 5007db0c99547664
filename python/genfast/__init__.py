"""genfast: fast, exact kernels for the fundamental generative models on CPU and CUDA.

- ``genfast.KMeans``: scikit-learn compatible k-means (Lloyd) on CPU or CUDA.
- ``genfast.GaussianMixture``: scikit-learn compatible Gaussian mixture fit by EM.
- ``genfast.Gaussian``: the maximum-likelihood multivariate Gaussian.
- ``genfast.ops``: functional kernels on numpy arrays and torch tensors.
- ``genfast.reference``: the pure-numpy float64 oracle the kernels are tested against.
- ``genfast.show_config()``: what was built and what this process can use.
- ``genfast.dask``: KMeans and GaussianMixture on dask arrays (needs ``genfast[dask]``).
"""

from . import ops, reference
from ._config import config, show_config
from ._kmeans import KMeans
from ._mixture import Gaussian, GaussianMixture

__version__ = config()["version"]

__all__ = ["KMeans", "GaussianMixture", "Gaussian", "ops", "reference", "show_config", "config", "__version__"]


def __getattr__(name):
    # genfast.dask imports dask, an optional extra: loaded on first use, so that
    # `import genfast` works without it.
    if name == "dask":
        import importlib

        return importlib.import_module(".dask", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
