r"""Sufficient statistics of the two-level Gaussian model, per school.

For pupils :math:`i` in school :math:`j`, the likelihood of the two-level random-intercept model
(:mod:`bayesfed.models`) depends on the pupils only through

* each school's pupil count :math:`n_j`, mean outcome :math:`\bar y_j` and mean predictors
  :math:`\bar x_j` (every column of ``X``: for a school-level column the mean is the school's
  value);
* the pooled within-school cross products of the outcome and predictors centred at their
  school means, :math:`\tilde y_i = y_i - \bar y_{j(i)}`, :math:`\tilde x_i = x_i -
  \bar x_{j(i)}`: :math:`\tilde X^\top\tilde X`, :math:`\tilde X^\top\tilde y`,
  :math:`\tilde y^\top\tilde y`.

A school-level column is constant within a school, so its centred values are zero: its rows
and columns of the cross products are set to exactly zero (after checking that the column is
constant, up to rounding). :func:`school_stats` computes them once, in one pass over the pupils;
the collapsed likelihood (:func:`bayesfed.models.marginal_loglik`) then costs
:math:`O(J p + p^2)` per gradient for :math:`J` schools and :math:`p` coefficients, whatever
the number of pupils.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bayesfed.design import Design, group_sums

#: Largest deviation from its school mean, relative to the column's scale, that a school-level
#: column may show (rounding of the mean); a larger one means the table was not validated.
CONSTANT_TOL = 1e-9


@dataclass(frozen=True)
class SchoolStats:
    """Per-school counts and means and the pooled within-school cross products of a design.

    Attributes
    ----------
    n : ndarray of int, shape (n_schools,)
        Pupils per school (at least 1), in the order of ``Design.schools``.
    y_mean : ndarray, shape (n_schools,)
        School mean of the outcome (outcome units).
    X_mean : ndarray, shape (n_schools, n_coef)
        School means of the columns of ``X`` (each column's units); for a school-level column,
        the school's value.
    XX : ndarray, shape (n_coef, n_coef)
        :math:`\\sum_i \\tilde x_i \\tilde x_i^\\top`, predictors centred at their school
        means; zero rows and columns for school-level columns.
    Xy : ndarray, shape (n_coef,)
        :math:`\\sum_i \\tilde x_i \\tilde y_i` (zero for school-level columns).
    yy : float
        :math:`\\sum_i \\tilde y_i^2`, the pooled within-school sum of squares of the outcome
        (outcome units squared).
    """

    n: np.ndarray
    y_mean: np.ndarray
    X_mean: np.ndarray
    XX: np.ndarray
    Xy: np.ndarray
    yy: float

    @property
    def n_pupils(self) -> int:
        """Pupils in all schools."""
        return int(self.n.sum())

    @property
    def n_schools(self) -> int:
        return int(self.n.size)

    @property
    def X_centre(self) -> np.ndarray:
        """Mean of each column of ``X`` over pupils, shape (n_coef,)."""
        return self.n @ self.X_mean / self.n_pupils


def school_stats(design: Design) -> SchoolStats:
    """The sufficient statistics of a design's two-level Gaussian likelihood.

    Parameters
    ----------
    design : Design
        Outcome ``y`` (n_pupils,), predictors ``X`` (n_pupils, n_coef), each pupil's school and
        which columns are school-level.

    Returns
    -------
    SchoolStats

    Raises
    ------
    ValueError
        A school of ``design.schools`` has no pupils, or a school-level column varies within a
        school (the table was not validated).
    """
    n_schools = design.n_schools
    n = np.bincount(design.school_idx, minlength=n_schools)
    if (n == 0).any():
        raise ValueError("a school of the design has no pupils")
    columns = np.column_stack([design.y, design.X])  # outcome first
    means = group_sums(design.school_idx, n_schools, columns) / n[:, None]
    centred = columns - means[design.school_idx]
    school = 1 + np.flatnonzero(np.array(design.school_level, dtype=bool))
    if school.size:
        scale = np.maximum(np.abs(columns[:, school]).max(axis=0), 1.0)
        if (np.abs(centred[:, school]) > CONSTANT_TOL * scale).any():
            raise ValueError("a school-level column varies within a school")
        centred[:, school] = 0.0
    gram = centred.T @ centred
    return SchoolStats(n=n, y_mean=means[:, 0], X_mean=means[:, 1:], XX=gram[1:, 1:],
                       Xy=gram[1:, 0], yy=float(gram[0, 0]))
