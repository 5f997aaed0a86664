"""Markdown reports of a fit folder, in the paper's layout (Tables 3, 4 and 5).

Every number comes from ``summary.json`` (:mod:`bayesfed.summarize`) or from the transcribed
published tables (:mod:`bayesfed.published`); this module only formats them. Each model gets
one table with a column per year since founding. A coefficient takes three rows: the posterior
mean (sd), the REML estimate (SE) on the same pupils, and the published value (SE) where the
paper has one. Variance rows give posterior means with 94% HDIs, in percent. Every table ends
with its fits' diagnostics; a fit that failed them is flagged in the table and in a warning at
the top of the report.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from bayesfed.published import load_published

#: Row labels of the paper's tables, by coefficient name.
LABELS = {
    "intercept": "Constant",
    "fsm": "Eligible for FSM",
    "idaci": "IDACI score",
    "male": "Male",
    "sen[school_action]": "School Action",
    "sen[school_action_plus]": "School Action Plus",
    "sen[statemented]": "Statemented",
    "non_white_british": "Non-White British",
    "ks2": "Prior attainment at KS2",
    "federated": "Federation",
}

#: Which published table holds a model's values, and the table's title.
PAPER_TABLES = {
    "M0": (3, "Table 3: empty model"),
    "M1": (4, "Table 4: model with pupil predictors"),
    "M2": (5, "Table 5: model with federation and pupil predictors"),
}


def _year_label(year: int | None) -> str:
    if year is None:
        return "all pupils"
    return "Year of foundation" if year == 0 else f"Year {year}"


def _cell(mean: float | None, sd: float | None, digits: int = 2) -> str:
    if mean is None:
        return ""
    return f"{mean:.{digits}f}" + ("" if sd is None else f" ({sd:.{digits}f})")


def _pct(stats: dict | None) -> str:
    """A share as percent with its HDI: ``17.9 [14.1, 21.6]``."""
    if not stats:
        return ""
    low, high = 100 * stats["hdi_low"], 100 * stats["hdi_high"]
    return f"{100 * stats['mean']:.1f} [{low:.1f}, {high:.1f}]"


def _published(published: pd.DataFrame, model: str, year: int | None, term: str) -> str:
    if model not in PAPER_TABLES or year is None:
        return ""
    table = PAPER_TABLES[model][0]
    rows = published[(published["table"] == table) & (published["year"] == year)
                      & (published["term"] == term)]
    if rows.empty:
        return ""
    est, se = rows["estimate"].iloc[0], rows["se"].iloc[0]
    return f"{est:g}" + ("" if pd.isna(se) else f" ({se:g})")


def _row(label: str, cells: Sequence[str]) -> str:
    return "| " + " | ".join([label, *cells]) + " |"


def _reml_pct(fit: dict, key: str, level: str) -> str:
    value = fit["reml"].get(key, {}).get(level)
    return "" if value is None else f"{100 * value:.1f}"


def model_table(fits: list[dict], published: pd.DataFrame) -> list[str]:
    """Markdown lines of one model's table; ``fits`` are that model's fits, by year."""
    model = fits[0]["model"]
    has_paper = model in PAPER_TABLES and any(f["year"] is not None for f in fits)
    title = PAPER_TABLES[model][1] if has_paper else f"Model {model}"
    lines = [f"## {title} ({model})", ""]
    header = ["", *(_year_label(f["year"]) for f in fits)]
    lines += [_row(header[0], header[1:]), "|" + "---|" * len(header)]

    for name in fits[0]["terms"]:
        label = LABELS.get(name, name)
        lines.append(_row(f"**{label}**", [_cell(f["params"][name]["mean"],
                                                  f["params"][name]["sd"]) for f in fits]))
        lines.append(_row("  REML", [_cell(*f["reml"]["coef"][name]) if "coef" in f["reml"]
                                     else "failed" for f in fits]))
        if has_paper:
            lines.append(_row("  paper", [_published(published, model, f["year"], name)
                                          for f in fits]))
    for level in ("school", "pupil"):
        lines.append(_row(f"**% variance {level}**",
                          [_pct(f["variance_partition"][level]) for f in fits]))
        lines.append(_row("  REML", [_reml_pct(f, "variance_partition", level) for f in fits]))
        if has_paper and model == "M0":
            lines.append(_row("  paper", [_published(published, model, f["year"],
                                                     f"vpc_{level}") for f in fits]))
    if any("variance_explained" in f for f in fits):
        ref = next(f["reference"] for f in fits if "reference" in f)
        for level in ("school", "pupil"):
            lines.append(_row(f"**% variance explained, {level} (vs {ref})**",
                              [_pct(f.get("variance_explained", {}).get(level)) for f in fits]))
            lines.append(_row("  REML", [_reml_pct(f, "variance_explained", level)
                                         for f in fits]))
            if has_paper:
                lines.append(_row("  paper", [_published(published, model, f["year"],
                                                         f"prv_{level}") for f in fits]))
    lines.append(_row("sd school / sigma", [
        f"{f['params']['sd_school']['mean']:.2f} / {f['params']['sigma']['mean']:.2f}"
        for f in fits]))
    lines.append(_row("pupils / schools", [f"{f['n_pupils']:,} / {f['n_schools']}"
                                           for f in fits]))
    lines.append(_row("max R-hat / min ESS bulk / divergences", [
        f"{d['max_r_hat']:.3f} / {d['min_ess_bulk']:.0f} / {d['divergences']}"
        for d in (f["diagnostics"] for f in fits)]))
    lines.append(_row("diagnostics", ["ok" if f["diagnostics"]["ok"] else "**FAILED**"
                                      for f in fits]))
    paper = "; the published value (SE)" if has_paper else ""
    lines += ["", f"Cells: posterior mean (sd); REML estimate (SE) on the same pupils{paper}. "
              "Variance rows: posterior mean [94% HDI], in percent.", ""]
    return lines


def federation_table(fits: list[dict], published: pd.DataFrame) -> list[str]:
    """The year-by-year federation effect of the fits that have one."""
    rows = [f for f in fits if "federation_effect" in f]
    if not rows:
        return []
    lines = ["## Federation impact by year", "",
             "| model | year | mean | sd | 94% HDI | P(effect > 0) | REML (SE) | paper (SE) |",
             "|---|---|---|---|---|---|---|---|"]
    for f in rows:
        e = f["federation_effect"]
        lines.append(
            f"| {f['model']} | {_year_label(f['year'])} | {e['mean']:.2f} | {e['sd']:.2f} | "
            f"[{e['hdi_low']:.2f}, {e['hdi_high']:.2f}] | {e['p_positive']:.3f} | "
            f"{_cell(*f['reml']['coef']['federated']) if 'coef' in f['reml'] else 'failed'} | "
            f"{_published(published, f['model'], f['year'], 'federated')} |")
    return [*lines, ""]


def decomposition_table(fits: list[dict]) -> list[str]:
    """Rights & Sterba shares of the model-implied variance, per fit."""
    lines = ["## Variance decomposition (share of model-implied total variance, %)", "",
             "| model | year | fixed effects | school | pupil | R² marginal | R² conditional |",
             "|---|---|---|---|---|---|---|"]
    for f in fits:
        d = f["decomposition"]
        lines.append(f"| {f['model']} | {_year_label(f['year'])} | " + " | ".join(
            _pct(d[k]) for k in ("fixed", "school", "pupil", "r2_marginal", "r2_conditional"))
            + " |")
    return [*lines, ""]


def render_markdown(summary: dict, title: str = "bayesfed report") -> str:
    """The whole report as Markdown.

    Parameters
    ----------
    summary : dict
        The content of ``summary.json``.
    title : str
        First heading.
    """
    published = load_published()
    fits = summary["fits"]
    lines = [f"# {title}", ""]
    failed = [f for f in fits if not f["diagnostics"]["ok"]]
    if failed:
        lines += [f"> **WARNING: {len(failed)} of {len(fits)} fits failed their sampling "
                  "diagnostics; their estimates are not trustworthy:**", ">"]
        lines += [f"> - {f['model']} {_year_label(f['year'])}: "
                  f"{'; '.join(f['diagnostics']['problems'])}" for f in failed]
        lines.append("")
    hashes = sorted({f["data_sha256"] for f in fits})
    if len(hashes) > 1:
        lines += [f"> **WARNING: these fits come from {len(hashes)} different data files** "
                  "(input hashes differ); compare them with care.", ""]
    gates = summary["gates"]
    lines += [
        f"{len(fits)} fits; sampler {', '.join(sorted({f['sampler'] for f in fits}))}; "
        f"{fits[0]['draws']:,} posterior draws per fit; intervals are {summary['prob']:.0%} "
        f"highest-density intervals. Diagnostic gates: R-hat <= {gates['max_r_hat']}, bulk and "
        f"tail ESS >= {gates['min_ess_bulk']}, no divergences. Data SHA-256 "
        f"`{hashes[0][:12]}`.", ""]
    models = sorted({f["model"] for f in fits})
    for model in models:
        lines += model_table([f for f in fits if f["model"] == model], published)
    lines += federation_table(fits, published)
    lines += decomposition_table(fits)
    failed_reml = [f for f in fits if "error" in f["reml"]]
    if failed_reml:
        lines += ["## REML cross-check failures", ""]
        lines += [f"- {f['model']} {_year_label(f['year'])}: {f['reml']['error']}"
                  for f in failed_reml]
    return "\n".join(lines)
