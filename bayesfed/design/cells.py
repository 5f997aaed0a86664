"""Arrays of the joint event-time model: a canonical pupil table -> :class:`EventDesign`.

The joint model (:mod:`bayesfed.modelling.event_pooled`) fits every cohort at once. Each pupil
belongs to a school, a cohort (calendar year of the GCSE exams) and so to a school-by-cohort *cell*,
and carries a row of event-year indicators

.. math::

    E_{ik} = F_j \\, 1[\\mathrm{years\\_since}_i = k], \\quad k \\in \\mathrm{leads} \\cup
    \\mathrm{effects},

with :math:`F_j` the school's federated flag. Year :math:`k = -1` (the last cohort before
founding) is the reference and has no column, so a matched (non-federated) school's pupils
and a federated school's pupils in year -1 have an all-zero row.

Which pupils are kept: those with ``years_since`` in ``[min(leads), max(effects)]`` (year -1
always among them). Pupils outside that window would need a term the model does not have;
they are dropped, and :attr:`EventDesign.n_dropped` records how many, rather than silently
pooling them with the reference year.

For the optional heterogeneity terms a federated school also carries its federation and its
federation type (``federation_idx``, ``type_idx``; -1 for a matched school): a post-founding
cell (``k >= 0``) of a federated school gets its federation's and its type's deviation of the
effect.

Cells are the school-by-cohort combinations that have pupils, sorted by school label then
cohort. Because the federated flag and founding year are constant within a school, every
pupil of a cell has the same cohort and the same event-year row; :func:`cell_stats` relies on
that and checks it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd

from bayesfed.errors import DataError
from bayesfed.inputs.coding import predictor_columns
from bayesfed.inputs.moments import GroupPart, group_part, merge_group_parts
from bayesfed.inputs.spec import ModelSpec
from bayesfed.inputs.validate import PupilTable

#: Columns of the canonical table the event design reads besides the predictors.
EVENT_COLUMNS = ("outcome", "school", "cohort", "years_since", "federated")

#: Years since founding of the reference year (no term).
REFERENCE_YEAR = -1

#: ``leads``: every year before the reference year that has federated pupils.
Leads = Sequence[int] | Literal["all"]


class _EventYears:
    """The leads and effects among ``event_terms`` (the first ``n_leads`` are leads)."""

    event_terms: tuple[str, ...]
    n_leads: int

    @property
    def lead_terms(self) -> tuple[str, ...]:
        """Labels of the lead columns of ``E`` (years before founding)."""
        return self.event_terms[: self.n_leads]

    @property
    def effect_terms(self) -> tuple[str, ...]:
        """Labels of the effect columns of ``E`` (years since founding, from 0)."""
        return self.event_terms[self.n_leads:]


@dataclass(frozen=True)
class EventDesign(_EventYears):
    """Numeric arrays of the joint event-time model.

    Attributes
    ----------
    y : ndarray, shape (n_pupils,)
        Outcome, in the outcome's units.
    X : ndarray, shape (n_pupils, n_coef)
        Pupil predictors (no intercept), coded by :func:`bayesfed.inputs.coding.term_columns`.
    coef_names : tuple of str, length n_coef
        ``term`` or ``term[level]``, as in :class:`bayesfed.design.columns.Design`.
    school_idx : ndarray of int, shape (n_pupils,)
        Index of each pupil's school into ``schools``.
    schools : tuple of str, length n_schools
        School labels, sorted.
    cohort_idx : ndarray of int, shape (n_pupils,)
        Index of each pupil's cohort into ``cohorts``.
    cohorts : tuple of str, length n_cohorts
        Cohort (calendar year) labels, sorted; the first is the reference of the cohort
        effects.
    cell_idx : ndarray of int, shape (n_pupils,)
        Index of each pupil's school-by-cohort cell into ``cells``.
    cells : tuple of str, length n_cells
        Cell labels ``"school|cohort"``, sorted by school then cohort.
    E : ndarray, shape (n_pupils, n_event_terms)
        Event-year indicators, federated flag times ``1[years_since == k]`` (0/1).
    since : ndarray of int, shape (n_pupils,)
        Years since founding of each pupil's cohort.
    event_terms : tuple of str, length n_event_terms
        The ``k`` of each column of ``E`` as a string: the leads, then the effects
        (``"-2", "0", ..., "5"`` by default).
    n_leads : int
        How many of ``event_terms`` (the first ones) are leads.
    n_dropped : int
        Pupils of the input table outside the modelled years, not in the arrays.
    federated : ndarray, shape (n_pupils,)
        The school's federated flag (0/1).
    federation_idx : ndarray of int, shape (n_pupils,)
        Index into ``federations`` of a federated school's federation, -1 for a matched
        school (all -1 when the table has no ``federation`` column).
    federations : tuple of str
        Federation labels, sorted (empty without a ``federation`` column).
    type_idx : ndarray of int, shape (n_pupils,)
        Index into ``types`` of a federated school's federation type, -1 otherwise.
    types : tuple of str
        Federation types, sorted (empty without a ``federation_type`` column).
    """

    y: np.ndarray
    X: np.ndarray
    coef_names: tuple[str, ...]
    school_idx: np.ndarray
    schools: tuple[str, ...]
    cohort_idx: np.ndarray
    cohorts: tuple[str, ...]
    cell_idx: np.ndarray
    cells: tuple[str, ...]
    E: np.ndarray
    since: np.ndarray
    event_terms: tuple[str, ...]
    n_leads: int
    n_dropped: int
    federated: np.ndarray
    federation_idx: np.ndarray
    federations: tuple[str, ...]
    type_idx: np.ndarray
    types: tuple[str, ...]

    @property
    def post(self) -> np.ndarray:
        """1 for a federated school's pupil in a year since founding >= 0, shape (n_pupils,)."""
        return self.E[:, self.n_leads:].sum(axis=1)

    @property
    def x_mean(self) -> np.ndarray:
        """Mean of each predictor over the pupils, shape (n_coef,)."""
        return self.X.mean(axis=0)

    @property
    def federated_mean(self) -> float:
        """Share of the pupils in federated schools."""
        return float(self.federated.mean())

    @property
    def n_pupils(self) -> int:
        return int(self.y.shape[0])


@dataclass(frozen=True)
class CellStats(_EventYears):
    """Sufficient statistics of the Gaussian likelihood, per school-by-cohort cell, with the
    labels of the model's dimensions: all the event-time models need of the pupils.

    Attributes
    ----------
    n : ndarray of int, shape (n_cells,)
        Pupils per cell.
    y_mean : ndarray, shape (n_cells,)
        Cell mean of the outcome (outcome units).
    X_mean : ndarray, shape (n_cells, n_coef)
        Cell means of the pupil predictors.
    E : ndarray, shape (n_cells, n_event_terms)
        The cell's event-year row (constant within a cell).
    cohort_idx, school_idx : ndarray of int, shape (n_cells,)
        The cell's cohort and school.
    since : ndarray of int, shape (n_cells,)
        The cell's years since founding (``cohort - founding_year``; for a matched school, of
        the federation it was matched to).
    federated, post : ndarray, shape (n_cells,)
        The school's federated flag; 1 for a federated school's cell in a year since founding
        >= 0 (0/1).
    federation_idx, type_idx : ndarray of int, shape (n_cells,)
        The school's federation and federation type (-1 for a matched school).
    XX, Xy, yy : ndarray, shapes (n_coef, n_coef), (n_coef,), ()
        Pooled within-cell cross products of the predictors and outcome centred at their
        cell means: :math:`\\sum_i \\tilde x_i \\tilde x_i^\\top`,
        :math:`\\sum_i \\tilde x_i \\tilde y_i`, :math:`\\sum_i \\tilde y_i^2`.
    school_within : ndarray, shape (n_schools, 1 + n_coef, 1 + n_coef)
        The same cross products of ``[y, X]`` (outcome first) summed over each school's cells
        only: what one school adds to them (leave-one-school-out).
    coef_names, schools, cohorts, cells, event_terms, n_leads, federations, types
        As in :class:`EventDesign`.
    n_dropped : int
        Pupils of the input table outside the modelled years.
    """

    n: np.ndarray
    y_mean: np.ndarray
    X_mean: np.ndarray
    E: np.ndarray
    cohort_idx: np.ndarray
    school_idx: np.ndarray
    since: np.ndarray
    federated: np.ndarray
    post: np.ndarray
    federation_idx: np.ndarray
    type_idx: np.ndarray
    XX: np.ndarray
    Xy: np.ndarray
    yy: np.ndarray
    school_within: np.ndarray
    coef_names: tuple[str, ...] = ()
    schools: tuple[str, ...] = ()
    cohorts: tuple[str, ...] = ()
    cells: tuple[str, ...] = ()
    event_terms: tuple[str, ...] = ()
    n_leads: int = 0
    federations: tuple[str, ...] = ()
    types: tuple[str, ...] = ()
    n_dropped: int = 0

    @property
    def n_pupils(self) -> int:
        return int(self.n.sum())

    @property
    def x_mean(self) -> np.ndarray:
        """Mean of each predictor over the pupils, shape (n_coef,)."""
        return self.n @ self.X_mean / self.n_pupils

    @property
    def federated_mean(self) -> float:
        """Share of the pupils in federated schools."""
        return float(self.n @ self.federated / self.n_pupils)

    def sd(self) -> tuple[float, np.ndarray]:
        """Standard deviations (ddof 1) over the pupils of the outcome and of each predictor:
        the pooled within-cell sums of squares plus the between-cell ones."""
        y_between = self.n @ (self.y_mean - self.n @ self.y_mean / self.n_pupils) ** 2
        X_between = self.n @ (self.X_mean - self.x_mean) ** 2
        return (float(np.sqrt((self.yy + y_between) / (self.n_pupils - 1))),
                np.sqrt((np.diag(self.XX) + X_between) / (self.n_pupils - 1)))


@dataclass(frozen=True)
class CellPart:
    """Per-cell sufficient statistics of some consecutive pupils; parts merge exactly
    (:func:`merge_cell_parts`), so a table can be reduced batch by batch or by several
    workers.

    Attributes
    ----------
    groups : GroupPart
        Keys: one row per distinct (school, cohort, years since founding, federated flag,
        federation, federation type) of the pupils (labels "" where absent); per key the count,
        the means of the outcome (first) and the predictors and their centred cross products.
    coef_names : tuple of str
    n_dropped : int
        Pupils outside the modelled years.
    """

    groups: GroupPart
    coef_names: tuple[str, ...]
    n_dropped: int = 0


def cell_part(keys: pd.DataFrame, y: np.ndarray, X: np.ndarray, coef_names: tuple[str, ...],
              n_dropped: int = 0) -> CellPart:
    """The :class:`CellPart` of some pupils.

    Parameters
    ----------
    keys : DataFrame
        The pupils' key columns (:func:`event_keys`), one row each.
    y : ndarray, shape (n_pupils,)
    X : ndarray, shape (n_pupils, n_coef)
    coef_names : tuple of str
    n_dropped : int
    """
    return CellPart(group_part(keys, np.column_stack([y, X])), coef_names, n_dropped)


def merge_cell_parts(a: CellPart, b: CellPart) -> CellPart:
    """The part of ``a``'s pupils followed by ``b``'s: counts added, means pooled and each
    cell's cross products combined exactly (Chan, Golub and LeVeque's update,
    :func:`bayesfed.inputs.moments.merge_group_parts`)."""
    return CellPart(merge_group_parts(a.groups, b.groups), a.coef_names,
                    a.n_dropped + b.n_dropped)


def data_leads(since: np.ndarray, federated: np.ndarray, leads: Leads) -> list[int]:
    """The lead years of a model: ``leads`` sorted, or with ``"all"`` every year before the
    reference year in which some federated pupil (cell) is observed."""
    if leads != "all":
        return sorted(leads)
    before = since[(np.asarray(federated) == 1) & (since < REFERENCE_YEAR)]
    return sorted(int(k) for k in np.unique(before))


def finish_cells(part: CellPart, leads: Leads, years_after: int) -> CellStats:
    """The :class:`CellStats` of a part holding every pupil.

    Cells outside the modelled years (before the first lead, after ``years_after``) are
    dropped and their pupils counted in ``n_dropped``.

    Raises
    ------
    ValueError
        The years since founding, the federation, its type or the federated flag varies within
        a school-by-cohort cell (a table not validated), or an event term has no federated
        pupil (its coefficient would not be identified).
    """
    groups = part.groups
    keys = groups.keys
    if keys.duplicated(["school", "cohort"]).any():
        raise ValueError("years since founding, federation or cohort vary within a "
                         "school-by-cohort cell")
    since = keys["since"].to_numpy(dtype=np.int64)
    federated = keys["federated"].to_numpy(dtype=float)
    leads = data_leads(since, federated, leads)
    years = [*leads, *range(years_after + 1)]
    keep = (since >= min(leads, default=REFERENCE_YEAR)) & (since <= years_after)
    n_dropped = part.n_dropped + int(groups.n[~keep].sum())
    keys, since, federated = keys.loc[keep].reset_index(drop=True), since[keep], federated[keep]
    school_idx, schools = pd.factorize(keys["school"], sort=True)
    cohort_idx, cohorts = pd.factorize(keys["cohort"].to_numpy(dtype=np.int64), sort=True)
    order = np.lexsort((cohort_idx, school_idx))  # cells sorted by school, then cohort
    rows = np.flatnonzero(keep)[order]
    keys, since, federated = keys.iloc[order].reset_index(drop=True), since[order], federated[order]
    n, mean, within = groups.n[rows], groups.mean[rows], groups.within[rows]
    school_idx, cohort_idx = school_idx[order], cohort_idx[order]
    E = federated[:, None] * (since[:, None] == np.array(years)[None, :])
    empty = [str(k) for k, count in zip(years, n @ E, strict=True) if count == 0]
    if empty:
        raise ValueError(f"no federated pupil in event year(s) {empty}: their terms are not "
                         "identified; leave them out of leads/effects")
    federation_idx, federations = _cell_labels(keys["federation"], federated)
    type_idx, types = _cell_labels(keys["federation_type"], federated)
    k = len(part.coef_names)
    school_within = np.zeros((len(schools), 1 + k, 1 + k))
    np.add.at(school_within, school_idx, within)
    gram = school_within.sum(axis=0)
    return CellStats(
        # contiguous, not views of ``mean``: see bayesfed.design.suffstats.summary_from
        n=n.astype(np.int64), y_mean=np.ascontiguousarray(mean[:, 0]),
        X_mean=np.ascontiguousarray(mean[:, 1: 1 + k]), E=E,
        cohort_idx=cohort_idx.astype(np.int64), school_idx=school_idx.astype(np.int64),
        since=since, federated=federated, post=E[:, len(leads):].sum(axis=1),
        federation_idx=federation_idx, type_idx=type_idx,
        XX=np.ascontiguousarray(gram[1:, 1:]), Xy=np.ascontiguousarray(gram[1:, 0]),
        yy=gram[0, 0], school_within=school_within,
        coef_names=part.coef_names, schools=tuple(str(s) for s in schools),
        cohorts=tuple(str(c) for c in cohorts),
        cells=tuple(f"{schools[s]}|{cohorts[c]}" for s, c in zip(school_idx, cohort_idx,
                                                                  strict=True)),
        event_terms=tuple(str(k) for k in years), n_leads=len(leads),
        federations=federations, types=types, n_dropped=n_dropped)


def _cell_labels(labels: pd.Series, federated: np.ndarray) -> tuple[np.ndarray, tuple[str, ...]]:
    """Index of each federated cell's label (-1 for matched cells) and the sorted labels."""
    labels = labels.where((federated == 1) & (labels != ""))
    idx, uniques = pd.factorize(labels, sort=True, use_na_sentinel=True)
    return idx.astype(np.int64), tuple(str(u) for u in uniques)


def event_keys(school: np.ndarray, cohort: np.ndarray, since: np.ndarray,
               federated: np.ndarray, federation: np.ndarray, federation_type: np.ndarray
               ) -> pd.DataFrame:
    """The key columns of :class:`CellPart` (labels "" where absent), one row a pupil."""
    return pd.DataFrame({"school": school, "cohort": cohort, "since": since,
                         "federated": federated, "federation": federation,
                         "federation_type": federation_type})


def _check_years(leads: Leads, effects: Sequence[int]) -> None:
    if leads != "all" and (any(k > REFERENCE_YEAR - 1 for k in leads)
                           or len(set(leads)) != len(leads)):
        raise ValueError(f"leads must be distinct years <= -2, got {list(leads)}")
    if list(effects) != list(range(len(effects))) or not effects:
        raise ValueError(f"effects must be the consecutive years 0, 1, ..., got {list(effects)}")


def build_event_design(
    frame: pd.DataFrame,
    pupil_terms: Sequence[str],
    categorical: Mapping[str, tuple[Sequence[str], str]] | None = None,
    leads: Leads = (-2,),
    effects: Sequence[int] = range(6),
) -> EventDesign:
    """Build the joint event-time model's arrays from a canonical pupil table.

    Parameters
    ----------
    frame : DataFrame
        Validated table with canonical names (e.g. ``PupilTable.frame``): ``outcome``,
        ``school``, ``cohort``, ``years_since``, ``federated`` and each pupil term; optional
        ``federation`` and ``federation_type`` (blank for matched schools).
    pupil_terms : sequence of str
        Pupil-level terms, in the order their coefficients are reported.
    categorical : mapping, optional
        ``term -> (levels, reference)`` for categorical terms.
    leads : sequence of int, or "all"
        Years before founding with a term, each <= -2 (sorted in the output); ``"all"``: every
        such year with federated pupils.
    effects : sequence of int
        Years since founding with a term: 0, 1, ..., K.

    Returns
    -------
    EventDesign
        Pupils with ``years_since`` outside ``[min(leads), max(effects)]`` are dropped and
        counted in ``n_dropped``.

    Raises
    ------
    ValueError
        A needed column is missing, the years are not as described, or an event term has no
        federated pupil (its coefficient would not be identified by the data).
    """
    effects = list(effects)
    _check_years(leads, effects)
    missing = [c for c in (*EVENT_COLUMNS, *pupil_terms) if c not in frame.columns]
    if missing:
        raise ValueError(f"the table has no column(s) {missing}")
    since = frame["years_since"].to_numpy(dtype=np.int64)
    leads = data_leads(since, frame["federated"].to_numpy(), leads)
    low = min(leads, default=REFERENCE_YEAR)
    keep = (since >= low) & (since <= effects[-1])
    kept = frame.loc[keep].reset_index(drop=True)
    since = since[keep]
    X, names = predictor_columns(kept, pupil_terms, categorical)
    years = [*leads, *effects]
    federated = kept["federated"].to_numpy(dtype=float)
    E = federated[:, None] * (since[:, None] == np.array(years)[None, :])
    empty = [str(k) for k, n in zip(years, E.sum(axis=0), strict=True) if n == 0]
    if empty:
        raise ValueError(f"no federated pupil in event year(s) {empty}: their terms are not "
                         "identified; leave them out of leads/effects")
    school_idx, schools = pd.factorize(kept["school"].astype(str), sort=True)
    cohort_idx, cohorts = pd.factorize(kept["cohort"].astype(np.int64), sort=True)
    federation_idx, federations = _labels(kept, "federation", federated)
    type_idx, types = _labels(kept, "federation_type", federated)
    cell_key = school_idx.astype(np.int64) * len(cohorts) + cohort_idx
    cell_idx, cell_keys = pd.factorize(cell_key, sort=True)
    return EventDesign(
        y=kept["outcome"].to_numpy(dtype=float),
        X=X,
        coef_names=tuple(names),
        school_idx=school_idx.astype(np.int64),
        schools=tuple(str(s) for s in schools),
        cohort_idx=cohort_idx.astype(np.int64),
        cohorts=tuple(str(c) for c in cohorts),
        cell_idx=cell_idx.astype(np.int64),
        cells=tuple(f"{schools[k // len(cohorts)]}|{cohorts[k % len(cohorts)]}"
                    for k in cell_keys),
        E=E,
        since=since,
        event_terms=tuple(str(k) for k in years),
        n_leads=len(leads),
        n_dropped=int((~keep).sum()),
        federated=federated,
        federation_idx=federation_idx,
        federations=federations,
        type_idx=type_idx,
        types=types,
    )


def _labels(frame: pd.DataFrame, column: str, federated: np.ndarray
            ) -> tuple[np.ndarray, tuple[str, ...]]:
    """Index of each federated pupil's label in ``column`` (-1 for matched schools) and the
    sorted labels; all -1 and no labels when the column is absent."""
    if column not in frame.columns:
        return np.full(len(frame), -1, dtype=np.int64), ()
    labels = frame[column].astype("string").where(federated == 1)
    idx, uniques = pd.factorize(labels, sort=True, use_na_sentinel=True)
    return idx.astype(np.int64), tuple(str(u) for u in uniques)


def cell_stats(design: EventDesign) -> CellStats:
    """Per-cell counts and means and the within-cell cross products of a design.

    Computed as the reduction of a table read in batches computes them
    (:func:`cell_part`, :func:`finish_cells`), in one part.

    Raises
    ------
    ValueError
        The years since founding, the federation, its type or the cohort varies within a cell
        (the table was not validated: a school-level column not constant within school).
    """
    keys = event_keys(np.asarray(design.schools, dtype=object)[design.school_idx],
                      np.asarray(design.cohorts).astype(np.int64)[design.cohort_idx],
                      design.since, design.federated.astype(np.int64),
                      _label_values(design.federations, design.federation_idx),
                      _label_values(design.types, design.type_idx))
    part = cell_part(keys, design.y, design.X, design.coef_names, design.n_dropped)
    years = [int(k) for k in design.event_terms]
    return finish_cells(part, years[: design.n_leads], len(years) - design.n_leads - 1)


def _label_values(labels: tuple[str, ...], idx: np.ndarray) -> np.ndarray:
    """Each row's label ("" for -1)."""
    return np.asarray(("", *labels), dtype=object)[idx + 1]


def event_design_for(table: PupilTable, spec: ModelSpec) -> EventDesign:
    """The event-time design of an ``event_time`` spec on the whole table.

    Raises
    ------
    DataError
        An event year the spec asks for has no federated pupil (its term is not identified).
    """
    event = spec.event_options
    try:
        return build_event_design(table.frame, spec.predictors.pupil, spec.categorical_coding(),
                                  leads=event.leads, effects=range(event.years_after + 1))
    except ValueError as exc:
        raise DataError(f"{spec.source}: {exc}") from None
