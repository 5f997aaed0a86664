"""Figures of a report, drawn from the numbers of ``summary.json`` (computed nothing here).

Each function takes the parsed ``summary.json`` (and the published tables where a figure puts
the paper beside the posterior), writes one PNG atomically and returns its path and its alt
text. Matplotlib runs headless (the Agg backend); figures are closed after saving.
"""

from __future__ import annotations

import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from bayesfed.store import write_bytes  # noqa: E402

#: Dots per inch of the saved PNGs.
DPI = 120


def _save(fig, path: Path) -> Path:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return write_bytes(path, buffer.getvalue())


def federation_trajectory(summary: dict, published: pd.DataFrame, path: Path
                          ) -> tuple[Path, str] | None:
    """The federation effect by year since founding: joint event-time model, per-year fits and
    the paper's Table 5, with 94% intervals.

    Parameters
    ----------
    summary : dict
        ``summary.json``; its first ``event_time`` fit gives the trajectory (leads included,
        the reference year -1 drawn at 0), per-year fits with a ``federation_effect`` give one
        point each.
    published : DataFrame
        :func:`bayesfed.published.load_published`; Table 5's ``federated`` rows are drawn as
        estimate +- 1.88 SE (a 94% normal interval).
    path : Path
        PNG to write.

    Returns
    -------
    (Path, str) or None
        The file and its alt text; None when the folder has no event-time fit.
    """
    joint = next((f for f in summary["fits"] if f.get("family") == "event_time"), None)
    if joint is None:
        return None
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    effects = joint["federation_effect"]
    years = sorted([*map(int, effects), joint["reference_year"]])
    means = [0.0 if k == joint["reference_year"] else effects[str(k)]["mean"] for k in years]
    low = [0.0 if k == joint["reference_year"] else effects[str(k)]["hdi_low"] for k in years]
    high = [0.0 if k == joint["reference_year"] else effects[str(k)]["hdi_high"] for k in years]
    ax.fill_between(years, low, high, color="tab:blue", alpha=0.2, linewidth=0)
    ax.plot(years, means, "o-", color="tab:blue",
            label=f"joint event-time model ({joint['model']}), 94% HDI")
    per_year = [f for f in summary["fits"] if f.get("family", "two_level") == "two_level"
                and "federation_effect" in f and f["year"] is not None]
    if per_year:
        x = [f["year"] - 0.12 for f in per_year]
        e = [f["federation_effect"] for f in per_year]
        ax.errorbar(x, [v["mean"] for v in e],
                    yerr=[[v["mean"] - v["hdi_low"] for v in e],
                          [v["hdi_high"] - v["mean"] for v in e]],
                    fmt="s", color="tab:orange", capsize=3,
                    label=f"per-year model ({per_year[0]['model']}), 94% HDI")
    paper = published[(published["table"] == 5) & (published["term"] == "federated")]
    if not paper.empty:
        ax.errorbar(paper["year"].astype(float) + 0.12, paper["estimate"],
                    yerr=1.8808 * paper["se"], fmt="D", color="tab:gray", capsize=3,
                    label="paper, Table 5 (estimate +- 1.88 SE)")
    ax.axhline(0.0, color="black", linewidth=0.8)
    ax.axvline(-0.5, color="black", linestyle=":", linewidth=0.8)
    ax.set_xlabel("years since founding (-1: reference year; leads before it)")
    ax.set_ylabel("federation effect (outcome units)")
    ax.set_xticks(years)
    ax.legend(fontsize=8, loc="upper left")
    alt = ("Federation effect by year since founding: the joint event-time model's posterior "
           "means with 94% HDIs, the per-year models' and the paper's Table 5 estimates.")
    return _save(fig, path), alt
