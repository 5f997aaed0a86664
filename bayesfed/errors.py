"""bayesfed's own errors: every problem a user can fix is reported as one of these.

Each carries a message meant for a person (what is wrong, where, and the fix), never a
traceback from deep inside pandas, NumPy or PyTensor.
"""

from __future__ import annotations


class BayesfedError(Exception):
    """Base class of every error bayesfed raises on purpose."""


class SpecError(BayesfedError):
    """A model specification (TOML) is malformed: unknown keys, wrong types, bad values."""


class DataError(BayesfedError):
    """The pupil table breaks the schema; the message lists every problem found."""


class OutputError(BayesfedError):
    """An output location cannot be written safely (exists without --force, not a directory)."""


class DiagnosticsError(BayesfedError):
    """Fits were written, but some failed their diagnostic gates (``bayesfed fit --strict``)."""
