"""Design matrices: a validated pupil table and a model's terms -> numeric arrays with labels.

REML, the PyMC models and the reports all take their coefficient names from here; the
columns themselves come from :mod:`bayesfed.inputs.coding`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from bayesfed.design.centring import centre_design
from bayesfed.inputs.coding import predictor_columns
from bayesfed.inputs.spec import ModelSpec
from bayesfed.inputs.validate import PupilTable


@dataclass(frozen=True)
class Design:
    """Numeric arrays of one model on one selection of pupils.

    Attributes
    ----------
    y : ndarray, shape (n_pupils,)
        Outcome, in the outcome's units.
    X : ndarray, shape (n_pupils, n_coef)
        Predictors without the intercept column.
    coef_names : tuple of str, length n_coef
        ``term`` for a numeric term, ``term[level]`` for a categorical level.
    school_idx : ndarray of int, shape (n_pupils,)
        Index of each pupil's school into ``schools``.
    schools : tuple of str, length n_schools
        School labels (as strings), sorted.
    school_level : tuple of bool, length n_coef
        True for a coefficient of a school-level term (constant within school).
    """

    y: np.ndarray
    X: np.ndarray
    coef_names: tuple[str, ...]
    school_idx: np.ndarray
    schools: tuple[str, ...]
    school_level: tuple[bool, ...]

    @property
    def n_pupils(self) -> int:
        return int(self.y.shape[0])

    @property
    def n_schools(self) -> int:
        return len(self.schools)


def build_design(
    frame: pd.DataFrame,
    pupil_terms: Sequence[str] = (),
    school_terms: Sequence[str] = (),
    categorical: Mapping[str, tuple[Sequence[str], str]] | None = None,
) -> Design:
    """Build the arrays of a two-level model from a canonical pupil table.

    Parameters
    ----------
    frame : DataFrame
        Validated table with canonical column names (``outcome``, ``school`` and each term).
    pupil_terms, school_terms : sequence of str
        Pupil-level and school-level terms, in the order their coefficients are reported.
    categorical : mapping, optional
        ``term -> (levels, reference)``.

    Returns
    -------
    Design
    """
    pupil_X, pupil_names = predictor_columns(frame, pupil_terms, categorical)
    school_X, school_names = predictor_columns(frame, school_terms, categorical)
    X = np.hstack([pupil_X, school_X])
    names = pupil_names + school_names
    level = [False] * len(pupil_names) + [True] * len(school_names)
    school_codes, schools = pd.factorize(frame["school"].astype(str), sort=True)
    return Design(
        # a copy: numpy's sums round differently at another memory alignment, and a frame
        # sent to another process (a Dask worker) may hold its column at any alignment
        y=frame["outcome"].to_numpy(dtype=float, copy=True),
        X=X,
        coef_names=tuple(names),
        school_idx=school_codes.astype(np.int64),
        schools=tuple(str(s) for s in schools),
        school_level=tuple(level),
    )


def design_for(table: PupilTable, spec: ModelSpec, year: int | None) -> Design:
    """The design of one model on one year's pupils (the whole table when ``year`` is None),
    centred and with contextual terms as the spec asks (:mod:`bayesfed.design.centring`)."""
    return centre_design(build_design(table.select_year(year), spec.pupil_terms,
                                      spec.school_terms, spec.categorical_coding()), spec)
