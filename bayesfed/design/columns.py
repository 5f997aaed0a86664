"""Design matrices: a validated pupil table and a model's terms -> numeric arrays with labels.

REML, the PyMC models and the reports all take their coefficient names from here; the
columns themselves come from :mod:`bayesfed.inputs.coding`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import pandas as pd

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


def group_sums(idx: np.ndarray, n_groups: int, values: np.ndarray) -> np.ndarray:
    """Sum the rows of ``values`` within groups (schools, or school-by-cohort cells).

    Parameters
    ----------
    idx : ndarray of int, shape (n_rows,)
        Each row's group, 0..n_groups-1.
    n_groups : int
    values : ndarray, shape (n_rows,) or (n_rows, k)

    Returns
    -------
    ndarray, shape (n_groups,) or (n_groups, k)
    """
    values = np.asarray(values, dtype=float)
    if values.ndim == 1:
        return np.bincount(idx, weights=values, minlength=n_groups)
    out = np.empty((n_groups, values.shape[1]))
    for k in range(values.shape[1]):  # bincount: one fast pass per column (np.add.at is slow)
        out[:, k] = np.bincount(idx, weights=values[:, k], minlength=n_groups)
    return out


def group_codes(keys: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Each row's group of equal keys (numbered by first appearance) and each group's first row.

    Parameters
    ----------
    keys : DataFrame
        One row per pupil (or per part of a merge); every column is part of the key.

    Returns
    -------
    codes : ndarray of int64, shape (n_rows,)
    first : ndarray of int64, shape (n_groups,)
    """
    code = np.zeros(len(keys), dtype=np.int64)
    for name in keys.columns:  # one integer per distinct key
        values, uniques = pd.factorize(keys[name])
        code = code * (len(uniques) + 1) + values
    codes, uniques = pd.factorize(code)
    first = np.empty(len(uniques), dtype=np.int64)
    order = np.arange(len(codes))[::-1]  # the last write of a group is its first row
    first[codes[order]] = order
    return codes.astype(np.int64), first


class Pooled(NamedTuple):
    """Two consecutive parts' groups pooled (:func:`pool_groups`)."""

    keys: pd.DataFrame  # one row per group, first appearance first
    n: np.ndarray  # (n_groups,) int: pupils per group
    mean: np.ndarray  # (n_groups, q): the groups' pooled means
    codes: np.ndarray  # (n_a + n_b,) int: each part row's group
    weight: np.ndarray  # (n_a + n_b,): each part row's pupils
    deviation: np.ndarray  # (n_a + n_b, q): each part row's mean minus its group's


def pool_groups(keys_a: pd.DataFrame, n_a: np.ndarray, mean_a: np.ndarray,
                keys_b: pd.DataFrame, n_b: np.ndarray, mean_b: np.ndarray) -> Pooled:
    """Pool the per-group counts and means of two consecutive parts of a table (the first
    step of Chan, Golub and LeVeque's merge; the caller adds the centred cross products, each
    part's plus ``weight * deviation deviation'``).

    Parameters
    ----------
    keys_a, keys_b : DataFrame
        One row per group of each part (the same columns).
    n_a, n_b : ndarray of int, shapes (k_a,), (k_b,)
    mean_a, mean_b : ndarray, shapes (k_a, q), (k_b, q)
    """
    keys = pd.concat([keys_a, keys_b], ignore_index=True)
    weight = np.r_[n_a, n_b]
    means = np.vstack([mean_a, mean_b])
    codes, first = group_codes(keys)
    n = np.bincount(codes, weights=weight, minlength=first.size).astype(np.int64)
    mean = group_sums(codes, first.size, means * weight[:, None]) / n[:, None]
    return Pooled(keys.iloc[first].reset_index(drop=True), n, mean, codes, weight,
                  means - mean[codes])  # deviation zero for a group of one part only


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
    """The design of one model on one year's pupils (the whole table when ``year`` is None)."""
    return build_design(table.select_year(year), spec.predictors.pupil, spec.predictors.school,
                        spec.categorical_coding())
