"""The documentation site builds in strict mode, and its generated pages say what the code does.

Sphinx runs in a subprocess, as ``make docs`` runs it (``-W --keep-going -n``): any warning,
unresolved reference or malformed docstring fails the build. The generated tables (roles,
spec keys, command-line reference) are checked against the code they come from, and a
deliberately broken page checks that the drift checks fail a build.
"""

from __future__ import annotations

import re
import subprocess
import sys
from html import unescape
from pathlib import Path

import pytest

from bayesfed.inputs.schema import ROLES
from bayesfed.inputs.spec import EventSection, ModelSection

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
COMMANDS = ("simulate", "validate", "fit", "report", "demo")


def sphinx_build(source: Path, out: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-n", "-q", "-b", "html",
         "-d", str(out / ".doctrees"), str(source), str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=300)


def text_of(page: Path) -> str:
    """The visible text of an HTML page, whitespace collapsed."""
    html = page.read_text(encoding="utf-8")
    return " ".join(unescape(re.sub(r"<[^>]+>", " ", html)).split())


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("site")
    run = sphinx_build(DOCS, out)
    problems = [line for line in run.stderr.splitlines() if "WARNING" in line or "ERROR" in line]
    assert run.returncode == 0, ("strict docs build failed (make docs shows the same):\n"
                                 + "\n".join(problems or [run.stdout, run.stderr]))
    return out


def test_site_has_its_pages(site: Path):
    for page in ("index", "getting-started", "data", "models/two-level", "models/event-time",
                 "cli", "api", "summary-json", "benchmarks", "reports/index", "why-sphinx",
                 "architecture", "published-tables"):
        assert (site / f"{page}.html").is_file(), page
    getting_started = text_of(site / "getting-started.html")
    for phrase in ("make demo", "make test", "out/demo/report.md", "summary.json"):
        assert phrase in getting_started


def test_cli_reference_lists_every_command_and_option(site: Path):
    cli = text_of(site / "cli.html")
    for command in COMMANDS:
        assert f"bayesfed {command}" in cli
    for option in ("--draws", "--sampler", "--drop-incomplete", "--force", "--pre-trend"):
        assert option in cli
    assert "/work/" not in cli and str(ROOT) not in cli  # defaults shown relative to the repo


def test_api_reference_documents_the_modules(site: Path):
    api = (site / "api.html").read_text(encoding="utf-8")
    for name in ("bayesfed.inputs.spec.load_spec", "bayesfed.modelling.priors.resolve_priors",
                 "bayesfed.modelling.two_level.build_two_level", "bayesfed.posterior.partition.vpc",
                 "bayesfed.errors.DataError"):
        assert f'id="{name}"' in api, name


def test_generated_tables_follow_the_code(site: Path):
    data = text_of(site / "data.html")
    for role in ROLES.values():
        assert role.description.split()[0] in data and role.name in data
    two_level = text_of(site / "models/two-level.html")
    for key in ModelSection.model_fields:
        assert key in two_level
    event = text_of(site / "models/event-time.html")
    for key in EventSection.model_fields:
        assert key in event


def test_a_drifted_page_fails_the_strict_build(tmp_path: Path):
    source = tmp_path / "src"
    source.mkdir()
    (source / "conf.py").write_text(
        "import sys\n"
        f"sys.path.insert(0, {str(DOCS / '_ext')!r})\n"
        "extensions = ['myst_parser', 'bayesfed_docs']\n", encoding="utf-8")
    (source / "index.md").write_text(
        "# Drifted\n\n"
        "```{bayesfed-spec-keys} bayesfed.inputs.spec.Predictors\n"
        "pupil: documented\n"
        "schools: a key the spec does not have\n"
        "```\n\n"
        "```{bayesfed-spec-example}\n"
        "[model]\nname = \"M\"\nfamly = \"two_level\"\n"
        "```\n", encoding="utf-8")
    run = sphinx_build(source, tmp_path / "out")
    assert run.returncode != 0
    for message in ("Predictors.school is not documented", "Predictors has no key 'schools'",
                    "invalid spec example", "did you mean 'family'"):
        assert message in run.stderr, run.stderr
