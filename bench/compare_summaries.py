"""How far the posterior means of two ``summary.json`` files of the same fits moved, in
posterior sds of the first: every parameter, variance share, variance explained and
federation effect, fit by fit (matched by model and year).

Usage: ``.venv/bin/python bench/compare_summaries.py BEFORE/summary.json AFTER/summary.json``;
prints how many means were compared and the largest shifts, ``|after - before| / sd_before``.
Used for the default priors' change (``docs/validation.md``).
"""

from __future__ import annotations

import json
import sys


def shifts(before: dict, after: dict) -> list[tuple[float, tuple, str, float, float, float]]:
    """(shift in sds, (model, year), quantity, mean before, mean after, sd before), largest
    first."""
    later = {(f["model"], f["year"]): f for f in after["fits"]}
    out = []
    for fa in before["fits"]:
        fb = later[(fa["model"], fa["year"])]
        pairs = [(name, pa, fb["params"].get(name)) for name, pa in fa["params"].items()]
        for group in ("variance_partition", "variance_explained"):
            pairs += [(f"{group}.{k}", v, fb.get(group, {}).get(k))
                      for k, v in fa.get(group, {}).items()]
        if "federation_effect" in fa and "mean" in fa["federation_effect"]:
            pairs.append(("federation_effect", fa["federation_effect"],
                          fb.get("federation_effect")))
        for name, a, b in pairs:
            if isinstance(a, dict) and isinstance(b, dict) and a.get("sd") and "mean" in b:
                out.append((abs(b["mean"] - a["mean"]) / a["sd"], (fa["model"], fa["year"]),
                            name, a["mean"], b["mean"], a["sd"]))
    return sorted(out, reverse=True)


def main() -> int:
    before, after = (json.loads(open(path).read()) for path in sys.argv[1:3])
    found = shifts(before, after)
    print(f"{len(found)} posterior means compared; the largest shifts, in posterior sds:")
    for shift, (model, year), name, a, b, sd in found[:8]:
        print(f"  {shift:.3f}  {model} year {year} {name}: {a:.4f} -> {b:.4f} (sd {sd:.4f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
