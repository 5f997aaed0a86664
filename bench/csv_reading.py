"""Reading a national-size CSV: Arrow's reader against pandas', and CSV against Parquet.

The national study (``bayesfed simulate --scale national``, 4.5 million pupils) written once as
CSV beside its Parquet file; then, in one process, one after another: reading the CSV in
batches of :data:`bayesfed.inputs.read.BATCH_ROWS` rows with bayesfed's reader (Arrow's, each block
checked as it is read) and with pandas' chunked reader
(bayesfed's fallback), and reading + validating + reducing the event-time spec's table
(:func:`bayesfed.design.reduce.reduce_file`) from the CSV and from the Parquet file. Prints
seconds, ratios, and whether the CSV's cell statistics equal the Parquet's.

Run: ``.venv/bin/python bench/csv_reading.py [PARQUET]`` (default
``out/bench/event_time/national.parquet``, made by ``bench/event_time_scale.py``).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
from national_event_job import national_csv

from bayesfed.design.reduce import reduce_file
from bayesfed.inputs import read
from bayesfed.inputs.spec import load_spec

ROOT = Path(__file__).resolve().parent.parent


def timed(step) -> tuple[object, float]:
    start = time.perf_counter()
    out = step()
    return out, time.perf_counter() - start


def main() -> None:
    parquet = Path(sys.argv[1]) if len(sys.argv) > 1 else (
        ROOT / "out" / "bench" / "event_time" / "national.parquet")
    csv = national_csv(parquet)
    spec = load_spec(ROOT / "models" / "event_time.toml")
    rows, arrow_s = timed(lambda: sum(len(b) for b in read.read_batches(csv)))
    _, pandas_s = timed(lambda: sum(len(b) for b in read._csv_batches(
        csv, read.BATCH_ROWS, arrow=False)))
    from_csv, csv_s = timed(lambda: reduce_file(csv, spec))
    from_parquet, parquet_s = timed(lambda: reduce_file(parquet, spec))
    same = all(np.array_equal(getattr(from_csv.stats, f), getattr(from_parquet.stats, f))
               for f in ("n", "y_mean", "X_mean", "XX", "Xy", "yy"))
    close = all(np.allclose(getattr(from_csv.stats, f), getattr(from_parquet.stats, f),
                            rtol=1e-12, atol=0) for f in ("y_mean", "X_mean", "XX", "Xy"))
    print(f"{csv} ({csv.stat().st_size / 2**20:.0f} MB, {rows:,} rows)")
    print(f"  read in batches: bayesfed (Arrow) {arrow_s:.1f} s, pandas {pandas_s:.1f} s: "
          f"pandas / bayesfed {pandas_s / arrow_s:.2f}")
    print(f"  read + validate + reduce: CSV {csv_s:.1f} s, Parquet {parquet_s:.1f} s: "
          f"CSV / Parquet {csv_s / parquet_s:.2f}")
    print(f"  cell statistics CSV = Parquet: {'bit for bit' if same else 'no'}"
          f"{'' if same else f' (within 1e-12 relative: {close})'}")


if __name__ == "__main__":
    main()
