"""Pickling and cloning every estimator (issue 7): unfitted and fitted estimators survive a
pickle round trip with every attribute bitwise equal, sklearn.base.clone gives an unfitted
copy with the same parameters, and a fitted model gives bitwise the same predictions and
scores after the round trip as before it."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from sklearn.base import clone

import genfast

DTYPES = ["float64", "float32"]


def _assert_same_attributes(a, b, context):
    """Every attribute of a and b equal: arrays bitwise (dtype included), the rest with ==."""
    assert type(a) is type(b), context
    va, vb = vars(a), vars(b)
    assert sorted(va) == sorted(vb), f"attributes differ; {context}"
    for name, x in va.items():
        y = vb[name]
        if hasattr(x, "__dask_graph__"):  # a lazy result of genfast.dask: compare its values
            x, y = np.asarray(x.compute()), np.asarray(y.compute())
        if isinstance(x, np.ndarray):
            assert isinstance(y, np.ndarray) and x.dtype == y.dtype, f"{name}; {context}"
            np.testing.assert_array_equal(x, y, err_msg=f"{name}; {context}")
        else:
            assert type(x) is type(y), f"{name}: {type(x)} vs {type(y)}; {context}"
            if isinstance(x, float) and np.isnan(x):
                assert np.isnan(y), f"{name}; {context}"
            elif not isinstance(x, np.random.RandomState):
                assert x == y, f"{name}: {x!r} vs {y!r}; {context}"


def _assert_same_outputs(a, b, X, methods, context):
    for method in methods:
        expected = np.asarray(getattr(a, method)(X))
        got = np.asarray(getattr(b, method)(X))
        assert got.dtype == expected.dtype, f"{method}; {context}"
        np.testing.assert_array_equal(got, expected, err_msg=f"{method}; {context}")


def _estimators(dtype):
    """(estimator, how to fit it, the methods whose outputs must survive the round trip)."""
    return [
        (genfast.KMeans(4, n_init=2, random_state=1), {},
         ["predict", "transform", "score"]),
        (genfast.GaussianMixture(3, covariance_type="full", random_state=1), {},
         ["predict", "predict_proba", "score_samples", "score"]),
        (genfast.GaussianMixture(3, covariance_type="spherical", random_state=1), {},
         ["predict", "score_samples"]),
        (genfast.Gaussian("diag", reg_covar=1e-6), {}, ["score_samples", "score"]),
    ]


def _check_round_trip(est, X, methods, context, fit_kwargs=None):
    unfitted = pickle.loads(pickle.dumps(est))
    _assert_same_attributes(est, unfitted, f"unfitted; {context}")
    assert clone(est).get_params() == est.get_params(), context

    est.fit(X, **(fit_kwargs or {}))
    copy = pickle.loads(pickle.dumps(est))
    _assert_same_attributes(est, copy, f"fitted; {context}")
    _assert_same_outputs(est, copy, X, methods, context)
    # The copy fits on, like the original: the same data gives the same model.
    refit_original, refit_copy = est.fit(X, **(fit_kwargs or {})), copy.fit(X, **(fit_kwargs or {}))
    _assert_same_outputs(refit_original, refit_copy, X, methods, f"refit; {context}")

    cloned = clone(est)
    assert cloned.get_params() == est.get_params(), context
    assert not any(name.endswith("_") and not name.startswith("_") for name in vars(cloned)), \
        f"clone kept fitted attributes; {context}"
    _assert_same_outputs(est, cloned.fit(X, **(fit_kwargs or {})), X, methods, f"clone; {context}")
    # The unpickled unfitted estimator fits to the same model too.
    _assert_same_outputs(est, unfitted.fit(X, **(fit_kwargs or {})), X, methods, f"unpickled; {context}")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("index", range(4), ids=["kmeans", "gmm-full", "gmm-spherical", "gaussian"])
def test_estimators_pickle_and_clone(index, dtype, rng, seed):
    X = (rng.standard_normal((500, 3)) * [1.0, 3.0, 0.5] + rng.normal(0, 4, size=3)).astype(dtype)
    est, fit_kwargs, methods = _estimators(dtype)[index]
    _check_round_trip(est, X, methods, f"{type(est).__name__} seed={seed} dtype={dtype}", fit_kwargs)


def test_weighted_kmeans_round_trip(rng, seed):
    X = rng.standard_normal((300, 2))
    sw = rng.uniform(0.5, 2.0, size=300)
    _check_round_trip(genfast.KMeans(3, random_state=0), X, ["predict", "score"], f"seed={seed}",
                      {"sample_weight": sw})


@pytest.mark.parametrize("name", ["KMeans", "GaussianMixture"])
def test_dask_estimators_pickle_and_clone(name, rng, seed):
    dask_array = pytest.importorskip("dask.array")
    gdask = pytest.importorskip("genfast.dask")
    X = dask_array.from_array(rng.standard_normal((600, 3)), chunks=(200, 3))
    est = gdask.KMeans(3, random_state=0) if name == "KMeans" else gdask.GaussianMixture(2, random_state=0)
    methods = ["predict"] if name == "KMeans" else ["predict", "score_samples"]
    unfitted = pickle.loads(pickle.dumps(est))
    _assert_same_attributes(est, unfitted, f"unfitted seed={seed}")
    est.fit(X)
    copy = pickle.loads(pickle.dumps(est))
    _assert_same_attributes(est, copy, f"fitted seed={seed}")
    for method in methods:
        expected = np.asarray(getattr(est, method)(X))  # lazy dask results, computed here
        np.testing.assert_array_equal(np.asarray(getattr(copy, method)(X)), expected,
                                      err_msg=f"{method} seed={seed}")
    cloned = clone(est)
    assert cloned.get_params() == est.get_params()
    np.testing.assert_array_equal(np.asarray(cloned.fit(X).predict(X)), np.asarray(est.predict(X)),
                                  err_msg=f"clone seed={seed}")


def test_vae_pickles(rng, seed):
    """genfast.VAE is a torch module (no scikit-learn get_params, so no clone): it pickles,
    untrained and trained, and the copy gives the same ELBO and mean reconstructions."""
    torch = pytest.importorskip("torch")
    X = (rng.uniform(size=(64, 12)) < 0.3).astype(np.float32)
    vae = genfast.VAE(12, 2, hidden=(8,), random_state=0)
    for state in ("untrained", "trained"):
        copy = pickle.loads(pickle.dumps(vae))
        for (name, a), (_, b) in zip(vae.state_dict().items(), copy.state_dict().items()):
            assert torch.equal(a, b), f"{name} {state} seed={seed}"
        assert torch.equal(vae.reconstruct(X, mean=True), copy.reconstruct(X, mean=True)), f"{state} seed={seed}"
        gen_a, gen_b = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
        assert vae.elbo(X, generator=gen_a) == copy.elbo(X, generator=gen_b), f"{state} seed={seed}"
        vae.fit(X, epochs=2, batch_size=16, progress=False, random_state=0)
