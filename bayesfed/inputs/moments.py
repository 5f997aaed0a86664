r"""Mergeable moments: per-group counts, means and centred cross products of some consecutive
rows, merged exactly, so a table is summarised batch by batch, by threads or by Dask workers.

For two parts :math:`a, b` of a group's rows with counts :math:`n_a, n_b`, means
:math:`\bar x_a, \bar x_b` and centred cross products :math:`W_a, W_b`, the pooled group has
:math:`n = n_a + n_b`, :math:`\bar x = (n_a \bar x_a + n_b \bar x_b) / n` and

.. math:: W = W_a + W_b + n_a (\bar x_a - \bar x)(\bar x_a - \bar x)^\top
          + n_b (\bar x_b - \bar x)(\bar x_b - \bar x)^\top

(Chan, Golub and LeVeque 1983, https://doi.org/10.1080/00031305.1983.10483115), which never
subtracts two large sums. The one implementation: validation's per-column checks
(:class:`bayesfed.inputs.sample.Sample`), the per-school statistics
(:mod:`bayesfed.design.suffstats`) and the event-time cells (:mod:`bayesfed.design.cells`) all
merge through :func:`merge_group_parts`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import pandas as pd


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


@dataclass(frozen=True)
class GroupPart:
    """Per-group counts, means and centred cross products of some consecutive pupils; parts
    merge exactly (:func:`merge_group_parts`), so a table can be reduced batch by batch.

    Attributes
    ----------
    keys : DataFrame
        One row per distinct key (e.g. year since founding and school).
    n : ndarray of int, shape (n_keys,)
    mean : ndarray, shape (n_keys, q)
        Means of the ``q`` columns (outcome first, then the predictors).
    within : ndarray, shape (n_keys, q, q)
        Each key's cross products of the columns centred at its means.
    """

    keys: pd.DataFrame
    n: np.ndarray
    mean: np.ndarray
    within: np.ndarray


def group_moments(codes: np.ndarray, n_groups: int, columns: np.ndarray
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Counts (n_groups,), means (n_groups, q) and centred cross products (n_groups, q, q) of
    the rows of ``columns`` (n_rows, q) in each group (``codes``: 0..n_groups-1)."""
    n = np.bincount(codes, minlength=n_groups)
    mean = group_sums(codes, n_groups, columns) / np.maximum(n, 1)[:, None]
    order = np.argsort(codes, kind="stable")
    centred = columns[order] - mean[codes[order]]
    ends = np.cumsum(n)
    within = np.stack([block.T @ block for block in np.split(centred, ends[:-1])]
                      ) if n_groups else np.zeros((0, columns.shape[1], columns.shape[1]))
    return n, mean, within


def group_part(keys: pd.DataFrame, columns: np.ndarray) -> GroupPart:
    """The :class:`GroupPart` of some pupils.

    Parameters
    ----------
    keys : DataFrame
        The pupils' key columns, one row each.
    columns : ndarray, shape (n_pupils, q)
        Outcome and predictor columns.
    """
    codes, first = group_codes(keys)
    n, mean, within = group_moments(codes, first.size, np.asarray(columns, dtype=float))
    return GroupPart(keys.iloc[first].reset_index(drop=True), n, mean, within)


def whole_part(columns: np.ndarray) -> GroupPart:
    """The :class:`GroupPart` of some pupils taken as one group (keys without columns).

    Parameters
    ----------
    columns : ndarray, shape (n_pupils, q)
        Fastest in Fortran order (each column contiguous).
    """
    columns = np.asarray(columns, dtype=float)
    mean = columns.mean(axis=0)
    centred = columns - mean
    return GroupPart(pd.DataFrame(index=range(1)), np.array([len(columns)]), mean[None, :],
                     (centred.T @ centred)[None, :, :])


def merge_group_parts(a: GroupPart, b: GroupPart) -> GroupPart:
    """The part of ``a``'s pupils followed by ``b``'s: counts added, means pooled and each
    key's cross products combined exactly (Chan, Golub and LeVeque's update)."""
    pooled = pool_groups(a.keys, a.n, a.mean, b.keys, b.n, b.mean)
    dev, q = pooled.deviation, pooled.mean.shape[1]
    spread = np.vstack([a.within, b.within]) + (
        pooled.weight[:, None, None] * dev[:, :, None] * dev[:, None, :])
    within = group_sums(pooled.codes, pooled.n.size, spread.reshape(-1, q * q)).reshape(-1, q, q)
    return GroupPart(pooled.keys, pooled.n, pooled.mean, within)
