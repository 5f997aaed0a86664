"""Readers: CSV and Parquet give the same validated table; input files are never changed."""

from __future__ import annotations

import hashlib

import pandas as pd
import pytest

from bayesfed.errors import DataError
from bayesfed.read import read_table
from bayesfed.validate import validate_table


def digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_csv_and_parquet_agree_and_are_untouched(tmp_path, table, m2):
    csv, pq = tmp_path / "t.csv", tmp_path / "t.parquet"
    table.to_csv(csv, index=False)
    table.to_parquet(pq, index=False)
    before = {p: (digest(p), p.stat().st_mtime_ns) for p in (csv, pq)}
    a = validate_table(read_table(csv), m2, years=[0, 1]).frame
    b = validate_table(read_table(pq), m2, years=[0, 1]).frame
    pd.testing.assert_frame_equal(a, b, check_dtype=False)
    assert before == {p: (digest(p), p.stat().st_mtime_ns) for p in (csv, pq)}


def test_csv_keeps_identifier_text(tmp_path):
    csv = tmp_path / "ids.csv"
    csv.write_text("school_id,gcse_score\n007,1.5\n010,2\n")
    assert list(read_table(csv)["school_id"]) == ["007", "010"]


def test_partitioned_parquet_folder(tmp_path, table):
    folder = tmp_path / "parts"
    folder.mkdir()
    table.iloc[:70].to_parquet(folder / "a.parquet", index=False)
    table.iloc[70:].to_parquet(folder / "b.parquet", index=False)
    assert len(read_table(folder)) == len(table)


@pytest.mark.parametrize(("name", "content", "message"), [
    ("missing.csv", None, r"^data file .*missing.csv does not exist$"),
    ("t.xlsx", b"x", r"unknown file type '.xlsx'; bayesfed reads .csv, .parquet, .pq files"),
    ("t.parquet", b"not parquet", r"^cannot read Parquet file .*t.parquet: "),
    ("t.csv", b"", r"^cannot read CSV file .*t.csv: "),
])
def test_unreadable_files(tmp_path, name, content, message):
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(DataError, match=message):
        read_table(path)
