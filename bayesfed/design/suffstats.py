r"""Sufficient statistics of the two-level Gaussian model, per school.

For pupils :math:`i` in school :math:`j`, the likelihood of the two-level random-intercept model
(:mod:`bayesfed.modelling.two_level`) depends on the pupils only through

* each school's pupil count :math:`n_j`, mean outcome :math:`\bar y_j` and mean predictors
  :math:`\bar x_j` (every column of ``X``: for a school-level column the mean is the school's
  value);
* the pooled within-school cross products of the outcome and predictors centred at their
  school means, :math:`\tilde y_i = y_i - \bar y_{j(i)}`, :math:`\tilde x_i = x_i -
  \bar x_{j(i)}`: :math:`\tilde X^\top\tilde X`, :math:`\tilde X^\top\tilde y`,
  :math:`\tilde y^\top\tilde y`.

A school-level column is constant within a school, so its centred values are zero: its rows
and columns of the cross products are set to exactly zero (after checking that the column is
constant, up to rounding). The collapsed likelihood
(:func:`bayesfed.modelling.two_level.marginal_loglik`) then costs :math:`O(J p + p^2)` per gradient
for :math:`J` schools and :math:`p` coefficients, whatever the number of pupils.

Where they come from. A :class:`SchoolSummary` keeps, per school, the count, the means and the
school's own centred cross products of ``[y, X]`` (a ``(1 + p) x (1 + p)`` matrix), with the
labels: besides the pooled :class:`SchoolStats` (:meth:`SchoolSummary.pooled`) it gives the
covariance of the columns over the pupils (within plus between schools:
:meth:`SchoolSummary.total_cov`, for the default priors' scales and the variance
decomposition), the per-school data of the predictive checks and the REML cross-check's
statistics. It is computed from a design in memory (:func:`summary_of`) or from a table read in
batches: each batch's pupils give a :class:`~bayesfed.inputs.moments.GroupPart` per (year,
school) key, and parts merge exactly (:mod:`bayesfed.inputs.moments`), so the result depends
on the batches only through rounding.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import pandas as pd

from bayesfed.design.columns import Design
from bayesfed.inputs.moments import GroupPart, group_moments

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


@dataclass(frozen=True)
class SchoolSummary:
    """Per-school statistics of one selection of pupils, with their labels: everything a
    collapsed two-level fit, its REML cross-check, its priors' scales and its predictive
    checks need of the pupils.

    Attributes
    ----------
    n : ndarray of int, shape (n_schools,)
        Pupils per school (at least 1).
    y_mean : ndarray, shape (n_schools,)
        School mean of the outcome (outcome units).
    X_mean : ndarray, shape (n_schools, n_coef)
        School means of the predictor columns; for a school-level column, the school's value.
    within : ndarray, shape (n_schools, 1 + n_coef, 1 + n_coef)
        Each school's cross products of ``[y, X]`` centred at the school's means (outcome
        first); exactly zero in the rows and columns of school-level columns.
    schools : tuple of str, length n_schools
        School labels, sorted (the order of :attr:`bayesfed.design.columns.Design.schools`).
    coef_names : tuple of str, length n_coef
    school_level : tuple of bool, length n_coef
        As in :class:`bayesfed.design.columns.Design`.
    """

    n: np.ndarray
    y_mean: np.ndarray
    X_mean: np.ndarray
    within: np.ndarray
    schools: tuple[str, ...]
    coef_names: tuple[str, ...]
    school_level: tuple[bool, ...]

    @property
    def n_pupils(self) -> int:
        return int(self.n.sum())

    @property
    def n_schools(self) -> int:
        return len(self.schools)

    def pooled(self) -> SchoolStats:
        """The :class:`SchoolStats`: the within cross products summed over schools."""
        gram = self.within.sum(axis=0)
        return SchoolStats(n=self.n, y_mean=self.y_mean, X_mean=self.X_mean, XX=gram[1:, 1:],
                           Xy=gram[1:, 0], yy=float(gram[0, 0]))

    def total_cov(self) -> np.ndarray:
        """Covariance matrix (denominator ``n - 1``) of ``[y, X]`` over the pupils, shape
        (1 + n_coef, 1 + n_coef): the pooled within-school cross products plus the
        between-school ones."""
        means = np.column_stack([self.y_mean, self.X_mean])
        deviation = means - self.n @ means / self.n_pupils
        between = (deviation * self.n[:, None]).T @ deviation
        return (self.within.sum(axis=0) + between) / (self.n_pupils - 1)


def summary_from(part: GroupPart, coef_names: tuple[str, ...],
                 school_level: tuple[bool, ...]) -> SchoolSummary:
    """The :class:`SchoolSummary` of a part whose keys are schools (column ``school``, one
    row each), sorted by label.

    Raises
    ------
    ValueError
        A school-level column varies within a school (the table was not validated).
    """
    labels = part.keys["school"].astype(str).to_numpy()
    if len(set(labels)) != len(labels):
        raise ValueError("a school appears in more than one key of the part")
    order = np.argsort(labels, kind="stable")
    within = part.within[order].copy()
    mean = part.mean[order]
    cols = 1 + np.flatnonzero(np.array(school_level, dtype=bool))
    if cols.size:
        scale = np.maximum(np.abs(mean[:, cols]).max(axis=0), 1.0)
        spread = np.sqrt(np.diagonal(within, axis1=1, axis2=2)[:, cols])
        if (spread > CONSTANT_TOL * scale).any():
            raise ValueError("a school-level column varies within a school")
        within[:, cols, :] = 0.0
        within[:, :, cols] = 0.0
    # contiguous copies, not strided views of ``mean``: a pickled summary (sent to a worker
    # process) arrives contiguous, and NumPy's products take another summation order on
    # strided arrays, so a view would give other bits in the worker than in this process
    return SchoolSummary(n=part.n[order].astype(np.int64),
                         y_mean=np.ascontiguousarray(mean[:, 0]),
                         X_mean=np.ascontiguousarray(mean[:, 1:]), within=within,
                         schools=tuple(labels[order]), coef_names=coef_names,
                         school_level=school_level)


def summary_of(data: Design | SchoolSummary) -> SchoolSummary:
    """The :class:`SchoolSummary` of a design's pupils (a summary is returned as it is).

    Raises
    ------
    ValueError
        A school of ``design.schools`` has no pupils, or a school-level column varies within a
        school (the table was not validated).
    """
    if isinstance(data, SchoolSummary):
        return data
    n, mean, within = group_moments(data.school_idx, data.n_schools,
                                     np.column_stack([data.y, data.X]))
    if (n == 0).any():
        raise ValueError("a school of the design has no pupils")
    part = GroupPart(pd.DataFrame({"school": list(data.schools)}), n, mean, within)
    return summary_from(part, data.coef_names, data.school_level)


def school_stats(data: Design | SchoolSummary) -> SchoolStats:
    """The sufficient statistics of a design's two-level Gaussian likelihood
    (:meth:`SchoolSummary.pooled` of :func:`summary_of`).

    Raises
    ------
    ValueError
        As :func:`summary_of`.
    """
    return summary_of(data).pooled()


def quadratic_forms(beta: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """``beta_s' XX_j beta_s`` for every draw ``s`` (beta: draw, p) and school ``j`` (xx:
    school, p, p), shape (draw, school), as one matrix product of the draws' outer products
    with the flattened ``XX_j``: far faster than ``np.einsum``'s loop at national size (3.5 s
    against 0.1 s for 4,000 draws of 3,002 schools; ``docs/benchmarks.md``, section
    "Predictive checks at national size")."""
    p2 = beta.shape[1] ** 2
    return ((beta[:, :, None] * beta[:, None, :]).reshape(len(beta), p2)
            @ xx.reshape(len(xx), p2).T)


def residual_ss(beta: np.ndarray, within: np.ndarray) -> np.ndarray:
    """Each school's within-school residual sum of squares :math:`W_j(\beta) = \tilde
    y^\top\tilde y - 2\beta^\top\tilde X^\top\tilde y + \beta^\top\tilde X^\top\tilde
    X\beta` for every draw, shape (draw, school) (outcome units squared, at least 0), from
    ``beta`` (draw, p) and the schools' centred cross products ``within`` (school, 1 + p,
    1 + p; :attr:`SchoolSummary.within`)."""
    ss = (within[:, 0, 0] - 2 * beta @ within[:, 1:, 0].T
          + quadratic_forms(beta, within[:, 1:, 1:]))
    return np.maximum(ss, 0.0)


def sample_sha256(summary: SchoolSummary) -> str:
    """A fingerprint of the pupils a summary holds: SHA-256 of its schools' labels and pupil
    counts. Two fits of one table with the same fingerprint have the same schools with the
    same number of pupils each; models are compared only then (variance explained, REML's
    proportional reduction, leave-one-school-out)."""
    digest = hashlib.sha256()
    for label, n in zip(summary.schools, summary.n.tolist(), strict=True):
        digest.update(f"{label}\x1f{n}\x1e".encode())
    return digest.hexdigest()
