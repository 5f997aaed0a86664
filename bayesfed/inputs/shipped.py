"""Where the shipped specifications (``models/``) and data (``data/``) are.

In a source checkout or an editable install they are the repository's top-level folders; a
wheel carries copies inside the package (``bayesfed/_shipped/models`` and ``.../data``, put
there by the build configuration in ``pyproject.toml``), so ``bayesfed demo`` and
:func:`load_example` work from an installed package too.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from bayesfed.errors import OutputError

_PACKAGE = Path(__file__).resolve().parents[1]  # the bayesfed package

#: The shipped specifications by short name, reference models first.
SPECS = {"m0": "m0_empty.toml", "m1": "m1_pupil.toml", "m2": "m2_federation.toml",
         "event_time": "event_time.toml", "m1_scale": "m1_scale.toml"}

#: The specifications the demo fits: the paper's models and the joint event-time model.
DEMO = ("m0", "m1", "m2", "event_time")

#: The shipped synthetic study's file in ``data/``.
EXAMPLE = "synthetic_study.parquet"


def folder(name: str) -> Path:
    """The shipped folder ``name`` (``"models"`` or ``"data"``): the wheel's copy if this is
    an installed package, else the repository's."""
    for candidate in (_PACKAGE / "_shipped" / name, _PACKAGE.parent / name):
        if candidate.is_dir():
            return candidate
    raise OutputError(f"bayesfed's shipped {name}/ folder is missing from {_PACKAGE}: "
                      "reinstall bayesfed")


def spec_path(name: str) -> Path:
    """The TOML file of a shipped specification (a key of :data:`SPECS`)."""
    return folder("models") / SPECS[name]


def example_path() -> Path:
    """The shipped synthetic study (Parquet), calibrated to the paper (``data/README.md``)."""
    return folder("data") / EXAMPLE


def load_example() -> pd.DataFrame:
    """The shipped synthetic study as a DataFrame: one row per pupil and year, the columns of
    the data schema (``data/README.md``)."""
    return pd.read_parquet(example_path())
