"""The report and figures of a stacked event-time fit, checked against its ``summary.json``.

One real fit of the shipped spec (``models/event_time.toml``, design ``"stacked"``) on the
shipped study, reported as Markdown and as a docs page. The expected cells are formatted here,
independently of :mod:`bayesfed.report.markdown`, from the summary's numbers, so a lookup or
formatting mistake in the report fails a test. The branches a fit of the shipped study does not
reach (no leads, a breakdown value of 0 or none) are rendered from the same summary with the one
field changed. A pooled fit (the earlier design) checks that its section still renders.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest

from bayesfed.jobs.commands import fit_command, report_command
from bayesfed.report.markdown import render_markdown

ROOT = Path(__file__).resolve().parents[2]
STUDY = ROOT / "data" / "synthetic_study.parquet"
EVENT_SPEC = ROOT / "models" / "event_time.toml"
PNG = b"\x89PNG\r\n\x1a\n"
HEADER = "## Joint event-time model (event_time)"


@pytest.fixture(scope="module")
def stacked(tmp_path_factory) -> tuple[dict, str, Path, Path]:
    """The shipped spec fitted to the shipped study (seed 3), reported as Markdown and as a
    docs page: (the fit's summary, report.md's text, report.md, the docs page)."""
    folder = tmp_path_factory.mktemp("stacked")
    out = folder / "fits"
    path = fit_command([EVENT_SPEC], STUDY, out, None, seed=3)
    report = report_command(out)
    page = report_command(out, folder / "docs" / "stacked", fmt="docs")
    summary = json.loads(path.read_text())
    fit = next(f for f in summary["fits"] if f["family"] == "event_time")
    assert fit.get("design") == "stacked"
    return fit, report.read_text(), report, page


def section(text: str, header: str = HEADER) -> str:
    """The text of one ``## `` section."""
    start = text.index(f"\n{header}\n")
    end = text.find("\n## ", start + 1)
    return text[start:] if end < 0 else text[start:end]


def tables(markdown: str) -> list[list[list[str]]]:
    """Every pipe table: rows of stripped cells (bold markers removed), separator left out."""
    found, current = [], []
    for line in [*markdown.splitlines(), ""]:
        if line.startswith("|"):
            cells = [c.strip().strip("*") for c in line.strip()[1:-1].split(" | ")]
            if not all(set(c) <= {"-", "|"} for c in cells):
                current.append(cells)
        elif current:
            found.append(current)
            current = []
    return found


def table_with(markdown: str, first_header: str) -> list[list[str]]:
    found = [t for t in tables(markdown) if t[0][0] == first_header]
    assert len(found) == 1, (first_header, len(found))
    return found[0]


def interval(low: float, high: float) -> str:
    return f"[{low:.2f}, {high:.2f}]"


def mean_hdi(e: dict) -> str:
    return f"{e['mean']:.2f} {interval(e['hdi_low'], e['hdi_high'])}"


def effect_cells(e: dict) -> list[str]:
    return [f"{e['mean']:.2f} ({e['sd']:.2f})", interval(e["hdi_low"], e["hdi_high"]),
            f"{e['p_positive']:.3f}", f"{e['r_hat']:.3f} / {e['ess_bulk']:.0f}"]


def years_of(fit: dict) -> tuple[list[str], list[str]]:
    """(leads, years 0..K) as the summary keys them, in order."""
    keys = sorted(fit["federation_effect"], key=int)
    return [k for k in keys if int(k) < 0], [k for k in keys if int(k) >= 0]


def test_att_table_shows_the_summary_numbers(stacked):
    fit, text, _, _ = stacked
    block = section(text)
    table = table_with(block, "years since founding")
    leads, years = years_of(fit)
    assert leads == ["-2"] and years == [str(k) for k in range(6)]
    rows = {r[0]: r[1:] for r in table[1:]}
    assert list(rows) == [*(f"{k} (lead)" for k in leads), "-1 (reference)", *years,
                          "average, years 0-5"]
    for k in leads:
        assert rows[f"{k} (lead)"][:4] == effect_cells(fit["federation_effect"][k]), k
    for k in years:
        assert rows[k][:4] == effect_cells(fit["federation_effect"][k]), k
    assert rows["-1 (reference)"][0] == "0"
    assert rows["average, years 0-5"][:4] == effect_cells(fit["att_average"])
    t = fit["trajectory"]
    assert (f"P(ATT({t['last']}) > ATT({t['first']})) = {t['p_last_gt_first']:.3f}."
            in block)
    # what is estimated, from the summary
    assert "**What is estimated.** ATT(k) is the average effect of federation on the " \
           "federated pupils k years after founding (k = 0, ..., 5)" in block
    cohorts = sorted(fit["federation_effect_by_cohort"])
    assert f"({len(cohorts)} cohorts, {', '.join(cohorts)})" in block
    for phrase in ("matched schools of its own founding cohort in the same calendar year",
                   "parallel trends within founding cohort", "no anticipation",
                   "The reference is year -1"):
        assert phrase in block, phrase


def test_cohort_matrix_shows_every_cohort_and_its_weights(stacked):
    fit, text, _, _ = stacked
    block = section(text)
    leads, years = years_of(fit)
    columns = [*leads, *years]
    header = [*(f"{k} (lead)" for k in leads), *years]
    cohorts = sorted(fit["federation_effect_by_cohort"])
    assert len(cohorts) == fit["n_foundings"] == 5

    estimates = table_with(block, "ATT(e,k) by founding cohort")
    assert estimates[0][1:] == header
    assert [r[0] for r in estimates[1:]] == cohorts
    for row, e in zip(estimates[1:], cohorts, strict=True):
        cells = {**fit["leads_by_cohort"][e], **fit["federation_effect_by_cohort"][e]}
        assert row[1:] == [mean_hdi(cells[k]) for k in columns], e

    weights = table_with(block, "w(e,k) (federated pupils) by founding cohort")
    assert weights[0][1:] == header
    assert [r[0] for r in weights[1:]] == cohorts
    by_year, pupils = fit["weights"]["by_year"], fit["weights"]["federated_pupils"]
    for row, e in zip(weights[1:], cohorts, strict=True):
        assert row[1:] == [f"{by_year[k][e]:.2f} ({pupils[k][e]:,})" for k in columns], e
    # each year's printed weights sum to 1 up to the rounding of the printed values
    for j, k in enumerate(columns, start=1):
        printed = [float(re.match(r"([0-9.]+) \(", row[j]).group(1)) for row in weights[1:]]
        assert sum(printed) == pytest.approx(1.0, abs=0.005 * len(cohorts) + 1e-9), k
        assert sum(by_year[k].values()) == pytest.approx(1.0)


def test_sensitivity_table_lists_every_m_and_the_breakdown(stacked):
    fit, text, _, _ = stacked
    block = section(text)
    s = fit["sensitivity"]
    assert s is not None and len(s["grid"]) == 7
    years = sorted(s["att"], key=int)
    table = table_with(block, "M")
    assert table[0][1:] == ["average, years 0-5", *(f"ATT({k})" for k in years)]
    assert [r[0] for r in table[1:]] == [f"{m:g}" for m in s["grid"]]
    for i, row in enumerate(table[1:]):
        assert row[1:] == [interval(*s["average"][i]),
                           *(interval(*s["att"][k][i]) for k in years)], s["grid"][i]
    m = s["breakdown_m"]
    sentences = {"first": "The average effect's 94% interval first covers 0 at M = ",
                 "zero": "covers 0 even at M = 0", "none": "No M up to 100 breaks it"}
    expected = "none" if m is None else "zero" if m == 0 else "first"
    for name, sentence in sentences.items():
        assert (sentence in block) == (name == expected), name
    if expected == "first":
        assert f"first covers 0 at M = {m:.2f}:" in block
    assert f"(posterior mean {s['max_pre_change']:.2f} outcome units)" in block


def test_sensitivity_branches_without_leads_and_at_the_extremes(stacked):
    """The sentences a fit of the shipped study does not reach, from its summary with one
    field changed: no leads (no sensitivity analysis), breakdown at M = 0, no breakdown."""
    fit, _, _, _ = stacked

    def render(change) -> str:
        changed = copy.deepcopy(fit)
        change(changed)
        summary = {"fits": [changed], "gates": {"max_r_hat": 1.01, "min_ess_bulk": 400,
                                                "min_ess_tail": 400, "divergences": 0},
                   "prob": 0.94, "loo_comparison": []}
        return section(render_markdown(summary))

    text = render(lambda f: f.update(sensitivity=None))
    assert "the data have no year before the reference year -1, so there is no " \
           "pre-founding change to calibrate" in text.lower()
    assert not any(t[0][0] == "M" for t in tables(text))
    text = render(lambda f: f["sensitivity"].update(breakdown_m=0.0))
    assert "covers 0 even at M = 0" in text and "first covers 0 at" not in text
    text = render(lambda f: f["sensitivity"].update(breakdown_m=None))
    assert "No M up to 100 breaks it" in text and "first covers 0 at" not in text
    text = render(lambda f: f["weights"].update(kind="federations"))
    assert "the average effect of federation on the federations k years" in text


def test_prior_sensitivity_table_shows_each_aggregate(stacked):
    fit, text, _, _ = stacked
    block = section(text)
    table = table_with(block, "quantity")
    names = {**{f"att[{k}]": f"ATT({k})" for k in range(6)},
             "att_average": "average over the years"}
    assert list(fit["prior_sensitivity"]) == list(names)
    assert [r[0] for r in table[1:]] == list(names.values())
    for row, (name, entry) in zip(table[1:], fit["prior_sensitivity"].items(), strict=True):
        diagnosis = ("no prior sensitivity" if entry["diagnosis"] == "✓"
                     else entry["diagnosis"])
        assert row[1:] == [f"{entry['prior']:.3f}", f"{entry['likelihood']:.3f}",
                           diagnosis], name
    assert "A prior sensitivity above 0.05 (in bold) says the prior shapes the result" in block
    assert "Kallioinen et al. 2024" in block
    assert "the hierarchical parts" in block and "are not scaled" in block
    # the bold marks exactly the prior sensitivities above 0.05, never a likelihood one
    for name, entry in fit["prior_sensitivity"].items():
        assert (f"**{entry['prior']:.3f}**" in block) == (entry["prior"] > 0.05), name
        assert f"**{entry['likelihood']:.3f}**" not in block, name


def test_cell_checks_loo_and_parameters(stacked):
    fit, text, _, _ = stacked
    block = section(text)
    labels = {"sd_cell_mean": "sd of cell means", "sd_school_mean": "sd of school means",
              "sd_within_school": "sd of a school's cell means around its mean",
              "lag1_correlation": "lag-1 correlation of a school's consecutive cells"}
    checks = table_with(block, "statistic")
    post = fit["predictive"]["posterior"]
    assert set(post) == set(labels)
    assert checks[1:] == [[labels[k], f"{post[k]['observed']:.2f}",
                           f"{post[k]['mean']:.2f} {interval(post[k]['low'], post[k]['high'])}",
                           f"{post[k]['p_value']:.2f}"] for k in labels]
    assert fit["diagnostics"]["ok"], fit["diagnostics"]
    loo = fit["loo"]
    row = table_with(block, "elpd (se)")[1]
    assert row[:3] == [f"{loo['elpd']:.1f} ({loo['se']:.1f})", f"{loo['p_loo']:.1f}",
                       f"{loo['pareto_k_max']:.2f}" + (f" ({loo['n_high_pareto_k']} high)"
                                                       if loo["n_high_pareto_k"] else "")]
    params = {r[0]: r[1:] for r in table_with(block, "parameter")[1:]}
    shown = {"sd_school": "school sd", "sd_cell": "school-by-cohort shock sd",
             "sigma": "pupil sd",
             "shock_ar": "AR(1) correlation of a school's shocks in consecutive years",
             "tau_step": "random-walk step sd of the common effect path",
             "sd_cohort_effect": "sd of founding cohorts' deviations from the common effect",
             "sd_federation_effect": "sd of the effect between federations"}
    assert set(shown) <= set(fit["params"])  # the shipped spec models all of them
    for name, label in shown.items():
        p = fit["params"][name]
        assert params[label] == [f"{p['mean']:.2f} ({p['sd']:.2f})",
                                 interval(p["hdi_low"], p["hdi_high"])], name
    assert sorted(fit["gap"]) == sorted(fit["federation_effect_by_cohort"])
    for e, g in fit["gap"].items():
        assert params[f"federated - matched gap in year -1, cohort {e}"] == [
            f"{g['mean']:.2f} ({g['sd']:.2f})", interval(g["hdi_low"], g["hdi_high"])], e


def test_plain_summary_describes_the_stacked_fit(stacked):
    fit, text, _, _ = stacked
    summary = text[text.index("\n## Summary\n"):text.index("\n## Data\n")]
    e, average = fit["federation_effect"], fit["att_average"]
    assert ("**All cohorts at once (event_time).** Comparing each federation with the matched "
            "schools of its own founding cohort in the same year, the average effect of "
            f"federation on the federated pupils is {mean_hdi(e['0'])} in year 0 after "
            f"founding and {mean_hdi(e['5'])} in year 5, {mean_hdi(average)} on average over "
            f"years 0-5") in summary
    assert f"P(average > 0) = {average['p_positive']:.2f}." in summary


def test_figures_are_pngs_referenced_with_alt_text(stacked):
    _, text, report, page = stacked
    figures = dict((Path(p).name, alt) for alt, p in re.findall(r"!\[([^\]]+)\]\(([^)]+)\)",
                                                                  text))
    assert set(figures) == {"federation_trajectory.png", "event_study.png", "sensitivity.png",
                            "rank_event_time.png"}
    for name, alt in figures.items():
        assert (report.parent / "figures" / name).read_bytes()[:8] == PNG, name
        assert len(alt) > 80, name
    assert "ATT(k)" in figures["event_study.png"] and "94% HDI" in figures["event_study.png"]
    assert "breakdown value M = " in figures["sensitivity.png"]
    assert "ATT(k)" in figures["federation_trajectory.png"]
    for name in ("lead, year -2", "ATT(0)", "ATT(5)", "shock_ar", "sd_cohort_effect",
                 "sd_federation_effect", "tau_step", "sd_school", "sd_cell", "sigma"):
        assert name in figures["rank_event_time.png"], name
    # the figures sit in the event-time section, the event study before the cohort matrix
    block = section(text)
    assert block.index("](figures/event_study.png)") < block.index("### By founding cohort")
    assert "](figures/sensitivity.png)" in block
    # the docs page: MyST figure directives with alt text, the same files beside it
    docs = page.read_text()
    directives = dict((Path(p).name, alt) for p, alt in re.findall(
        r"```\{figure\} (\S+)\n:alt: (.+)\n", docs))
    assert set(directives) == set(figures)
    for name, alt in directives.items():
        assert (page.parent / "figures" / name).read_bytes()[:8] == PNG, name
        assert alt == " ".join(figures[name].split()), name
    assert "![" not in docs and HEADER in docs


def pooled_spec(folder: Path) -> Path:
    """The shipped spec with the earlier design: ``design = "pooled"``, no ``shocks`` line
    (AR(1) shocks are stacked-only) and no federation deviations."""
    lines = []
    for line in EVENT_SPEC.read_text().splitlines():
        if line.startswith("shocks ="):
            continue
        if line.startswith("design ="):
            line = 'design = "pooled"'
        elif line.startswith("federation_deviations ="):
            line = "federation_deviations = false"
        lines.append(line)
    path = folder / "event_time.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_pooled_design_still_renders(tmp_path):
    path = fit_command([pooled_spec(tmp_path)], STUDY, tmp_path / "fits", None, draws=500,
                       tune=500, chains=2, seed=3)
    fit = json.loads(path.read_text())["fits"][0]
    assert fit["family"] == "event_time" and "design" not in fit
    report = report_command(tmp_path / "fits")
    text = report.read_text()
    block = section(text)
    table = table_with(block, "years since founding")
    assert table[0][1:4] == ["mean (sd)", "94% HDI", "P(effect > 0)"]
    rows = {r[0]: r[1:] for r in table[1:]}
    for key, e in fit["federation_effect"].items():
        label = f"{key} (lead)" if int(key) < 0 else key
        assert rows[label][:3] == effect_cells(e)[:3], key
    assert "-1 (reference)" in rows
    assert "### Pre-trend check" in block
    for stacked_only in ("### By founding cohort", "### Sensitivity to a violation",
                         "### Prior sensitivity", "**What is estimated.**"):
        assert stacked_only not in block, stacked_only
    figures = report.parent / "figures"
    assert (figures / "federation_trajectory.png").read_bytes()[:8] == PNG
    assert (figures / "rank_event_time.png").read_bytes()[:8] == PNG
    assert not (figures / "event_study.png").exists()
    assert not (figures / "sensitivity.png").exists()
    assert "**All cohorts at once (event_time).** The joint event-time model puts" in text
