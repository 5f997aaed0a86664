"""How a specification's terms become numeric columns: the only place where predictors become
columns of ``X``. Categorical terms are treatment-coded against their reference level and named
``term[level]``, as in ``summary.json``; validation (its collinearity check) and the design
matrices (:mod:`bayesfed.design.columns`) both code through here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd


def term_columns(
    frame: pd.DataFrame,
    term: str,
    categorical: Mapping[str, tuple[Sequence[str], str]],
) -> tuple[np.ndarray, list[str]]:
    """Columns of one term: the values themselves, or treatment-coded dummies.

    An interaction ``a:b`` is the product of each column of ``a`` with each of ``b``, named
    ``a:b``, ``sen[statemented]:federated``.

    Parameters
    ----------
    frame : DataFrame
        Canonical table (columns named by role or term).
    term : str
        Term name (a column of ``frame``), or two joined by ``:``.
    categorical : mapping
        ``term -> (levels, reference)`` for categorical terms.

    Returns
    -------
    values : ndarray, shape (n_rows, n_cols)
    names : list of str, length n_cols
    """
    if ":" in term:
        first, second = (term_columns(frame, part, categorical) for part in term.split(":"))
        values = (first[0][:, :, None] * second[0][:, None, :]).reshape(
            len(frame), first[0].shape[1] * second[0].shape[1])
        return values, [f"{a}:{b}" for a in first[1] for b in second[1]]
    if term in categorical:
        levels, reference = categorical[term]
        kept = [lev for lev in levels if lev != reference]
        # each row's level among the kept ones (-1: the reference, or missing), looked up
        # once per distinct label
        codes, labels = pd.factorize(frame[term])
        lookup = np.r_[pd.Index(kept).get_indexer(labels.astype(str)), -1]
        idx = lookup[codes]  # code -1 (missing) takes the last entry
        cols = (idx[:, None] == np.arange(len(kept))[None, :]).astype(float)
        return cols, [f"{term}[{lev}]" for lev in kept]
    return frame[term].to_numpy(dtype=float)[:, None], [term]


def predictor_columns(
    frame: pd.DataFrame,
    terms: Sequence[str],
    categorical: Mapping[str, tuple[Sequence[str], str]] | None = None,
) -> tuple[np.ndarray, list[str]]:
    """The columns of several terms side by side (:func:`term_columns` of each).

    Returns
    -------
    X : ndarray, shape (n_rows, n_cols)
    names : list of str, length n_cols
    """
    categorical = dict(categorical or {})
    blocks: list[np.ndarray] = [np.zeros((len(frame), 0))]
    names: list[str] = []
    for term in terms:
        cols, cnames = term_columns(frame, term, categorical)
        blocks.append(cols)
        names.extend(cnames)
    return np.hstack(blocks), names


def term_of(coef: str) -> str:
    """The term a coefficient name belongs to: ``sen[statemented]`` -> ``sen``, ``fsm`` ->
    ``fsm``, ``sen[statemented]:federated`` -> ``sen:federated`` (the names
    :func:`term_columns` gives)."""
    return ":".join(part.split("[", 1)[0] for part in coef.split(":"))
