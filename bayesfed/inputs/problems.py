"""A validation problem and the message that lists problems: column, role, how many rows,
example rows and the fix (:mod:`bayesfed.inputs.validate` says which rules there are)."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

#: How many example rows an error line shows, and how many characters of each value.
N_EXAMPLES = 5


MAX_SHOWN = 40


@dataclass(frozen=True)
class Problem:
    """One broken rule: which column, how many rows, examples and the fix."""

    column: str
    role: str
    what: str
    fix: str
    rows: tuple[int, ...] = ()
    n_rows: int = 0
    values: tuple[str, ...] = ()

    def line(self) -> str:
        """One line of the error message."""
        if not self.column:
            label = "table"
        else:
            label = f"column {self.column!r}" + (
                f" (role {self.role})" if self.role != self.column else "")
        where = ""
        if self.n_rows:
            shown = ", ".join(str(r) for r in self.rows)
            more = ", ..." if self.n_rows > len(self.rows) else ""
            rows = "rows" if self.n_rows > 1 else "row"
            examples = "rows" if len(self.rows) > 1 else "row"
            where = f" in {self.n_rows} {rows} (e.g. {examples} {shown}{more})"
            if self.values:
                where += f", values {', '.join(self.values)}"
        return f"{label}: {self.what}{where}. Fix: {self.fix}"


def example_rows(mask: np.ndarray, positions: np.ndarray | None = None
                 ) -> tuple[tuple[int, ...], int]:
    """Example row numbers (1-based) and the count of rows where ``mask`` holds.

    ``positions`` gives each row's 0-based position in the input table (rows of a later batch,
    or rows kept when others were dropped).
    """
    idx = np.flatnonzero(mask)
    if positions is not None:
        idx = positions[idx]
    return tuple(int(i) + 1 for i in idx[:N_EXAMPLES]), int(idx.size)


def example_values(series: pd.Series, mask: np.ndarray) -> tuple[str, ...]:
    """Example values where ``mask`` holds (see :func:`shown_values`)."""
    return shown_values(series.to_numpy()[np.flatnonzero(mask)[:N_EXAMPLES]])


def shown_values(values: np.ndarray) -> tuple[str, ...]:
    """The first values, as Python writes them, each cut to ``MAX_SHOWN`` characters."""
    out = []
    for v in values[:N_EXAMPLES]:
        if isinstance(v, (np.datetime64, np.timedelta64)):
            text = repr(str(v))
        else:
            text = repr(v.item() if isinstance(v, np.generic) else v)
        out.append(text if len(text) <= MAX_SHOWN else text[:MAX_SHOWN - 3] + "...")
    return tuple(out)


def merge_problem(a: Problem, b: Problem) -> Problem:
    """One rule broken in two consecutive row ranges: counts added, first examples kept."""
    return replace(a, rows=(a.rows + b.rows)[:N_EXAMPLES], n_rows=a.n_rows + b.n_rows,
                   values=(a.values + b.values)[:N_EXAMPLES])


def plural(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def message(source: str, problems: list[Problem], n_rows: int, n_dropped: int = 0) -> str:
    head = f"{source}: {plural(len(problems), 'problem')} in {plural(n_rows, 'row')}"
    if n_dropped:
        head += f" ({plural(n_dropped, 'incomplete row')} dropped)"
    head += " (row numbers count data rows from 1, the header excluded):"
    return "\n".join([head, *(f"  - {p.line()}" for p in problems)])
