"""A cross-level interaction end to end: ``fsm * federated`` in a formula, fitted through the job
to a study whose FSM gap is narrower in federated schools by a known amount."""

from __future__ import annotations

import json

import bayesfed
from bayesfed.inputs.simulate import DEFAULT_SEED, SimConfig, simulate

FORMULA = "gcse_score ~ fsm * federated + idaci + ks2 + (1 | school_id)"
NARROWING = 1.0  # outcome units added to FSM pupils' scores in federated schools


def test_recovers_a_cross_level_interaction(tmp_path):
    frame, _ = simulate(SimConfig(), seed=DEFAULT_SEED)
    frame = frame.assign(gcse_score=frame["gcse_score"]
                         + NARROWING * frame["fsm"] * frame["federated"])
    bayesfed.fit(frame, FORMULA, years=[0], out=tmp_path / "fits", seed=1)
    fit = json.loads((tmp_path / "fits" / "summary.json").read_text())["fits"][0]
    assert fit["diagnostics"]["ok"], fit["diagnostics"]
    assert fit["terms"] == ["intercept", "fsm", "idaci", "ks2", "fsm:federated", "federated"]
    inter = fit["params"]["fsm:federated"]
    assert inter["hdi_low"] < NARROWING < inter["hdi_high"] and inter["hdi_low"] > 0
    # the REML cross-check fits the same column: its estimate within a posterior sd
    estimate, se = fit["reml"]["coef"]["fsm:federated"]
    assert abs(estimate - inter["mean"]) < inter["sd"] and se > 0
