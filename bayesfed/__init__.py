"""bayesfed: Bayesian multilevel re-analysis of school-federation studies.

The data flow, one module a step::

    spec (TOML -> ModelSpec) -> read (CSV/Parquet + column mapping) -> validate
    -> design -> models (PyMC) -> fit -> store (NetCDF) -> partition -> summarize -> report
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("bayesfed")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
    __version__ = "0+unknown"

__all__ = ["__version__"]
