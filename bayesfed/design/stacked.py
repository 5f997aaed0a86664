"""The stacked event-time design's arrays: each school's cells on its grid of years since founding.

The stacked model (:mod:`bayesfed.modelling.event_stacked`) compares the federated schools of a
founding cohort (the year their federation was founded) with the matched schools of the same cohort,
year by year since founding. Its arrays lay each school's school-by-cohort cells
(:class:`bayesfed.design.cells.CellStats`) out on one grid of consecutive years since founding,
``k_min .. K``, empty where a school has no pupils, and record each school's founding cohort,
federated flag and federation. :func:`stacked_data` also checks that the design identifies the
effects: every founding cohort with federated pupils has them in the reference year -1, and
matched pupils of its own cohort in every year it has federated ones. NumPy only, so the
reduction (:mod:`bayesfed.design.reduce`) can run the check before any model is built.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bayesfed.design.cells import REFERENCE_YEAR, CellStats


@dataclass(frozen=True)
class StackedData:
    """The pupils' statistics on each school's event-time grid: all the model needs.

    Attributes
    ----------
    cells : ndarray, shape (n_schools, T, 2 + n_coef)
        Per school and grid year: pupil count (0: no pupils), mean outcome (outcome units) and
        mean predictors (0 where empty).
    founding_idx, federated, federation_idx : ndarray of int, shape (n_schools,)
        Each school's founding cohort (index into ``foundings``), federated flag (0/1) and
        federation (index into ``federations``; -1 for a matched school).
    federation_founding : ndarray of int, shape (F,)
        Each of the F federations' founding cohort.
    years : tuple of int, length T
        The grid: years since founding ``k_min`` .. ``K``, consecutive; ``-1`` among them.
    foundings, schools, federations, coef_names : tuple of str
        Labels. Without a federation column each federated school is its own federation.
    federation_unit : {"federation", "school"}
        What ``federations`` are.
    y_mean : float
        Mean outcome over the pupils (outcome units).
    x_mean : ndarray, shape (n_coef,)
    XX, Xy, yy : pooled within-cell cross products (:class:`bayesfed.design.cells.CellStats`)
    school_within : ndarray, shape (n_schools, 1 + n_coef, 1 + n_coef)
    n_pupils, n_dropped : int
    sd_y : float
    sd_x : ndarray, shape (n_coef,)
    """

    cells: np.ndarray
    founding_idx: np.ndarray
    federated: np.ndarray
    federation_idx: np.ndarray
    federation_founding: np.ndarray
    years: tuple[int, ...]
    foundings: tuple[str, ...]
    schools: tuple[str, ...]
    federations: tuple[str, ...]
    federation_unit: str
    coef_names: tuple[str, ...]
    y_mean: float
    x_mean: np.ndarray
    XX: np.ndarray
    Xy: np.ndarray
    yy: float
    school_within: np.ndarray
    n_pupils: int
    n_dropped: int
    sd_y: float
    sd_x: np.ndarray

    @property
    def n(self) -> np.ndarray:
        """Pupils per school and grid year, shape (n_schools, T)."""
        return self.cells[:, :, 0]

    @property
    def reference(self) -> int:
        """Grid position of the reference year -1."""
        return self.years.index(REFERENCE_YEAR)

    @property
    def lead_years(self) -> tuple[int, ...]:
        return self.years[: self.reference]

    @property
    def effect_years(self) -> tuple[int, ...]:
        return self.years[self.reference + 1:]

    @property
    def n_cells(self) -> int:
        return int((self.n > 0).sum())


def stacked_data(stats: CellStats) -> StackedData:
    """Lay the cells of :class:`~bayesfed.design.cells.CellStats` out on each school's grid of
    years since founding.

    Raises
    ------
    ValueError
        A founding cohort's federated schools have no pupils in the reference year -1, or have
        pupils in a year in which no matched school of their cohort has: the comparison that
        identifies their effect is missing (the message names the cohort and the years).
    """
    since = np.asarray(stats.since, dtype=np.int64)
    years = tuple(range(min(int(since.min()), REFERENCE_YEAR), int(since.max()) + 1))
    if years[-1] < 0:
        raise ValueError("no pupil in a year since founding >= 0")
    n_schools, T, p = len(stats.schools), len(years), len(stats.coef_names)
    calendar = np.asarray(stats.cohorts, dtype=np.int64)[stats.cohort_idx]
    founding_of_cell = calendar - since
    foundings, founding_cell_idx = np.unique(founding_of_cell, return_inverse=True)
    school = stats.school_idx
    first = np.unique(school, return_index=True)[1]  # a cell of each school
    pos = since - years[0]
    cells = np.zeros((n_schools, T, 2 + p))
    cells[school, pos, 0] = stats.n
    cells[school, pos, 1] = stats.y_mean
    cells[school, pos, 2:] = stats.X_mean
    founding_idx = founding_cell_idx[first].astype(np.int64)
    federated = stats.federated[first].astype(np.int64)
    _check_comparisons(cells[:, :, 0], founding_idx, federated, foundings, years)
    if stats.federations:
        federation_idx, federations, unit = stats.federation_idx[first], stats.federations, \
            "federation"
    else:  # each federated school its own unit
        rank = np.cumsum(federated) - 1
        federation_idx = np.where(federated == 1, rank, -1)
        federations = tuple(s for s, f in zip(stats.schools, federated, strict=True) if f)
        unit = "school"
    federation_founding = np.zeros(len(federations), dtype=np.int64)
    fed = federated == 1
    federation_founding[federation_idx[fed]] = founding_idx[fed]
    sd_y, sd_x = stats.sd()
    return StackedData(
        cells=cells, founding_idx=founding_idx, federated=federated,
        federation_idx=np.asarray(federation_idx, dtype=np.int64),
        federation_founding=federation_founding, years=years,
        foundings=tuple(str(e) for e in foundings), schools=stats.schools,
        federations=tuple(federations), federation_unit=unit, coef_names=stats.coef_names,
        y_mean=float(stats.n @ stats.y_mean / stats.n_pupils), x_mean=stats.x_mean,
        XX=stats.XX, Xy=stats.Xy, yy=float(stats.yy), school_within=stats.school_within,
        n_pupils=stats.n_pupils, n_dropped=stats.n_dropped, sd_y=sd_y, sd_x=sd_x)


def _check_comparisons(n: np.ndarray, founding_idx: np.ndarray, federated: np.ndarray,
                       foundings: np.ndarray, years: tuple[int, ...]) -> None:
    """Every founding cohort with federated pupils has them in year -1, and matched pupils
    in every year it has federated ones."""
    problems = []
    reference = years.index(REFERENCE_YEAR)
    for e, label in enumerate(foundings):
        mine = founding_idx == e
        fed = n[mine & (federated == 1)].sum(axis=0)
        matched = n[mine & (federated == 0)].sum(axis=0)
        if not fed.any():
            continue
        if fed[reference] == 0:
            problems.append(f"founding cohort {label}: no federated pupil in year -1 (the "
                            "reference year)")
        alone = [years[i] for i in np.flatnonzero((fed > 0) & (matched == 0))]
        if alone:
            problems.append(f"founding cohort {label}: federated pupils but no matched "
                            f"(non-federated) pupil in year(s) since founding {alone}")
    if problems:
        raise ValueError("the stacked design compares each federated school with matched "
                         "schools of its own founding cohort in the same year; "
                         + "; ".join(problems) + ". Add matched schools for these years, "
                         "leave the years out (leads / years_after), or use design = "
                         "\"pooled\"")
