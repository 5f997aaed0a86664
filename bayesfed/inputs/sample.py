"""What the selection rules (9 of :mod:`bayesfed.inputs.validate`) need to know of one fit's
pupils, mergeable over batches (:class:`Sample`), and those rules: no variation, too little
variation to scale the priors by, predictors that are linear combinations of others."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import scipy.linalg

from bayesfed.inputs.coding import predictor_columns, term_of
from bayesfed.inputs.moments import GroupPart, merge_group_parts, whole_part
from bayesfed.inputs.problems import Problem
from bayesfed.inputs.rules import Rules
from bayesfed.inputs.spec import ModelSpec

#: Pupils per block of the collinearity rule's QR factorisation.
QR_BLOCK = 500_000


@dataclass
class Sample:
    """What the rules of one fit's pupils (a year since founding, or the table) need to know
    of them, mergeable over consecutive row ranges.

    Attributes
    ----------
    n : int
        Pupils.
    first_school : str or None
        The first pupil's school; ``two_schools`` whether another school has pupils.
    first : dict of str to object
        The first pupil's value of the outcome and of each numeric term.
    numeric : tuple of str
        The numeric columns (the outcome and the non-categorical terms), in order.
    moments : GroupPart or None
        Their count, means and centred cross products, all pupils one group
        (:mod:`bayesfed.inputs.moments`, merged exactly).
    low, high : ndarray, shape (len(numeric),)
        Their smallest and largest values.
    levels : dict of str to set
        Labels seen of each categorical term.
    R : ndarray, shape (k, n_coef + 1)
        Triangular factor of a QR factorisation of the design ``[1, X]`` of these pupils
        (:func:`bayesfed.design.columns.build_design`).
    scale : ndarray, shape (n_coef + 1,)
        Largest absolute value of each column of ``[1, X]``.
    """

    n: int = 0
    first_school: object = None
    two_schools: bool = False
    first: dict[str, object] = field(default_factory=dict)
    numeric: tuple[str, ...] = ()
    moments: GroupPart | None = None
    low: np.ndarray | None = None
    high: np.ndarray | None = None
    levels: dict[str, set] = field(default_factory=dict)
    R: np.ndarray | None = None
    scale: np.ndarray | None = None
    coef_names: tuple[str, ...] = ()

    def merge(self, other: Sample) -> Sample:
        """These pupils followed by ``other``'s."""
        if other.n == 0:
            return self
        if self.n == 0:
            return other
        with np.errstate(under="ignore"):
            moments = merge_group_parts(self.moments, other.moments)
        return Sample(
            n=self.n + other.n, first_school=self.first_school,
            two_schools=(self.two_schools or other.two_schools
                         or other.first_school != self.first_school),
            first=self.first, numeric=self.numeric, moments=moments,
            low=np.minimum(self.low, other.low), high=np.maximum(self.high, other.high),
            levels={k: v | other.levels[k] for k, v in self.levels.items()},
            R=np.linalg.qr(np.vstack([self.R, other.R]), mode="r"),
            scale=np.maximum(self.scale, other.scale), coef_names=self.coef_names)


def sample_of(frame: pd.DataFrame, spec: ModelSpec) -> Sample:
    """The :class:`Sample` of some clean pupils (canonical names)."""
    if len(frame) == 0:
        return Sample()
    coding = spec.categorical_coding()
    schools = frame["school"]
    first_school = schools.iloc[0]
    out = Sample(n=len(frame), first_school=first_school,
                 two_schools=bool((schools != first_school).any()))
    for name in ("outcome", *spec.terms):
        if name in coding:
            out.levels[name] = set(frame[name].dropna().unique())
            continue
        first = frame[name].iloc[0]
        out.first[name] = first.item() if isinstance(first, np.generic) else first
    out.numeric = tuple(name for name in ("outcome", *spec.terms) if name not in coding)
    # column by column (shape (q, n)): each column's reductions run over contiguous memory
    values = np.array([frame[name].to_numpy(dtype=float) for name in out.numeric])
    with np.errstate(under="ignore"):
        out.moments = whole_part(values.T)
    out.low, out.high = values.min(axis=1), values.max(axis=1)
    # the design's columns (build_design's, without its school index)
    X, names = predictor_columns(frame, [*spec.pupil_terms, *spec.school_terms],
                                 coding)
    out.coef_names = tuple(names)
    k = X.shape[1] + 1
    out.scale = np.r_[1.0, np.zeros(k - 1)]
    # R is accumulated over blocks of pupils (the R of [R_so_far; block]), so memory holds one
    # block, not a copy of every pupil's row
    R = np.zeros((0, k))
    for start in range(0, len(X), QR_BLOCK):
        block = X[start: start + QR_BLOCK]
        # [R; 1, block] in Fortran order (each column contiguous), factorised in place by
        # LAPACK: numpy's qr copies and transposes, three times slower on a national batch
        A = np.empty((len(R) + len(block), k), order="F")
        A[: len(R)] = R
        A[len(R):, 0] = 1.0
        A[len(R):, 1:] = block
        rows = A[len(R):, 1:]
        out.scale[1:] = np.maximum(out.scale[1:], np.maximum(rows.max(axis=0),
                                                             -rows.min(axis=0)))
        R = scipy.linalg.qr(A, mode="r", overwrite_a=True, check_finite=False)[0][:k]
    out.R = R
    return out


def _spread(sample: Sample, name: str, column: str, role: str, where: str) -> list[Problem]:
    """A numeric column must vary, by enough to scale the default priors by (sd > 0)."""
    i = sample.numeric.index(name)
    n, squares = int(sample.moments.n[0]), float(sample.moments.within[0, i, i])
    low, high = sample.low[i], sample.high[i]
    if low == high:
        return [Problem(column, role, f"constant ({sample.first[name]!r}) in {where}",
                        "the outcome must vary between pupils" if role == "outcome" else
                        "drop the predictor from the spec for this selection")]
    with np.errstate(under="ignore"):
        sd = math.sqrt(squares / (n - 1))
    if not sd > 0:
        return [Problem(column, role, f"variation too small to compute with in {where} (values "
                        f"differ by at most {high - low:.3g})",
                        "rescale the column (e.g. to its usual units), or drop it if it is "
                        "constant in substance")]
    return []


def _variation_problems(sample: Sample, rules: Rules, where: str) -> list[Problem]:
    """An outcome or a predictor (or categorical level) that does not vary."""
    spec, present = rules.spec, rules.present
    problems = _spread(sample, "outcome", present["outcome"], "outcome", where)
    coding = spec.categorical_coding()
    for term in spec.terms:
        if term in coding:
            levels, reference = coding[term]
            seen = sample.levels[term]
            absent = [lev for lev in levels if lev not in seen]
            if len(seen) < 2:
                problems.append(Problem(
                    present[term], term, f"only one category ({', '.join(sorted(seen))}) "
                    f"in {where}", "drop the predictor from the spec for this selection"))
            elif reference in absent:
                problems.append(Problem(
                    present[term], term, f"reference level {reference!r} absent from {where}",
                    "choose a reference level that occurs in [categorical] of the spec"))
            elif absent:
                problems.append(Problem(
                    present[term], term, f"level(s) {', '.join(absent)} absent from {where}",
                    "remove the absent levels from [categorical] levels in the spec, or merge "
                    "them into a neighbouring level"))
        else:
            problems += _spread(sample, term, present[term], term, where)
    if not problems and spec.terms:
        problems += _collinearity_problems(sample, rules, where)
    return problems


def _collinearity_problems(sample: Sample, rules: Rules, where: str) -> list[Problem]:
    """Coefficients that are exact linear combinations of the intercept and earlier columns.

    Columns are added in reporting order; one that does not raise the rank of
    ``[1, X_so_far]`` is reported with the columns it is a combination of.
    """
    names = ("intercept", *sample.coef_names)
    scale = np.where(sample.scale > 0, sample.scale, 1.0)
    # R of [1, X] D^-1 is R D^-1 (each column divided by its largest absolute value), and its
    # |R_jj| is the norm of column j's residual on the columns before it, whose span is that
    # of the columns kept so far: no least-squares fit per column
    R = sample.R / scale
    residual_norm = np.zeros(R.shape[1])  # R has fewer rows than columns for few pupils
    residual_norm[: min(R.shape)] = np.abs(np.diag(R))
    problems = []
    kept: list[int] = [0]
    for j in range(1, len(names)):
        if residual_norm[j] > 1e-8 * np.sqrt(sample.n):
            kept.append(j)
            continue
        # the least-squares fit of column j on the kept ones, from R (X'X = R'R)
        coef, *_ = np.linalg.lstsq(R[:, kept], R[:, j], rcond=None)
        parts = [names[k] for k, c in zip(kept, coef, strict=True) if abs(c) > 1e-8]
        term = term_of(names[j])
        problems.append(Problem(
            rules.present.get(term, term), term,
            f"coefficient {names[j]!r} is a linear combination of {', '.join(parts)} in {where}",
            "drop one of these predictors from the spec: their effects cannot be told apart"))
    return problems


def sample_problems(sample: Sample, rules: Rules, year: int | None, years_seen: set
                     ) -> list[Problem]:
    """Rules for the pupils of one fit: a year since founding, or the whole table (None)."""
    present = rules.present
    if year is None:
        column, role, where = present["school"], "school", "the table"
        what = "the table has"
    else:
        column = present.get("years_since",
                             f"{present.get('cohort')} - {present.get('founding_year')}")
        role, where = "years_since", f"year {year}"
        what = f"year {year} since founding has"
    if sample.n == 0:
        available = sorted(years_seen)
        return [Problem(
            column, role, f"no pupils in year {year} since founding",
            f"choose years among those present ({', '.join(map(str, available))})")]
    if not sample.two_schools:
        return [Problem(
            column, role, f"{what} pupils in a single school ({sample.first_school!r}): "
            "school variance is not identified",
            "fit years with pupils in at least two schools" if year is not None else
            "a two-level model needs pupils in at least two schools")]
    return _variation_problems(sample, rules, where)
