"""bayesfed: Bayesian multilevel re-analysis of school-federation studies.

The data flow, one subpackage a stage (``ARCHITECTURE.md``; a stage imports only the ones
before it)::

    inputs (specification, pupil table, validation) -> design (sufficient statistics)
    -> modelling (PyMC models, priors) -> sampling (nutpie) -> store (NetCDF)
    -> posterior (summaries, verdicts) -> report (tables, figures) ; jobs runs them in order

From Python: :func:`bayesfed.fit` and :func:`bayesfed.load` (:mod:`bayesfed.api`), imported
when first used, so ``import bayesfed`` loads neither PyMC nor PyTensor nor matplotlib.
"""

from importlib import import_module
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("bayesfed")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
    __version__ = "0+unknown"

#: Names of the API, each imported from :mod:`bayesfed.api` on first use.
_API = ("fit", "load", "load_example", "Results", "model_spec", "validate")

__all__ = ["__version__", *_API]


def __getattr__(name: str):
    if name in _API:
        return getattr(import_module("bayesfed.api"), name)
    raise AttributeError(f"module 'bayesfed' has no attribute {name!r}")
