"""Reports of a fit folder in the paper's layout (Tables 3, 4 and 5), as Markdown or as a page
of the documentation site.

Every number comes from ``summary.json`` (:mod:`bayesfed.posterior.summarize`) or from the
transcribed published tables (:mod:`bayesfed.inputs.published`); this module only formats them, and
the figures are drawn by :mod:`bayesfed.report.plots`. Each model gets one table with a column per
year since founding. A coefficient takes four rows: the posterior mean (sd), its 94% HDI, the REML
estimate (SE) on the same pupils, and the published value (SE) where the paper has one.
Variance rows give posterior means with 94% HDIs, in percent. Every table ends with its fits'
diagnostics; a fit that failed them is flagged in the table and in a warning at the top of the
report. The report opens with a plain-language summary whose numbers are filled in from
``summary.json``, then the data, the paper's tables, the federation effect by year, the
event-time model, the variance decomposition, the predictive checks, the leave-one-school-out
comparison and the sampling diagnostics.

The event-time section has two forms. A pooled fit (:func:`event_time_section`) shows its
effects by year, the pre-trend check, variance partition and parameters. A stacked fit
(``"design": "stacked"``, :func:`stacked_event_section`) shows what ATT(k) estimates and
under which assumptions, ATT(k) with the aggregated leads and their average, the founding
cohort x year matrix of ATT(e,k) and of the weights w(e,k), the pre-trend check and the
sensitivity analysis (breakdown value M), the power-scaling prior sensitivity, the predictive
checks of new schools' cells, its LOO and its parameters, with an event-study and a
sensitivity figure.

Two flavours (:data:`Flavour`): ``"markdown"`` (``report.md``, figures as ``![alt](path)``)
and ``"docs"`` (MyST Markdown for the Sphinx site, figures as ``{figure}`` directives with
alt text and caption, warnings as ``{warning}`` admonitions).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import pandas as pd

from bayesfed.inputs.families import fit_kind
from bayesfed.inputs.published import load_published, published_rows
from bayesfed.posterior.intervals import PERCENT

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

#: Output flavours: GitHub-style Markdown, or MyST Markdown for the documentation site.
Flavour = Literal["markdown", "docs"]

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
    rows = published_rows(published, table, term, [year])
    if rows.empty:
        return ""
    est, se = rows["estimate"].iloc[0], rows["se"].iloc[0]
    return f"{est:g}" + ("" if pd.isna(se) else f" ({se:g})")


def _row(label: str, cells: Sequence[str]) -> str:
    return "| " + " | ".join([label, *cells]) + " |"


def _reml_cell(fit: dict, name: str) -> str:
    """A coefficient's REML estimate (SE); ``n/a`` where the cross-check does not apply (random
    slopes), ``failed`` where it failed its checks."""
    reml = fit["reml"]
    if "coef" in reml:
        return _cell(*reml["coef"][name])
    return "n/a" if "unavailable" in reml else "failed"


def _reml_pct(fit: dict, key: str, level: str) -> str:
    value = fit["reml"].get(key, {}).get(level)
    return "" if value is None else f"{100 * value:.1f}"


#: Parameters of the school-level variation besides the intercept's, reported under the
#: coefficients: random slopes' sds and correlations, the location-scale model's sd of the
#: log pupil sds and its correlation with the intercept.
SCHOOL_VARIATION = ("sd_slope[", "cor_school[", "sd_log_sigma", "cor_log_sigma")


def school_variation_section(figures: dict[str, tuple[str, str]], flavour: Flavour
                             ) -> list[str]:
    """The caterpillar plots of the schools' slopes and pupil sds (figures named
    ``school_*``), or nothing when no model has them."""
    names = sorted(k for k in figures if k.startswith("school_"))
    if not names:
        return []
    lines = ["## School-level variation", "",
             "Each school's random slope or pupil sd: its posterior mean and "
             f"{PERCENT} HDI, and the estimate from its own pupils alone (open circles). "
             "Schools with few pupils, or extreme own estimates, are pulled furthest towards "
             "the population distribution: that shrinkage is what the multilevel model adds.",
             ""]
    for name in names:
        lines += figure_lines(figures[name], figures[name][1].split(":")[0] + ".", flavour)
    return lines


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
        lines.append(_row(f"  {PERCENT} HDI", [_interval(f["params"][name]) for f in fits]))
        lines.append(_row("  REML", [_reml_cell(f, name) for f in fits]))
        if has_paper:
            lines.append(_row("  paper", [_published(published, model, f["year"], name)
                                          for f in fits]))
    # a random-slope model's sds and correlations, a location-scale model's sd of the log
    # pupil sds and its correlation (each fit of a spec has the same ones)
    for name in [k for k in fits[0]["params"] if k.startswith(SCHOOL_VARIATION)]:
        lines.append(_row(f"**{name}**", [_cell(f["params"][name]["mean"],
                                               f["params"][name]["sd"]) for f in fits]))
        lines.append(_row(f"  {PERCENT} HDI", [_interval(f["params"][name]) for f in fits]))
    for level in ("school", "pupil"):
        label = f"**% variance {level}**"
        if "vpc_by_slope" in fits[0]:
            label += " (at the slope predictors' means)"
        elif "school_sigmas" in fits[0]:
            label += " (pupil: the schools' mean E[sigma_j²])"
        lines.append(_row(label, [_pct(f["variance_partition"][level]) for f in fits]))
        lines.append(_row("  REML", [_reml_pct(f, "variance_partition", level) for f in fits]))
        if has_paper and model == "M0":
            lines.append(_row("  paper", [_published(published, model, f["year"],
                                                     f"vpc_{level}") for f in fits]))
    if any("variance_explained" in f or "comparison_refused" in f for f in fits):
        ref = next(f["reference"] for f in fits if "reference" in f)
        for level in ("school", "pupil"):
            lines.append(_row(f"**% variance explained, {level} (vs {ref}: two fits)**",
                              ["not compared" if "comparison_refused" in f
                               else _pct(f.get("variance_explained", {}).get(level))
                               for f in fits]))
            lines.append(_row("  REML", [_reml_pct(f, "variance_explained", level)
                                         for f in fits]))
            if has_paper:
                lines.append(_row("  paper", [_published(published, model, f["year"],
                                                         f"prv_{level}") for f in fits]))
    if any("r2_snijders_bosker" in f for f in fits):
        ref = next(f["reference"] for f in fits if "reference" in f)
        for level in ("pupil", "school"):
            lines.append(_row(f"**% R² Snijders & Bosker, {level} (vs {ref})**",
                              [_pct(f.get("r2_snijders_bosker", {}).get(level))
                               for f in fits]))
    if any("federation_share_between" in f for f in fits):
        lines.append(_row("**% school-level variance, federation (this fit)**",
                          [_pct(f.get("federation_share_between")) for f in fits]))
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
    refused = [f for f in fits if "comparison_refused" in f]
    paper = "; the published value (SE)" if has_paper else ""
    lines += ["", f"Cells: posterior mean (sd) and its {PERCENT} HDI; REML estimate (SE) on the "
                  "same pupils"
              f"{paper}. Variance rows: posterior mean [{PERCENT} HDI], in percent. The "
              "variance explained is the proportional reduction in variance between two fits "
              "(draws paired; conservative intervals); the R² of the decomposition below come "
              "from one posterior.", ""]
    lines += [f"**{_year_label(f['year'])}: variance explained {f['comparison_refused']}.**"
              for f in refused]
    return [*lines, ""] if refused else lines


def federation_table(fits: list[dict], published: pd.DataFrame) -> list[str]:
    """The year-by-year federation effect of the fits that have one."""
    rows = [f for f in fits if "federation_effect" in f]
    if not rows:
        return []
    lines = ["## Federation impact by year", "",
             f"| model | year | mean | sd | {PERCENT} HDI | P(effect > 0) | REML (SE) | paper "
             "(SE) |",
             "|---|---|---|---|---|---|---|---|"]
    for f in rows:
        e = f["federation_effect"]
        lines.append(
            f"| {f['model']} | {_year_label(f['year'])} | {e['mean']:.2f} | {e['sd']:.2f} | "
            f"[{e['hdi_low']:.2f}, {e['hdi_high']:.2f}] | {e['p_positive']:.3f} | "
            f"{_reml_cell(f, 'federated')} | "
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
                f"from their reference year (-1) relative to matched schools ({shown}; a {PERCENT} "
                "HDI excludes 0). The effects after founding may partly continue a trend that "
                "began before federation; read them with care.")
    return (f"No sign of a pre-federation trend: every lead's {PERCENT} HDI covers 0 ({shown}). "
            "This supports, but cannot prove, that federated and matched schools would have "
            "moved in parallel without federation.")


def event_time_section(fit: dict, fits: list[dict], published: pd.DataFrame) -> list[str]:
    """The joint event-time model: trajectory table, pre-trend check, variance partition and
    heterogeneity (its trajectory figure is drawn in the federation-impact section)."""
    effects = fit["federation_effect"]
    per_year = {f["year"]: f for f in fits if fit_kind(f).per_year
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
             f"| years since founding | mean (sd) | {PERCENT} HDI | P(effect > 0) | R-hat / ESS "
             "bulk "
             f"| {per_model} mean [{PERCENT} HDI] | width ratio joint / {per_model} | "
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
                     f"model's {PERCENT} intervals are {min(ratios.values()):.2f}-"
                     f"{max(ratios.values()):.2f} times as wide as those of the separate "
                     f"{per_model} fits.")
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
    lines += [f"| parameter | mean (sd) | {PERCENT} HDI |", "|---|---|---|"]
    lines += [f"| {label} | {_cell(params[n]['mean'], params[n]['sd'])} | "
              f"{_interval(params[n])} |" for n, label in rows]
    if "type_effect" in fit:
        lines += ["", "### Effect by federation type (average over the years after founding)",
                  "", f"| type | mean (sd) | {PERCENT} HDI | P(effect > 0) |", "|---|---|---|---|"]
        lines += [f"| {k} | {_cell(v['mean'], v['sd'])} | {_interval(v)} | "
                  f"{v['p_positive']:.3f} |" for k, v in sorted(fit["type_effect"].items())]
    d = fit["diagnostics"]
    lines += ["", f"Diagnostics: max R-hat {_num(d['max_r_hat'], 3)}, min bulk ESS "
              f"{_num(d['min_ess_bulk'], 0)}, min tail ESS {_num(d['min_ess_tail'], 0)}, "
              f"{d['divergences']} divergences: "
              + ("ok." if d["ok"] else "**FAILED** (" + "; ".join(d["problems"]) + ")."), ""]
    return lines


# -- the stacked event-time design (bayesfed.modelling.event_stacked;
# summarize.summarize_stacked_fit) --

def is_stacked(fit: dict) -> bool:
    """Whether an event-time fit's summary is of the stacked design."""
    return fit_kind(fit).by_cohort


#: The stacked model's variance and effect-heterogeneity parameters, in the report's order,
#: with their labels (those a fit has are shown).
STACKED_PARAMS = {
    "sd_school": "school sd",
    "sd_cell": "school-by-cohort shock sd",
    "sigma": "pupil sd",
    "shock_ar": "AR(1) correlation of a school's shocks in consecutive years",
    "tau_step": "random-walk step sd of the common effect path",
    "sd_cohort_effect": "sd of founding cohorts' deviations from the common effect",
    "sd_federation_effect": "sd of the effect between {unit}s",
}

#: The stacked model's predictive statistics of new schools' cells
#: (:data:`bayesfed.posterior.event_draws.STATISTICS`), with their labels.
CELL_STATISTICS = {
    "sd_cell_mean": "sd of cell means",
    "sd_school_mean": "sd of school means",
    "sd_within_school": "sd of a school's cell means around its mean",
    "lag1_correlation": "lag-1 correlation of a school's consecutive cells",
}

#: Power-scaling sensitivity above this flags a quantity (Kallioinen et al. 2024).
PSENSE_THRESHOLD = 0.05


def _mean_hdi(stats: dict, digits: int = 2) -> str:
    """``0.31 [-0.24, 0.78]``."""
    return f"{stats['mean']:.{digits}f} {_interval(stats, digits)}"


def _att_name(name: str) -> str:
    """``att[3]`` -> ``ATT(3)``; ``att_average`` -> ``average``."""
    if name == "att_average":
        return "average over the years"
    return f"ATT({name[4:-1]})" if name.startswith("att[") else name


def _unit_text(fit: dict) -> tuple[str, str]:
    """What ATT averages over, and the weight's meaning, for ``weights.kind``."""
    if fit["weights"]["kind"] == "federations":
        return ("the federations", "the share of the federations with federated pupils in "
                "year k that belong to founding cohort e")
    return ("the federated pupils", "the share of year k's federated pupils who are in "
            "founding cohort e")


def _post_years(fit: dict) -> list[str]:
    """The years since founding 0..K of a stacked fit, as the summary keys them."""
    return sorted((k for k in fit["federation_effect"] if int(k) >= 0), key=int)


def _years_span(keys: list[str]) -> str:
    return keys[0] if len(keys) == 1 else f"{keys[0]}-{keys[-1]}"


def estimand_paragraph(fit: dict) -> str:
    """What a stacked fit estimates, its comparison and its assumptions, in words."""
    units, weight = _unit_text(fit)
    years, leads = _post_years(fit), fit["pre_trend"]["leads"]
    cohorts = sorted(fit["federation_effect_by_cohort"])
    leads = sorted(leads, key=int)
    lead_text = ("The data have no year before -1, so no lead tests the assumptions."
                 if not leads else
                 f"The lead (year {leads[0]}) is a placebo term: under both assumptions it is 0."
                 if len(leads) == 1 else
                 f"The leads (years {', '.join(leads)}) are placebo terms: under both "
                 "assumptions they are 0.")
    span = years[0] if len(years) == 1 else f"{years[0]}, ..., {years[-1]}"
    return (f"**What is estimated.** ATT(k) is the average effect of federation on {units} "
            f"k years after founding (k = {span}): the effect on each founding "
            f"cohort e ({len(cohorts)} cohorts, {', '.join(cohorts)}), ATT(e,k), averaged "
            f"with weights w(e,k), {weight}. Each federated school is compared with the "
            "matched schools of its own founding cohort in the same calendar year, so no "
            "school founded earlier or later serves as a control. This identifies ATT(k) if "
            "federated and matched schools of a founding cohort would have moved in parallel "
            "without federation (parallel trends within founding cohort) and if schools did "
            "not change before founding in anticipation of it (no anticipation). The "
            f"reference is year {fit['reference_year']}, the last cohort before founding. "
            + lead_text)


def att_table(fit: dict, fits: list[dict], published: pd.DataFrame) -> list[str]:
    """ATT(k) by year since founding, the aggregated leads, the reference year and the average
    over the years, beside the per-year fits and the paper where the folder has them."""
    effects = fit["federation_effect"]
    per_year = {f["year"]: f for f in fits if fit_kind(f).per_year
                and "federation_effect" in f and f["year"] is not None}
    comparison = fit.get("per_year_comparison", {})
    ratios = comparison.get("width_ratio", {})
    per_model = comparison.get("model", "per-year")
    compared = bool(comparison)
    lines = [f"| years since founding | ATT mean (sd) | {PERCENT} HDI | P(effect > 0) | "
             "R-hat / ESS bulk | " + (f"{per_model} mean [{PERCENT} HDI] | width ratio joint / "
                                     f"{per_model} | " if compared else "") + "paper (SE) |",
             "|---|---|---|---|---|" + "---|---|" * compared + "---|"]

    def row(label: str, e: dict, other: str = "", ratio: str = "", paper: str = "") -> str:
        return (f"| {label} | {_cell(e['mean'], e['sd'])} | {_interval(e)} | "
                f"{e['p_positive']:.3f} | {e['r_hat']:.3f} / {e['ess_bulk']:.0f} | "
                + (f"{other} | {ratio} | " if compared else "") + f"{paper} |")

    for key in sorted([*effects, str(fit["reference_year"])], key=int):
        if key not in effects:
            lines.append(f"| {key} (reference) | 0 | | | | " + "| | " * compared + "|")
        elif int(key) < 0:
            lines.append(row(f"{key} (lead)", effects[key]))
        else:
            other = per_year.get(int(key))
            lines.append(row(key, effects[key],
                             _mean_hdi(other["federation_effect"]) if other else "",
                             f"{ratios[key]:.2f}" if key in ratios else "",
                             _published(published, "M2", int(key), "federated")))
    lines.append(row(f"average, years {_years_span(_post_years(fit))}", fit["att_average"]))
    units, _ = _unit_text(fit)
    lines += ["", f"ATT: the average effect on {units} (outcome units); leads averaged over "
              "founding cohorts with the same weights; the average row is the mean of ATT(k) "
              "over the years after founding."]
    return lines


def cohort_tables(fit: dict) -> list[str]:
    """The founding cohort x year matrix: ATT(e,k) (and each cohort's leads) with 94% HDIs,
    then the weights w(e,k) with the federated pupils behind them."""
    by_cohort, leads_by = fit["federation_effect_by_cohort"], fit.get("leads_by_cohort", {})
    leads = sorted(fit["pre_trend"]["leads"], key=int)
    years = [*leads, *_post_years(fit)]
    cohorts = sorted(by_cohort)
    header = [f"{k} (lead)" if int(k) < 0 else k for k in years]
    lines = [_row("ATT(e,k) by founding cohort", header), "|" + "---|" * (1 + len(years))]
    for e in cohorts:
        cells = {**leads_by.get(e, {}), **by_cohort[e]}
        lines.append(_row(e, [_mean_hdi(cells[k]) if k in cells else "" for k in years]))
    weights, pupils = fit["weights"]["by_year"], fit["weights"]["federated_pupils"]
    lines += ["", _row("w(e,k) (federated pupils) by founding cohort", header),
              "|" + "---|" * (1 + len(years))]
    for e in cohorts:
        lines.append(_row(e, [f"{weights[k][e]:.2f} ({pupils[k][e]:,})"
                              if e in weights.get(k, {}) else "" for k in years]))
    units, weight = _unit_text(fit)
    lines += ["", f"First table: ATT(e,k), the average effect on founding cohort e's "
              f"{units.removeprefix('the ')} k years after founding, posterior mean [{PERCENT} "
              "HDI] "
              f"(leads: cohort e's placebo term). Second table: the weight w(e,k) of cohort e "
              f"in ATT(k), {weight} (each year's weights sum to 1), and in brackets cohort e's "
              "federated pupils in year k.", ""]
    return lines


def breakdown_sentence(sensitivity: dict) -> str:
    """The breakdown value of the sensitivity analysis in words."""
    m = sensitivity["breakdown_m"]
    if m is None:
        return (f"No M up to 100 breaks it: the average effect's {PERCENT} interval excludes 0 "
                "even "
                "when post-founding trend changes may be 100 times the largest pre-founding "
                "one.")
    if m == 0:
        return (f"The average effect's {PERCENT} interval covers 0 even at M = 0 (parallel trends "
                "exactly), so there is no breakdown value to report.")
    return (f"The average effect's {PERCENT} interval first covers 0 at M = {m:.2f}: a "
            f"post-founding trend change of {m:.2f} times the largest pre-founding one "
            "would be enough to explain the effect away.")


def sensitivity_lines(fit: dict) -> list[str]:
    """The relative-magnitudes sensitivity analysis
    (:func:`bayesfed.posterior.effects.sensitivity`)."""
    s = fit["sensitivity"]
    lines = ["### Sensitivity to a violation of parallel trends", ""]
    if s is None:
        return [*lines, "The data have no year before the reference year -1, so there is no "
                "pre-founding change to calibrate a sensitivity analysis with; the effects "
                "rest on parallel trends unchecked.", ""]
    years = sorted(s["att"], key=int)
    lines += [f"If parallel trends fail after founding, ATT(k) is biased by the trend "
              "violation accumulated since year -1. Bounding each year's change of that "
              "violation by M times the largest change between consecutive pre-founding "
              f"years of the aggregated leads (posterior mean {s['max_pre_change']:.2f} "
              "outcome units) bounds the bias of ATT(k) by (k+1) M times that change "
              "(Rambachan & Roth 2023, relative magnitudes). Each interval below covers the "
              f"effect's identified set with posterior probability at least {PERCENT}; M = 0 is "
              "parallel trends exactly. " + breakdown_sentence(s), "",
              _row("M", [f"average, years {_years_span(years)}",
                         *(f"ATT({k})" for k in years)]),
              "|" + "---|" * (2 + len(years))]
    for i, m in enumerate(s["grid"]):
        cells = [s["average"][i], *(s["att"][k][i] for k in years)]
        lines.append(_row(f"{m:g}", [f"[{lo:.2f}, {hi:.2f}]" for lo, hi in cells]))
    return [*lines, ""]


def _psense_cells(row: dict) -> str:
    """A power-scaling result's prior, likelihood and diagnosis cells (prior in bold above
    :data:`PSENSE_THRESHOLD`)."""
    prior = f"{row['prior']:.3f}"
    prior = f"**{prior}**" if row["prior"] > PSENSE_THRESHOLD else prior
    diagnosis = "no prior sensitivity" if row["diagnosis"] == "✓" else row["diagnosis"]
    return f"{prior} | {row['likelihood']:.3f} | {diagnosis}"


#: Names of the per-year models' quantities in the prior sensitivity table.
PER_YEAR_QUANTITIES = {"federated": "federation effect", "vpc_school": "school share (VPC)"}


def per_year_prior_sensitivity(fits: list[dict]) -> list[str]:
    """Power-scaling prior and likelihood sensitivity of the per-year models' federation
    effect and school share."""
    rows = [f for f in fits if f.get("prior_sensitivity")]
    if not rows:
        return []
    lines = ["## Prior sensitivity of the per-year models", "",
             "Power-scaling sensitivity (Kallioinen et al. 2024): how far each quantity's "
             "posterior moves (cumulative Jensen-Shannon distance) when every prior of the "
             "model, or the likelihood of the schools, is raised to a power near 1. A prior "
             f"sensitivity above {PSENSE_THRESHOLD} (in bold) says the prior shapes the "
             "result; a likelihood sensitivity above it with a low prior sensitivity is what "
             "informative data look like.", "",
             "| model | year | quantity | prior | likelihood | diagnosis |",
             "|---|---|---|---|---|---|"]
    for f in rows:
        for name, row in f["prior_sensitivity"].items():
            lines.append(f"| {f['model']} | {_year_label(f['year'])} | "
                         f"{PER_YEAR_QUANTITIES.get(name, name)} | {_psense_cells(row)} |")
    return [*lines, ""]


def prior_sensitivity_lines(fit: dict) -> list[str]:
    """Power-scaling prior and likelihood sensitivity of the aggregates."""
    table = fit.get("prior_sensitivity")
    if not table:
        return []
    lines = ["### Prior sensitivity", "",
             "Power-scaling sensitivity (Kallioinen et al. 2024): how far each aggregate's "
             "posterior moves (cumulative Jensen-Shannon distance) when the prior or the "
             f"likelihood is raised to a power near 1. A prior sensitivity above "
             f"{PSENSE_THRESHOLD} (in bold) says the prior shapes the result; a likelihood "
             "sensitivity above it with a low prior sensitivity is what informative data "
             "look like, and both high together suggest a conflict between prior and data "
             "(arviz-stats' diagnosis). Power-scaled are the top-level priors (of the sampled "
             "parameters, and of the cohort x year effects, gaps, leads and first effect, "
             "whose variances are fixed); the hierarchical parts (cohort deviations, "
             "random-walk steps, federation deviations) are the model's structure and are not "
             "scaled.", "",
             "| quantity | prior | likelihood | diagnosis |", "|---|---|---|---|"]

    for name, row in table.items():
        lines.append(f"| {_att_name(name)} | {_psense_cells(row)} |")
    return [*lines, ""]


def cell_checks_lines(fit: dict) -> list[str]:
    """The stacked model's predictive checks of new schools' cells, and its LOO."""
    lines = []
    checks = fit.get("predictive")
    if checks:
        lines += ["### Predictive checks of new schools' cells", "",
                  f"Each statistic of the cell-mean residuals is computed on the data and on "
                  f"{checks['draws']:,} replications of {checks['unit']} (a new intercept, new "
                  "school-by-cohort shocks and new pupils' noise for every school), so the "
                  "model's variance structure is tested, not its fitted intercepts. p = "
                  f"P(replicated >= observed); outside [{P_RANGE[0]}, {P_RANGE[1]}] (in bold) "
                  "the model misses the statistic.", "",
                  f"| statistic | observed | posterior predictive mean [{PERCENT}] | p |",
                  "|---|---|---|---|"]
        names = [*(n for n in CELL_STATISTICS if n in checks["posterior"]),
                 *(n for n in checks["posterior"] if n not in CELL_STATISTICS)]
        for name in names:
            c = checks["posterior"][name]
            p = f"{c['p_value']:.2f}"
            lines.append(f"| {CELL_STATISTICS.get(name, name)} | {c['observed']:.2f} | "
                         f"{c['mean']:.2f} [{c['low']:.2f}, {c['high']:.2f}] | "
                         + (p if P_RANGE[0] <= c["p_value"] <= P_RANGE[1] else f"**{p}**")
                         + " |")
        lines.append("")
    lines += ["### Leave-one-school-out", ""]
    loo = fit.get("loo")
    if loo is None:
        return [*lines, "Not computed: the fit failed its diagnostic gates.", ""]
    return [*lines, f"Each {loo['unit']}'s log-likelihood with its intercept and shocks "
            "integrated out, estimated by PSIS-LOO from the fit's draws: the expected log "
            "predictive density of a school the model has not seen. A Pareto k above "
            f"{loo['good_k']:.2f} makes that {loo['unit']}'s estimate unreliable.", "",
            "| elpd (se) | p_loo | max Pareto k | units |", "|---|---|---|---|",
            f"| {loo['elpd']:.1f} ({loo['se']:.1f}) | {loo['p_loo']:.1f} | "
            f"{loo['pareto_k_max']:.2f}"
            + (f" ({loo['n_high_pareto_k']} high)" if loo["n_high_pareto_k"] else "")
            + f" | {loo['n_units']} {loo['unit']}s |", ""]


def stacked_parameters(fit: dict) -> list[str]:
    """The variance partition, the variance and heterogeneity parameters and the gaps."""
    params = fit["params"]
    lines = ["### Variance partition and parameters", "",
             "| school | school-by-cohort | pupil |", "|---|---|---|",
             "| " + " | ".join(_pct(fit["variance_partition"][k])
                               for k in ("school", "cell", "pupil")) + " |", "",
             f"| parameter | mean (sd) | {PERCENT} HDI |", "|---|---|---|"]
    unit = fit.get("deviation_unit", "federation")
    lines += [f"| {label.format(unit=unit)} | {_cell(params[n]['mean'], params[n]['sd'])} | "
              f"{_interval(params[n])} |" for n, label in STACKED_PARAMS.items() if n in params]
    lines += [f"| federated - matched gap in year {fit['reference_year']}, cohort {e} | "
              f"{_cell(g['mean'], g['sd'])} | {_interval(g)} |"
              for e, g in sorted(fit["gap"].items())]
    return [*lines, "", "Variance partition: share of the residual variance, posterior mean "
            f"[{PERCENT} HDI], in percent. The gaps are each founding cohort's "
            "federated-vs-matched "
            "difference in the reference year, which the effects are measured from.", ""]


def stacked_event_section(fit: dict, fits: list[dict], published: pd.DataFrame,
                          figures: dict[str, tuple[str, str]] | None = None,
                          flavour: Flavour = "markdown") -> list[str]:
    """The stacked event-time model: estimand, ATT(k), the cohort x year matrix, pre-trends
    and sensitivity, prior sensitivity, predictive checks, LOO and parameters; ``figures``
    may hold ``event_study`` and ``sensitivity`` (of this fit)."""
    figures = figures or {}
    comparison = fit.get("per_year_comparison", {})
    ratios = comparison.get("width_ratio", {})
    trajectory = fit["trajectory"]
    lines = [f"## Joint event-time model ({fit['model']})", "",
             f"Stacked design: {fit['n_pupils']:,} pupils in {fit['n_schools']} schools "
             f"({fit['n_federations']} federations founded in {fit['n_foundings']} years), "
             f"{fit['n_cells']:,} school-by-cohort cells and {fit['n_cohorts']} cohorts, "
             "fitted at once"
             + (f" ({fit['n_dropped']:,} pupils outside the modelled years left out)"
                if fit["n_dropped"] else "") + ".", "", estimand_paragraph(fit), "",
             "### Average effect by year since founding", "",
             *att_table(fit, fits, published), "",
             f"P(ATT({trajectory['last']}) > ATT({trajectory['first']})) = "
             f"{trajectory['p_last_gt_first']:.3f}."]
    if ratios:
        lines.append(f"Across years {min(ratios, key=int)}-{max(ratios, key=int)} the joint "
                     f"model's {PERCENT} intervals are {min(ratios.values()):.2f}-"
                     f"{max(ratios.values()):.2f} times as wide as those of the separate "
                     f"{comparison['model']} fits.")
    lines.append("")
    lines += figure_lines(figures.get("event_study"), CAPTIONS["event_study"], flavour)
    lines += ["### By founding cohort", "", *cohort_tables(fit)]
    lines += ["### Pre-trend check", "", pre_trend_verdict(fit)
              + (" The leads are averaged over founding cohorts with the weights w(e,k); each "
                 "cohort's own leads are in the table by founding cohort."
                 if fit["pre_trend"]["leads"] else ""), ""]
    lines += sensitivity_lines(fit)
    lines += figure_lines(figures.get("sensitivity"), CAPTIONS["sensitivity"], flavour)
    lines += prior_sensitivity_lines(fit)
    lines += cell_checks_lines(fit)
    lines += stacked_parameters(fit)
    d = fit["diagnostics"]
    lines += [f"Diagnostics: max R-hat {_num(d['max_r_hat'], 3)}, min bulk ESS "
              f"{_num(d['min_ess_bulk'], 0)}, min tail ESS {_num(d['min_ess_tail'], 0)}, "
              f"{d['divergences']} divergences: "
              + ("ok." if d["ok"] else "**FAILED** (" + "; ".join(d["problems"]) + ")."), ""]
    return lines


def decomposition_table(fits: list[dict]) -> list[str]:
    """Rights & Sterba shares of the model-implied variance, per fit."""
    levels = any("r2_within" in f for f in fits)
    columns = ["fixed effects", *(["of which within", "of which between"] if levels else []),
               "school", "pupil", "R² marginal", "R² conditional",
               *(["R² within", "R² between"] if levels else [])]
    lines = ["## Variance decomposition (share of model-implied total variance, %)", "",
             "| model | year | " + " | ".join(columns) + " |",
             "|---|---|" + "---|" * len(columns)]
    for f in fits:
        d = f["decomposition"]
        cells = [_pct(d["fixed"])]
        cells += [_pct(d.get(k)) for k in ("fixed_within", "fixed_between")] if levels else []
        cells += [_pct(d[k]) for k in ("school", "pupil", "r2_marginal", "r2_conditional")]
        cells += [_pct(f.get(k)) for k in ("r2_within", "r2_between")] if levels else []
        lines.append(f"| {f['model']} | {_year_label(f['year'])} | " + " | ".join(cells) + " |")
    if levels:
        lines += ["", "Rights & Sterba (2019): the fixed part splits into its variance within "
                  "schools (f1) and between them (f2); R² within = f1 / (f1 + pupil), R² "
                  "between = f2 / (f2 + school), each computed per draw of the one posterior "
                  f"(mean [{PERCENT} HDI])."]
    return [*lines, ""]


#: Captions of the report's figures, by figure name (the alt texts come from bayesfed.report.plots).
CAPTIONS = {
    "trajectory": "Federation effect by year since founding: per-year models, the joint "
                  "event-time model (when fitted; of the stacked design, ATT(k)) and the "
                  f"paper's Table 5, with {PERCENT} intervals.",
    "variance_partition": f"Share of the residual variance between schools (solid, with {PERCENT} "
                          "HDI) and between pupils (pale), by year and model.",
    "predictive": "Posterior predictive check: sorted observed school means and within-school "
                  f"sds against the {PERCENT} band of replications.",
    "rank_by_year": "Rank plots of the per-year fits' main parameters.",
    "rank_event_time": "Rank plots of the event-time model's effects and standard deviations.",
    "event_study": "Event study of the stacked model: ATT(k), the average effect on the "
                   f"federated pupils by year since founding, with its {PERCENT} HDI, the "
                   "aggregated "
                   "leads, and each founding cohort's ATT(e,k) (thin lines); the reference "
                   "year -1 is 0 by definition.",
    "sensitivity": f"Sensitivity to a violation of parallel trends: for each M, the {PERCENT} "
                   "interval of the average effect (and of each ATT(k)) when post-founding "
                   "trend changes may reach M times the largest pre-founding one; the dashed "
                   "line marks the breakdown value.",
}

#: Checked statistics of the predictive checks, in order, with their labels.
STATISTICS = {
    "school_mean_mean": "mean of school means",
    "school_mean_sd": "sd of school means",
    "school_mean_min": "lowest school mean",
    "school_mean_max": "highest school mean",
    "within_sd_pooled": "pooled within-school sd",
    "within_sd_sd": "sd of within-school sds",
    "within_sd_max": "largest within-school sd",
}

#: A predictive p-value outside this range is flagged (the replications' central 94%).
P_RANGE = (0.03, 0.97)


def figure_lines(figure: tuple[str, str] | None, caption: str, flavour: Flavour) -> list[str]:
    """A figure as Markdown lines: ``figure`` is (path relative to the report, alt text)."""
    if figure is None:
        return []
    path, alt = figure
    alt = " ".join(alt.split())
    if flavour == "docs":
        return ["```{figure} " + path, f":alt: {alt}", "", caption, "```", ""]
    return [f"![{alt}]({path})", "", f"*{caption}*", ""]


def _fmt(value: float, fmt: str) -> str:
    """``format(value, fmt)`` without a minus sign on a value that rounds to zero."""
    text = format(value, fmt)
    return text[1:] if text.startswith("-") and float(text) == 0 else text


def _span(values: list[float], fmt: str) -> str:
    """``a`` or ``a to b`` (smallest to largest)."""
    low, high = _fmt(min(values), fmt), _fmt(max(values), fmt)
    return low if low == high else f"{low} to {high}"


def _years_text(years: list[int | None]) -> str:
    """``year 3`` or ``years 0, 1, 2``."""
    if years == [None]:
        return "all pupils"
    return ("year " if len(years) == 1 else "years ") + ", ".join(
        "all pupils" if y is None else str(y) for y in years)


def _two_level(fits: list[dict]) -> list[dict]:
    return [f for f in fits if fit_kind(f).per_year]


def plain_summary(summary: dict, published: pd.DataFrame) -> list[str]:
    """What the fits say, in plain language; every number is taken from ``summary``."""
    fits = summary["fits"]
    two_level = _two_level(fits)
    items = []
    empty = [f for f in two_level if f["terms"] == ["intercept"]]
    if empty:
        model = empty[0]["model"]
        shares = [100 * f["variance_partition"]["school"]["mean"] for f in empty]
        paper = published_rows(published, 3, "vpc_school", [f["year"] for f in empty])
        items.append(
            f"**Differences between schools.** In the empty model ({model}), "
            f"{_span(shares, '.1f')}% of the variation in pupils' outcomes lies between "
            f"schools (posterior means, {_years_text([f['year'] for f in empty])})"
            + (f"; the paper reports {_span(list(paper['estimate']), '.1f')}%"
               if not paper.empty and model == "M0" else "") + ".")
    for model in sorted({f["model"] for f in two_level if "variance_explained" in f}):
        rows = [f for f in two_level if f["model"] == model and "variance_explained" in f]
        pupil = [100 * f["variance_explained"]["pupil"]["mean"] for f in rows]
        school = [100 * f["variance_explained"]["school"]["mean"] for f in rows]
        items.append(
            f"**What {model} adds to {rows[0]['reference']}.** Its extra predictors account "
            f"for {_span(pupil, '.1f')}% of the pupil-level and {_span(school, '.1f')}% of the "
            f"school-level variance of {rows[0]['reference']} (posterior means by year; a "
            "negative share means the variance grew).")
    for model in sorted({f["model"] for f in two_level if "federation_effect" in f}):
        rows = [f for f in two_level if f["model"] == model and "federation_effect" in f]
        effects = [f["federation_effect"] for f in rows]
        means = _span([e["mean"] for e in effects], ".2f")
        excluded = [f["year"] for f in rows if f["federation_effect"]["hdi_low"] > 0
                    or f["federation_effect"]["hdi_high"] < 0]
        paper = published_rows(published, 5, "federated", [f["year"] for f in rows])
        items.append(
            f"**Federation effect, year by year ({model}).** Pupils in federated schools differ "
            f"from similar pupils in matched schools by {means} outcome units "
            f"(posterior means, "
            f"{_years_text([f['year'] for f in rows])}); the {PERCENT} HDI excludes zero in "
            f"{len(excluded)} of {len(rows)} years"
            + (f" ({_years_text(excluded)})" if excluded else "")
            + f", and P(effect > 0) is {_span([e['p_positive'] for e in effects], '.2f')}"
            + (f". The paper's Table 5 estimates are {_span(list(paper['estimate']), '.3g')}"
               if not paper.empty and model == "M2" else "") + ".")
    for fit in (f for f in fits if fit_kind(f).joint):
        if is_stacked(fit):
            items.append(stacked_summary_item(fit))
            continue
        t, e = fit["trajectory"], fit["federation_effect"]
        first, last = e[t["first"]], e[t["last"]]
        items.append(
            f"**All cohorts at once ({fit['model']}).** The joint event-time model puts the "
            f"effect at {first['mean']:.2f} {_interval(first)} in year {t['first']} and "
            f"{last['mean']:.2f} {_interval(last)} in year {t['last']} ({PERCENT} HDIs); the "
            f"probability that it grew between them is {t['p_last_gt_first']:.2f}. "
            + ("**A pre-federation trend is flagged**: read the effects with care."
               if fit["pre_trend"]["flagged"] else
               "No pre-federation trend is flagged." if fit["pre_trend"]["leads"] else
               "Pre-federation trends were not checked (no leads)."))
    comparisons = summary.get("loo_comparison", [])
    if comparisons:
        best = [c["models"][0]["model"] for c in comparisons]
        close = [c for c in comparisons
                 if len(c["models"]) > 1 and -c["models"][1]["elpd_diff"]
                 < 2 * c["models"][1]["dse"]]
        items.append(
            "**Predicting new schools.** Leave-one-school-out cross-validation ranks "
            + "; ".join(f"{m} first in {best.count(m)} of {len(best)} years"
                        for m in sorted(set(best)))
            + f"; in {len(close)} of {len(comparisons)} years the runner-up is within two "
            "standard errors of the best.")
    checked = [(f, name, stats) for f in two_level if "predictive" in f
               for name, stats in f["predictive"]["posterior"].items()]
    if checked:
        odd = [(f, name) for f, name, stats in checked
               if not P_RANGE[0] <= stats["p_value"] <= P_RANGE[1]]
        items.append(
            f"**Does the model reproduce the data?** Of {len(checked)} posterior predictive "
            f"checks ({len(STATISTICS)} statistics per fit), {len(odd)} fall outside the "
            f"replications' central {PERCENT}"
            + (": " + "; ".join(f"{f['model']} {_year_label(f['year'])}: "
                                f"{STATISTICS.get(n, n)}" for f, n in odd[:6])
               + ("; ..." if len(odd) > 6 else "") if odd else "") + ".")
    failed = [f for f in fits if not f["diagnostics"]["ok"]]
    items.append(
        f"**Sampling.** {len(fits) - len(failed)} of {len(fits)} fits passed every diagnostic "
        "gate" + (f"; **{len(failed)} failed** (see the warning above)." if failed else "."))
    return ["## Summary", "", *(f"- {item}" for item in items), ""]


def stacked_summary_item(fit: dict) -> str:
    """The plain-language summary's sentence on a stacked event-time fit."""
    t, e, average = fit["trajectory"], fit["federation_effect"], fit["att_average"]
    first, last = e[t["first"]], e[t["last"]]
    units, _ = _unit_text(fit)
    s = fit["sensitivity"]
    return (
        f"**All cohorts at once ({fit['model']}).** Comparing each federation with the "
        "matched schools of its own founding cohort in the same year, the average effect of "
        f"federation on {units} is {_mean_hdi(first)} in year {t['first']} after founding "
        f"and {_mean_hdi(last)} in year {t['last']}, {_mean_hdi(average)} on average over "
        f"years {t['first']}-{t['last']} (outcome units, {PERCENT} HDIs); P(average > 0) = "
        f"{average['p_positive']:.2f}. "
        + ("**A pre-federation trend is flagged**: read the effects with care."
           if fit["pre_trend"]["flagged"] else
           "No pre-federation trend is flagged." if fit["pre_trend"]["leads"] else
           "Pre-federation trends were not checked (no year before -1).")
        + ("" if s is None else " " + breakdown_sentence(s)))


def data_section(summary: dict) -> list[str]:
    """Pupils and schools per year (and of the event-time fit), with the data file's hash."""
    fits = summary["fits"]
    lines = ["## Data", ""]
    years: dict = {}
    for f in _two_level(fits):
        years.setdefault(f["year"], []).append(f)
    if years:
        lines += ["| year since founding | pupils | schools | models |", "|---|---|---|---|"]
        for year, rows in years.items():
            sizes = sorted({(f["n_pupils"], f["n_schools"]) for f in rows})
            lines.append(f"| {_year_label(year)} | "
                         + " / ".join(f"{n:,}" for n, _ in sizes) + " | "
                         + " / ".join(str(j) for _, j in sizes) + " | "
                         + ", ".join(f["model"] for f in rows) + " |")
        lines.append("")
    for f in (f for f in fits if fit_kind(f).joint):
        founded = (f" founded in {f['n_foundings']} years" if is_stacked(f) else "")
        lines += [f"The joint event-time model ({f['model']}) uses {f['n_pupils']:,} pupils in "
                  f"{f['n_schools']} schools ({f['n_federations']} federations{founded}), "
                  f"{f['n_cohorts']} cohorts and {f['n_cells']:,} school-by-cohort cells.", ""]
    hashes = sorted({f["data_sha256"] for f in fits})
    lines += ["Data file SHA-256: " + ", ".join(f"`{h}`" for h in hashes) + ".", ""]
    return lines


def predictive_section(summary: dict, figure: tuple[str, str] | None,
                       flavour: Flavour) -> list[str]:
    """Prior and posterior predictive checks of the two-level fits that have them."""
    fits = [f for f in _two_level(summary["fits"]) if "predictive" in f]
    lines = ["## Predictive checks", ""]
    if not fits:
        return [*lines, "No fit in this folder stores the per-school statistics that the "
                "predictive checks need (`constant_data`: `school_n`, `school_y_mean`, "
                "`school_x_mean`, `school_yy`, `school_xy`, `school_xx`; see "
                "`bayesfed.posterior.checks`), so none are shown.", ""]
    draws = fits[0]["predictive"]["draws"]
    lines += [f"Each statistic is computed on the observed data and on {draws:,} replications: "
              "from the posterior (new schools with the same sizes and compositions, so that "
              "the school-effect distribution is tested, not refitted) and from the prior. "
              "The p-value is P(replicated >= observed); values outside "
              f"[{P_RANGE[0]}, {P_RANGE[1]}] (in bold) mean the model does not reproduce the "
              "statistic. The shape of the pupil-level outcome distribution cannot be checked "
              "from the per-school statistics that a fit stores.", ""]
    lines += figure_lines(figure, CAPTIONS["predictive"], flavour)
    lines += ["### Posterior predictive p-values", "",
              "| model | year | " + " | ".join(STATISTICS.values()) + " |",
              "|" + "---|" * (2 + len(STATISTICS))]
    for f in fits:
        cells = []
        for name in STATISTICS:
            p = f["predictive"]["posterior"][name]["p_value"]
            text = f"{p:.2f}"
            cells.append(text if P_RANGE[0] <= p <= P_RANGE[1] else f"**{text}**")
        lines.append(f"| {f['model']} | {_year_label(f['year'])} | " + " | ".join(cells) + " |")
    lines.append("")
    for model in sorted({f["model"] for f in fits}):
        fit = [f for f in fits if f["model"] == model][-1]
        post, prior = fit["predictive"]["posterior"], fit["predictive"]["prior"]
        lines += [f"### {model}, {_year_label(fit['year'])}: observed and replicated", "",
                  f"| statistic | observed | posterior predictive mean [{PERCENT}] | p | "
                  f"prior predictive mean [{PERCENT}] | prior p |", "|---|---|---|---|---|---|"]
        for name, label in STATISTICS.items():
            a, b = post[name], prior[name]
            lines.append(f"| {label} | {a['observed']:.2f} | {a['mean']:.2f} [{a['low']:.2f}, "
                         f"{a['high']:.2f}] | {a['p_value']:.2f} | {b['mean']:.2f} "
                         f"[{b['low']:.2f}, {b['high']:.2f}] | {b['p_value']:.2f} |")
        lines.append("")
    return lines


def loo_section(summary: dict) -> list[str]:
    """Leave-one-school-out comparison of the models fitted to the same pupils."""
    comparisons = summary.get("loo_comparison", [])
    fits = {(f["model"], f["year"]): f for f in summary["fits"] if "loo" in f}
    lines = ["## Model comparison: leave-one-school-out", ""]
    for r in summary.get("loo_refused", []):
        groups = "; ".join(f"{', '.join(g['models'])} ({g['n_pupils']:,} pupils, "
                           f"{g['n_schools']} schools)" for g in r["groups"])
        lines += [f"**{_year_label(r['year'])}: not compared across groups fitted to "
                  f"different pupils or data: {groups}.** Fit them in one job (with "
                  "--drop-incomplete, rows missing a value any of its models needs are "
                  "dropped for all of them).", ""]
    if not comparisons:
        return [*lines, "No two models of this folder were fitted to the same pupils with "
                "the per-school statistics that leave-one-school-out cross-validation needs, "
                "so no comparison is shown. The event-time model is never compared: it is "
                "fitted to every cohort, the per-year models to one.", ""]
    lines += ["The unit left out is a whole school: each school's log-likelihood with its "
              "intercept integrated out, estimated by PSIS-LOO from the fit's draws. elpd is "
              "the expected log predictive density of the pupils of a school the model has "
              "not seen (higher is better); the difference is to the year's best model, with "
              "its standard error; a Pareto k above 0.7 makes that school's estimate "
              "unreliable. The event-time model is not compared: it is fitted to every "
              "cohort, the per-year models to one.", "",
              "| year | model | rank | elpd (se) | difference (se) | p_loo | stacking weight "
              "| max Pareto k |", "|---|---|---|---|---|---|---|---|"]
    for c in comparisons:
        for m in c["models"]:
            fit = fits.get((m["model"], c["year"]))
            k = "" if fit is None else (f"{fit['loo']['pareto_k_max']:.2f}"
                                        + (f" ({fit['loo']['n_high_pareto_k']} high)"
                                           if fit["loo"]["n_high_pareto_k"] else ""))
            lines.append(f"| {_year_label(c['year'])} | {m['model']} | {m['rank']} | "
                         f"{m['elpd']:.1f} ({m['se']:.1f}) | {m['elpd_diff']:.1f} "
                         f"({m['dse']:.1f}) | {m['p_loo']:.1f} | {m['weight']:.2f} | {k} |")
    return [*lines, ""]


def _gates_text(gates: dict) -> str:
    """The diagnostic gates in words (E-BFMI only where the summary has that gate)."""
    return (f"R-hat <= {gates['max_r_hat']}, bulk and tail ESS >= {gates['min_ess_bulk']}, "
            "no divergences" + (f", E-BFMI >= {gates['min_bfmi']} in every chain"
                                if "min_bfmi" in gates else ""))


def diagnostics_section(summary: dict, figures: dict[str, tuple[str, str]],
                        flavour: Flavour) -> list[str]:
    """Every fit's convergence diagnostics, and the rank plots when drawn."""
    gates = summary["gates"]
    bfmi = "min_bfmi" in gates
    lines = ["## Sampling diagnostics", "",
             f"Gates: {_gates_text(gates)}; R-hat and ESS over every free parameter and "
             "every school intercept.", "",
             "| model | year | max R-hat | min ESS bulk | min ESS tail | divergences | "
             + ("min E-BFMI | " if bfmi else "") + "seconds | verdict |",
             "|" + "---|" * (8 + bfmi)]
    for f in summary["fits"]:
        d = f["diagnostics"]
        lines.append(f"| {f['model']} | {_year_label(f['year'])} | {_num(d['max_r_hat'], 3)} | "
                     f"{_num(d['min_ess_bulk'], 0)} | {_num(d['min_ess_tail'], 0)} | "
                     f"{d['divergences']} | "
                     + (f"{_num(d.get('min_bfmi'), 2)} | " if bfmi else "")
                     + f"{f['sampling_seconds']:.1f} | "
                     + ("ok" if d["ok"] else "**FAILED**: " + "; ".join(d["problems"])) + " |")
    lines.append("")
    for name in ("rank_by_year", "rank_event_time"):
        lines += figure_lines(figures.get(name), CAPTIONS[name], flavour)
    return lines


def warning_lines(summary: dict, flavour: Flavour) -> list[str]:
    """Failed diagnostics and mixed data files, as the report's first lines."""
    fits = summary["fits"]
    failed = [f for f in fits if not f["diagnostics"]["ok"]]
    hashes = sorted({f["data_sha256"] for f in fits})
    messages = []
    if failed:
        messages.append([f"**WARNING: {len(failed)} of {len(fits)} fits failed their sampling "
                         "diagnostics; their estimates are not trustworthy:**", ""]
                        + [f"- {f['model']} {_year_label(f['year'])}: "
                           f"{'; '.join(f['diagnostics']['problems'])}" for f in failed])
    if len(hashes) > 1:
        messages.append([f"**WARNING: these fits come from {len(hashes)} different data "
                         "files** (input hashes differ); compare them with care."])
    lines = []
    for message in messages:
        if flavour == "docs":
            lines += ["```{warning}", *message, "```", ""]
        else:
            lines += [(f"> {line}" if line else ">") for line in message] + [""]
    return lines


def render_markdown(summary: dict, title: str = "bayesfed report",
                    figures: dict[str, tuple[str, str]] | None = None,
                    flavour: Flavour = "markdown") -> str:
    """The whole report.

    Parameters
    ----------
    summary : dict
        The content of ``summary.json``.
    title : str
        First heading (the page title of a docs report).
    figures : dict of str to (str, str), optional
        Figure name (a key of :data:`CAPTIONS`) -> (path relative to the report, alt text);
        figures not drawn are left out.
    flavour : {"markdown", "docs"}
        ``report.md`` Markdown, or MyST Markdown for a page of the documentation site.
    """
    if flavour not in ("markdown", "docs"):
        raise ValueError(f"flavour must be 'markdown' or 'docs', got {flavour!r}")
    published = load_published()
    figures = figures or {}
    fits = summary["fits"]
    two_level = _two_level(fits)
    lines = [f"# {title}", "", *warning_lines(summary, flavour)]
    gates = summary["gates"]
    hashes = sorted({f["data_sha256"] for f in fits})
    lines += [
        f"{len(fits)} fits; sampler {', '.join(sorted({f['sampler'] for f in fits}))}; "
        f"{fits[0]['draws']:,} posterior draws per fit; intervals are {summary['prob']:.0%} "
        f"highest-density intervals. Diagnostic gates: {_gates_text(gates)}. Data SHA-256 "
        f"`{hashes[0][:12]}`.", ""]
    lines += plain_summary(summary, published)
    lines += data_section(summary)
    models = sorted({f["model"] for f in two_level})
    for model in models:
        lines += model_table([f for f in two_level if f["model"] == model], published)
    if two_level:
        lines += ["## Variance partition by year", ""]
        lines += figure_lines(figures.get("variance_partition"), CAPTIONS["variance_partition"],
                              flavour)
    federation = federation_table(two_level, published)
    if federation or "trajectory" in figures:
        lines += federation or ["## Federation impact by year", ""]
        lines += figure_lines(figures.get("trajectory"), CAPTIONS["trajectory"], flavour)
    first_stacked = next((f for f in fits if fit_kind(f).joint
                          and is_stacked(f)), None)
    for fit in fits:
        if fit_kind(fit).joint and is_stacked(fit):
            lines += stacked_event_section(fit, fits, published,
                                           figures if fit is first_stacked else None, flavour)
        elif fit_kind(fit).joint:
            lines += event_time_section(fit, fits, published)
    lines += school_variation_section(figures, flavour)
    if two_level:
        lines += decomposition_table(two_level)
        lines += predictive_section(summary, figures.get("predictive"), flavour)
        lines += loo_section(summary)
        lines += per_year_prior_sensitivity(two_level)
    lines += diagnostics_section(summary, figures, flavour)
    failed_reml = [f for f in two_level if "error" in f["reml"]]
    if failed_reml:
        lines += ["## REML cross-check failures", ""]
        lines += [f"- {f['model']} {_year_label(f['year'])}: {f['reml']['error']}"
                  for f in failed_reml]
    return "\n".join(lines).rstrip("\n") + "\n"
