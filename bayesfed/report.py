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


def _num(value: float | None, digits: int) -> str:
    """A diagnostic value, or "undefined" (a chain that never moved)."""
    return "undefined" if value is None else f"{value:.{digits}f}"


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
        f"{_num(d['max_r_hat'], 3)} / {_num(d['min_ess_bulk'], 0)} / {d['divergences']}"
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


def _interval(stats: dict, digits: int = 2) -> str:
    return f"[{stats['hdi_low']:.{digits}f}, {stats['hdi_high']:.{digits}f}]"


def pre_trend_verdict(fit: dict) -> str:
    """Plain-language reading of the lead terms of an event-time fit (numbers from it)."""
    leads = fit["pre_trend"]["leads"]
    if not leads:
        return ("The model has no lead terms, so pre-federation trends were not checked "
                "(add `leads = [-2]` to the spec's `[event]` section).")
    effects = fit["federation_effect"]
    shown = "; ".join(f"year {k}: {effects[k]['mean']:.2f} {_interval(effects[k])}"
                      for k in leads)
    if fit["pre_trend"]["flagged"]:
        return (f"**Pre-trend flagged.** Before founding, federated schools already differed "
                f"from their reference year (-1) relative to matched schools ({shown}; a 94% "
                "HDI excludes 0). The effects after founding may partly continue a trend that "
                "began before federation; read them with care.")
    return (f"No sign of a pre-federation trend: every lead's 94% HDI covers 0 ({shown}). "
            "This supports, but cannot prove, that federated and matched schools would have "
            "moved in parallel without federation.")


def event_time_section(fit: dict, fits: list[dict], published: pd.DataFrame,
                       figure: str | None = None) -> list[str]:
    """The joint event-time model: trajectory table, pre-trend check, variance partition,
    heterogeneity, and the trajectory figure when one was drawn (``figure``: its Markdown)."""
    effects = fit["federation_effect"]
    per_year = {f["year"]: f for f in fits if f.get("family", "two_level") == "two_level"
                and "federation_effect" in f and f["year"] is not None}
    comparison = fit.get("per_year_comparison", {})
    ratios = comparison.get("width_ratio", {})
    per_model = comparison.get("model", "per-year")
    lines = [f"## Joint event-time model ({fit['model']})", "",
             f"{fit['n_pupils']:,} pupils in {fit['n_schools']} schools, {fit['n_cells']:,} "
             f"school-by-cohort cells and {fit['n_cohorts']} cohorts, fitted at once"
             + (f" ({fit['n_dropped']:,} pupils outside the modelled years left out)"
                if fit["n_dropped"] else "") + ". The reference is year -1, the last cohort "
             "before founding; years before it are placebo leads.", "",
             f"| years since founding | mean (sd) | 94% HDI | P(effect > 0) | R-hat / ESS bulk "
             f"| {per_model} mean [94% HDI] | width ratio joint / {per_model} | "
             "paper (SE) |", "|---|---|---|---|---|---|---|---|"]
    for key in sorted([*effects, str(fit["reference_year"])], key=int):
        if key not in effects:
            lines.append(f"| {key} (reference) | 0 | | | | | | |")
            continue
        e, other = effects[key], per_year.get(int(key))
        lead = " (lead)" if int(key) < 0 else ""
        lines.append(
            f"| {key}{lead} | {_cell(e['mean'], e['sd'])} | {_interval(e)} | "
            f"{e['p_positive']:.3f} | {e['r_hat']:.3f} / {e['ess_bulk']:.0f} | "
            + (f"{other['federation_effect']['mean']:.2f} "
               f"{_interval(other['federation_effect'])}" if other else "") + " | "
            + (f"{ratios[key]:.2f}" if key in ratios else "") + " | "
            + (_published(published, "M2", int(key), "federated") if int(key) >= 0 else "")
            + " |")
    trajectory = fit["trajectory"]
    lines += ["", f"P(effect in year {trajectory['last']} > effect in year "
              f"{trajectory['first']}) = {trajectory['p_last_gt_first']:.3f}."]
    if ratios:
        lines.append(f"Across years {min(ratios, key=int)}-{max(ratios, key=int)} the joint "
                     f"model's 94% intervals are {min(ratios.values()):.2f}-"
                     f"{max(ratios.values()):.2f} times as wide as those of the separate "
                     f"{per_model} fits.")
    if figure:
        lines += ["", figure]
    lines += ["", "### Pre-trend check", "", pre_trend_verdict(fit), "",
              "### Variance partition (share of the residual variance, %)", "",
              "| school | school-by-cohort | pupil |", "|---|---|---|",
              "| " + " | ".join(_pct(fit["variance_partition"][k])
                               for k in ("school", "cell", "pupil")) + " |", ""]
    params = fit["params"]
    rows = [(name, label) for name, label in (
        ("federated_gap", "federated - matched gap in the reference year"),
        ("tau_step", "random-walk step sd of the effect"),
        ("sd_federation_effect", "sd of the effect between federations"),
        ("sd_type", "sd of the effect between federation types"),
        ("sd_school", "school sd"), ("sd_cell", "school-by-cohort sd"), ("sigma", "pupil sd"))
        if name in params]
    lines += ["| parameter | mean (sd) | 94% HDI |", "|---|---|---|"]
    lines += [f"| {label} | {_cell(params[n]['mean'], params[n]['sd'])} | "
              f"{_interval(params[n])} |" for n, label in rows]
    if "type_effect" in fit:
        lines += ["", "### Effect by federation type (average over the years after founding)",
                  "", "| type | mean (sd) | 94% HDI | P(effect > 0) |", "|---|---|---|---|"]
        lines += [f"| {k} | {_cell(v['mean'], v['sd'])} | {_interval(v)} | "
                  f"{v['p_positive']:.3f} |" for k, v in sorted(fit["type_effect"].items())]
    d = fit["diagnostics"]
    lines += ["", f"Diagnostics: max R-hat {_num(d['max_r_hat'], 3)}, min bulk ESS "
              f"{_num(d['min_ess_bulk'], 0)}, min tail ESS {_num(d['min_ess_tail'], 0)}, "
              f"{d['divergences']} divergences: "
              + ("ok." if d["ok"] else "**FAILED** (" + "; ".join(d["problems"]) + ")."), ""]
    return lines


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


def render_markdown(summary: dict, title: str = "bayesfed report",
                    figures: dict[str, str] | None = None) -> str:
    """The whole report as Markdown.

    Parameters
    ----------
    summary : dict
        The content of ``summary.json``.
    title : str
        First heading.
    figures : dict of str to str, optional
        Figure name -> its Markdown (``![alt](path)``); ``trajectory`` goes into the
        event-time section.
    """
    published = load_published()
    figures = figures or {}
    fits = summary["fits"]
    two_level = [f for f in fits if f.get("family", "two_level") == "two_level"]
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
    models = sorted({f["model"] for f in two_level})
    for model in models:
        lines += model_table([f for f in two_level if f["model"] == model], published)
    lines += federation_table(two_level, published)
    for fit in fits:
        if fit.get("family") == "event_time":
            lines += event_time_section(fit, fits, published, figures.get("trajectory"))
    if two_level:
        lines += decomposition_table(two_level)
    failed_reml = [f for f in two_level if "error" in f["reml"]]
    if failed_reml:
        lines += ["## REML cross-check failures", ""]
        lines += [f"- {f['model']} {_year_label(f['year'])}: {f['reml']['error']}"
                  for f in failed_reml]
    return "\n".join(lines)
