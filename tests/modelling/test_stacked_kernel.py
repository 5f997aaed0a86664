"""The fused kernel of the stacked model (bayesfed.modelling.stacked_kernel) against the PyTensor
graph of the same likelihood (bayesfed.modelling.event_stacked.marginal_loglik, itself checked
against the dense Gaussian density of the pupils in test_event_stacked.py): equal values and
gradients."""

from __future__ import annotations

import numpy as np
import pytensor
import pytest
from test_event_stacked import POINT, small_frame, stacked

from bayesfed.modelling.event_stacked import SIGNED, reference_loglik
from bayesfed.modelling.stacked_kernel import StackedLogLik

OPTIONS = [{}, {"shocks": "iid"}, {"federation_deviations": False},
           {"effect_prior": "independent"}]


def points(names: list[str], seed: int) -> list[dict]:
    """POINT, then random points, then points at the edges the sampler visits (a correlation
    near +-1, sds near 0 and large)."""
    rng = np.random.default_rng(seed)
    out = [POINT]
    for _ in range(3):
        out.append({"beta": rng.normal(size=1), "sigma": rng.uniform(0.3, 3),
                    "sd_cell": rng.uniform(0.01, 2), "sd_school": rng.uniform(0.01, 2),
                    "shock_ar_01": rng.uniform(0.02, 0.98),
                    "sd_federation_effect": rng.uniform(0.01, 1),
                    "sd_cohort_effect": rng.uniform(0.001, 1), "tau_step": rng.uniform(0.001, 1)})
    out.append(POINT | {"shock_ar_01": 1 - 1e-7, "sd_cell": 1e-4, "sd_cohort_effect": 1e-6})
    out.append(POINT | {"shock_ar_01": 1e-7, "sd_school": 30.0, "tau_step": 1e-6,
                        "sd_federation_effect": 1e-6})
    return [{k: v for k, v in p.items() if k in names} for p in out]


@pytest.mark.parametrize("options", OPTIONS)
def test_kernel_equals_the_graph_value_and_gradient(options):
    _, _, parts = stacked(small_frame(), **options)
    model = parts.model
    free = list(model.free_RVs)
    names = [v.name.removesuffix(SIGNED) for v in free]
    graph_ll = reference_loglik(parts)
    fused_ll = model["marginal_loglik"]
    assert any(isinstance(node.op, StackedLogLik)
               for node in pytensor.graph.traversal.ancestors([fused_ll])
               if node.owner is not None for node in [node.owner])
    both = pytensor.function(free, [graph_ll, fused_ll, *pytensor.grad(graph_ll, free),
                                    *pytensor.grad(fused_ll, free)],
                             on_unused_input="ignore")
    for point in points(names, seed=len(names)):
        out = both(*(point[n] for n in names))
        assert out[1] == pytest.approx(out[0], rel=1e-10, abs=1e-9), point
        graph_grad, fused_grad = out[2:2 + len(free)], out[2 + len(free):]
        for name, g, f in zip(names, graph_grad, fused_grad, strict=True):
            np.testing.assert_allclose(f, g, rtol=1e-7, atol=1e-7 * (1 + np.abs(g).max()),
                                       err_msg=f"{name} at {point}")


def test_numba_backend_runs_the_kernel_once_for_the_density_and_its_gradient():
    _, _, parts = stacked(small_frame())
    model = parts.model
    point = model.initial_point()
    logp = model.logp()
    grads = pytensor.grad(logp, model.value_vars)
    fn = pytensor.function(model.value_vars, [logp, *grads], mode="NUMBA")
    kernels = [n for n in fn.maker.fgraph.apply_nodes if isinstance(n.op, StackedLogLik)]
    assert len(kernels) == 1
    c_fn = pytensor.function(model.value_vars, [logp, *grads], mode="FAST_RUN")
    args = [point[v.name] for v in model.value_vars]
    for a, b in zip(fn(*args), c_fn(*args), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12)


def test_pytensor_cache_key_changes_with_the_kernel_source():
    import hashlib
    from pathlib import Path

    from pytensor.link.numba.dispatch.basic import numba_funcify_and_cache_key

    from bayesfed.modelling import stacked_kernel

    _, _, parts = stacked(small_frame())
    node = next(n.owner for n in pytensor.graph.traversal.ancestors([parts.model[
        "marginal_loglik"]]) if n.owner is not None and isinstance(n.owner.op, StackedLogLik))
    _, key = numba_funcify_and_cache_key(node.op, node)
    digest = hashlib.sha256(Path(stacked_kernel.__file__).read_bytes()).hexdigest()
    assert key.endswith(digest)
