"""Which columns a specification needs of a table, and the column problems that stop
validation before any row is read (rule 1 of :mod:`bayesfed.inputs.validate`)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import pandas as pd

from bayesfed.errors import DataError
from bayesfed.inputs.problems import Problem, message
from bayesfed.inputs.schema import ROLES
from bayesfed.inputs.spec import ModelSpec

#: Largest magnitude a numeric value may have. Beyond it float64 no longer holds whole numbers
#: exactly, and such values in a pupil table are export errors (an identifier or a sentinel
#: code in a numeric column) that would overflow the variance computations.
MAX_ABS = 1e15

#: Roles read when present (never required): they feed summaries and consistency checks.
OPTIONAL_ROLES = ("pupil_id", "federation", "federation_type", "federated", "cohort",
                  "founding_year", "years_since")


def needed_roles(spec: ModelSpec, years: Sequence[int] | None) -> list[str]:
    """Roles and terms the model cannot do without, in reporting order.

    An ``event_time`` model also needs the federated flag and the cohort (and years since
    founding, see :func:`~bayesfed.inputs.validate.validate_table`), and the federation and its type
    when it models their deviations of the effect.
    """
    needed = ["outcome", "school", *spec.terms]
    needed += list(spec.kind.roles)
    if spec.kind.joint:
        event = spec.event_options
        needed += ["federation"] if event.federation_deviations else []
        needed += ["federation_type"] if event.type_effects else []
    return list(dict.fromkeys(needed))


#: School-level columns that must take one value per school, in reporting order.
SCHOOL_LEVEL = ("federated", "founding_year", "federation", "federation_type")


#: The value rules of one column, in reporting order (what each reports).
VALUE_RULES = ("not numeric", "infinite value", f"value larger than {MAX_ABS:g} in magnitude",
                "value not 0/1", "value outside 0-1", "value not a whole number",
                "unknown label")


@dataclass(frozen=True)
class Rules:
    """What every batch of one table is checked against, fixed before the first batch.

    Attributes
    ----------
    spec : ModelSpec
    years : tuple of int or None
        Years since founding fitted separately (None: the whole table).
    drop_incomplete : bool
    needed : tuple of str
        Roles and terms that must be present and complete, in reporting order.
    present : dict of str to str
        Canonical name -> the user's column, for every needed or optional role the table has.
    source : str
        Name of the table in messages.
    complete : tuple of str
        More of the table's columns (not this spec's) in which a blank value drops a row too
        when ``drop_incomplete``: the columns the job's other models need, so that models
        compared with each other are fitted to the same pupils.
    """

    spec: ModelSpec
    years: tuple[int, ...] | None
    drop_incomplete: bool
    needed: tuple[str, ...]
    present: dict[str, str]
    source: str
    complete: tuple[str, ...] = ()

    @property
    def read_columns(self) -> list[str]:
        """The table's columns a batch must hold: the mapped ones, then :attr:`complete`."""
        return list(dict.fromkeys([*self.present.values(), *self.complete]))


def rules_for(columns: Sequence[str], spec: ModelSpec, years: Iterable[int] | None = None,
              drop_incomplete: bool = False, source: str = "data", complete: Sequence[str] = ()
              ) -> tuple[Rules, list[Problem]]:
    """The rules of a table with these column names, and the column problems found.

    ``complete`` names more columns whose blank values drop a row with ``drop_incomplete``
    (:attr:`Rules.complete`); those the table lacks are left to the spec that needs them.

    Column problems (a needed column missing, a name held twice, one column mapped to two
    roles, an identifier used as a predictor) stop validation before any row is read; the
    caller raises them with the table's row count (:func:`column_error`).
    """
    years = None if years is None else tuple(sorted(set(int(y) for y in years)))
    columns = pd.Index(list(columns))
    needed = needed_roles(spec, years)
    if years is not None or spec.kind.joint:
        # years since founding are read, or derived from the calendar years
        needed += (["years_since"] if spec.column("years_since") in columns
                   else ["cohort", "founding_year"])
        needed = list(dict.fromkeys(needed))
    present = {name: spec.column(name) for name in [*needed, *OPTIONAL_ROLES]
               if spec.column(name) in columns}
    problems = _column_problems(columns, spec, needed, present)
    mapped = set(present.values())
    extra = tuple(dict.fromkeys(c for c in complete if c in columns and c not in mapped))
    return (Rules(spec, years, drop_incomplete, tuple(needed), present, source,
                  extra if drop_incomplete else ()), problems)


def column_error(rules: Rules, problems: list[Problem], n_rows: int) -> DataError:
    """The error of a table whose columns cannot be read (:func:`rules_for`)."""
    return DataError(message(rules.source, problems, n_rows))


def _column_problems(
    columns: pd.Index, spec: ModelSpec, needed: Sequence[str], present: dict[str, str]
) -> list[Problem]:
    """Columns the model needs but cannot read unambiguously, and mappings that cannot work."""
    problems: list[Problem] = []
    if len(columns):
        found = (f"columns found: {', '.join(map(str, columns[:12]))}"
                 f"{', ...' if len(columns) > 12 else ''}")
    else:
        found = "the table has no columns"
    for name in needed:
        if name not in present:
            column = spec.column(name)
            problems.append(Problem(
                column, name, "missing column",
                f"add the column, or map role {name!r} to one of your columns in the spec's "
                f"[columns] table ({found})"))
    roles: dict[str, list[str]] = {}
    for name, column in present.items():
        roles.setdefault(column, []).append(name)
    for column, names in roles.items():
        n_copies = int((columns == column).sum())
        if n_copies > 1:
            problems.append(Problem(
                column, column, f"the table has {n_copies} columns of this name",
                "rename or remove the repeated columns: bayesfed cannot tell which one is meant"))
        if len(names) > 1:
            problems.append(Problem(
                column, column, f"mapped to several roles ({', '.join(names)})",
                "map each role and predictor to its own column in the spec's [columns] table"))
    coding = spec.categorical_coding()
    for term in spec.terms:
        role = ROLES.get(term)
        if term in present and term not in coding and role is not None \
                and role.kind in ("id", "label"):
            problems.append(Problem(
                present[term], term, "identifiers and labels cannot be a numeric predictor",
                f"remove {term!r} from [predictors] in the spec, or declare its labels in "
                f"[categorical.{term}] (levels and reference)"))
    return problems
