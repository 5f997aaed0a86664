"""brms as a peer of bayesfed's two-level extensions: the helpers the agreement benches share
(``bench/location_scale_agreement.py``, ``bench/random_slopes_agreement.py``). brms runs in
``bench/r/brms_school_variation.R`` on the design columns bayesfed fits, with bayesfed's priors
where brms can state them (that script's header lists them)."""

from __future__ import annotations

import json
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from bayesfed.modelling.priors import LKJ_ETA, SD_LOG_SIGMA_PRIOR
from bayesfed.posterior.convergence import element_diagnostics

ROOT = Path(__file__).resolve().parent.parent
R_SCRIPT = ROOT / "bench" / "r" / "brms_school_variation.R"


def run_brms(frame: pd.DataFrame, priors: dict, mode: str, *extra: str) -> dict:
    """``bench/r/brms_school_variation.R`` on ``frame`` (y, school, x1..xp); its JSON."""
    with tempfile.TemporaryDirectory(prefix="bayesfed-brms-") as folder:
        data, prior, out = (Path(folder) / name for name in ("d.csv", "p.json", "o.json"))
        frame.to_csv(data, index=False)
        prior.write_text(json.dumps(priors))
        proc = subprocess.run(["Rscript", str(R_SCRIPT), str(data), str(prior), str(out), mode,
                               *extra], capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(proc.stderr[-3000:])
        return json.loads(out.read_text())


def design_frame(design) -> pd.DataFrame:
    """The design's columns as brms takes them: y, school, x1..xp."""
    frame = pd.DataFrame({"y": design.y, "school": np.asarray(design.schools)[design.school_idx]})
    for j in range(design.X.shape[1]):
        frame[f"x{j + 1}"] = design.X[:, j]
    return frame


def brms_priors(design, priors, slope_sd: float = 1.0) -> dict:
    """bayesfed's resolved priors in brms's terms: the same for the coefficients, the sds
    (``slope_sd``: the random slope's HalfNormal scale) and the correlations; for the
    intercept at the predictors' means, the marginal of bayesfed's (which is conditional on
    the coefficients); for the log of the median school's sd, Normal(log sd of the outcome, 1)
    (bayesfed's is HalfNormal on the sd)."""
    x_centre = design.X.mean(axis=0)
    return {"b_mu": priors.slope_mu.tolist(), "b_sd": priors.slope_sigma.tolist(),
            "intercept_mu": float(priors.intercept.mu + x_centre @ priors.slope_mu),
            "intercept_sd": float(np.sqrt(priors.intercept.sigma**2
                                          + (x_centre**2) @ priors.slope_sigma**2)),
            "sd_school": priors.sd_school, "sigma_sd": priors.sigma,
            "log_sigma_mu": float(np.log(design.y.std())), "log_sigma_sd": 1.0,
            "sd_log_sigma": SD_LOG_SIGMA_PRIOR, "eta": LKJ_ETA, "sd_slope": slope_sd}


def compare(rows: list[tuple[str, np.ndarray, dict]]) -> float:
    """Print the comparison table; return the largest ``|z|``. ``rows``: name, bayesfed's
    draws (chain, draw), brms's summary (mean, sd, mcse_mean)."""
    print("| quantity | brms mean (sd) | bayesfed mean (sd) | z (MC errors) | diff / sd |")
    print("|---|---|---|---|---|")
    worst = 0.0
    for name, draws, theirs in rows:
        mcse = float(element_diagnostics(draws)["mcse_mean"])
        mean, sd = float(draws.mean()), float(draws.std(ddof=1))
        z = (mean - theirs["mean"]) / np.hypot(mcse, theirs["mcse_mean"])
        worst = max(worst, abs(z))
        print(f"| {name} | {theirs['mean']:.4f} ({theirs['sd']:.4f}) | {mean:.4f} ({sd:.4f}) "
              f"| {z:+.2f} | {(mean - theirs['mean']) / sd:+.3f} |")
    return worst
