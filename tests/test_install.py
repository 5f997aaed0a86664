"""The package as a user installs it: a wheel (not editable) in a fresh virtual environment
carries the shipped specifications and data, so `bayesfed demo` and bayesfed.load_example()
work away from the repository (slow: installs the dependencies and runs the demo)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_the_wheel_in_a_fresh_environment_runs_the_demo(tmp_path):
    def run(*args, cwd=tmp_path):
        return subprocess.run([str(a) for a in args], cwd=cwd, capture_output=True, text=True,
                              check=True).stdout

    run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", tmp_path / "dist",
        ROOT)
    (wheel,) = (tmp_path / "dist").glob("bayesfed-*.whl")
    run(sys.executable, "-m", "venv", tmp_path / "env")
    python = tmp_path / "env" / "bin" / "python"
    run(python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", wheel)
    away = tmp_path / "elsewhere"
    away.mkdir()
    out = run(python, "-c", "import bayesfed, bayesfed.inputs.shipped as s; "
              "print(bayesfed.load_example().shape, s.folder('models'))", cwd=away)
    assert out.startswith("(118208, 15) ")
    assert "site-packages/bayesfed/_shipped/models" in out
    out = run(tmp_path / "env" / "bin" / "bayesfed", "demo", "--out", away / "demo", cwd=away)
    assert "demo finished" in out
    report = (away / "demo" / "report.md").read_text(encoding="utf-8")
    assert "M2" in report and "ATT" in report
