r"""Centring within schools and contextual terms: ``[predictors] centre`` and ``contextual``.

With ``centre = "within"`` each pupil-level column :math:`x` enters the model as
:math:`x_{ij} - \bar x_j`, its deviation from the school mean (CWC); a pupil-level term listed
in ``contextual`` also enters through its school mean :math:`\bar x_j`, a school-level column
named ``school_mean(<column>)``. Together they separate a predictor's within-school slope from
its between-school (contextual) one, the decomposition of Rights & Sterba (2019) and of
Enders & Tofighi (2007), https://doi.org/10.1037/1082-989X.12.2.121.

Both are exact transforms of what a fit already holds, so a table read in batches needs no
second pass: on a :class:`~bayesfed.design.suffstats.SchoolSummary` centring sets the pupil
columns' school means to 0 (their within-school cross products are unchanged) and a contextual
column has the school mean as its value and no within-school variation; on a
:class:`~bayesfed.design.columns.Design` (pupil rows) the same columns are computed row by row.
``tests/design/test_centring.py`` checks that both routes give the same statistics.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

import numpy as np

from bayesfed.inputs.coding import term_of
from bayesfed.inputs.moments import group_sums
from bayesfed.inputs.spec import ModelSpec

if TYPE_CHECKING:  # the design's modules import this one
    from bayesfed.design.columns import Design
    from bayesfed.design.suffstats import SchoolSummary


def _columns(coef_names: tuple[str, ...], school_level: tuple[bool, ...], spec: ModelSpec
             ) -> tuple[list[int], list[int], tuple[str, ...], tuple[bool, ...]]:
    """Indices of the pupil-level columns to centre and of those with a contextual term, and
    the coefficient names and levels with the contextual columns appended."""
    pupil = [i for i, level in enumerate(school_level) if not level]
    centred = pupil if spec.predictors.centre == "within" else []
    contextual = [i for i in pupil if term_of(coef_names[i]) in spec.predictors.contextual]
    return (centred, contextual,
            (*coef_names, *(contextual_name(coef_names[i]) for i in contextual)),
            (*school_level, *([True] * len(contextual))))


def contextual_name(coef: str) -> str:
    """The name of a column's contextual (school-mean) coefficient."""
    return f"school_mean({coef})"


def centre_summary(summary: SchoolSummary, spec: ModelSpec) -> SchoolSummary:
    """The summary of the columns ``spec`` asks for: pupil columns centred at their school
    means, then contextual school means appended as school-level columns."""
    centred, contextual, names, levels = _columns(summary.coef_names, summary.school_level,
                                                  spec)
    if not centred and not contextual:
        return summary
    X_mean = summary.X_mean.copy()
    X_mean[:, centred] = 0.0
    added = summary.X_mean[:, contextual]
    k, p = len(contextual), summary.X_mean.shape[1]
    within = np.zeros((summary.n.size, 1 + p + k, 1 + p + k))
    within[:, :1 + p, :1 + p] = summary.within
    return replace(summary, X_mean=np.column_stack([X_mean, added]), within=within,
                   coef_names=names, school_level=levels)


def centre_design(design: Design, spec: ModelSpec) -> Design:
    """:func:`centre_summary` on pupil rows: the same columns, computed for every pupil."""
    centred, contextual, names, levels = _columns(design.coef_names, design.school_level, spec)
    if not centred and not contextual:
        return design
    n = np.bincount(design.school_idx, minlength=design.n_schools).astype(float)
    means = group_sums(design.school_idx, design.n_schools, design.X) / n[:, None]
    pupil_means = means[design.school_idx]
    X = design.X.copy()
    X[:, centred] -= pupil_means[:, centred]
    return replace(design, X=np.column_stack([X, pupil_means[:, contextual]]),
                   coef_names=names, school_level=levels)
