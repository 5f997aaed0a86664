r"""The federation effect as an estimand, computed per posterior draw.

For the stacked event-time model (:mod:`bayesfed.modelling.event_stacked`), with
:math:`\theta_{e,k}` the effect of federation on founding cohort :math:`e` in year :math:`k` since
founding and
:math:`b_f` the deviation of federation :math:`f`:

.. math::

    ATT(e,k) = \frac{\sum_{f \in e} u_{fk} (\theta_{e,k} + b_f)}{\sum_{f \in e} u_{fk}},
    \qquad
    ATT(k) = \sum_e w(e,k)\,ATT(e,k), \quad
    w(e,k) = \frac{\sum_{f \in e} u_{fk}}{\sum_f u_{fk}},

with unit weights :math:`u_{fk}` the federated pupils of federation :math:`f` in year
:math:`k` (``weights = "pupils"``: the average effect on the federated pupils) or
:math:`1[\text{f has federated pupils in year } k]` (``"federations"``: the average over
federations). The average effect is :math:`\frac{1}{K+1}\sum_{k=0}^{K} ATT(k)`. Leads are
aggregated with the same :math:`w(e,k)` (no deviations before founding). Each is a function
of one posterior draw, so its posterior is exact given the draws.

Sensitivity (Rambachan & Roth 2023, relative magnitudes): if parallel trends fail, the bias
of :math:`ATT(k)` is the post-founding violation :math:`\Delta_k`, with :math:`\Delta_{-1}
= 0`. Bounding each year's change of the violation by :math:`M` times the largest
pre-founding one, :math:`|\Delta_{k} - \Delta_{k-1}| \le M\,\bar\Delta`, :math:`\bar\Delta =
\max_{k < -1} |\lambda_{k+1} - \lambda_k|` (aggregated leads, :math:`\lambda_{-1} = 0`), gives
:math:`|\Delta_k| \le (k+1) M \bar\Delta`. Per draw the identified set of :math:`ATT(k)` is
:math:`[ATT(k) - (k+1)M\bar\Delta,\ ATT(k) + (k+1)M\bar\Delta]` (of the average, the mean of
the bounds); the reported interval runs from the :math:`(1-p)/2` quantile of the lower bound
to the :math:`(1+p)/2` quantile of the upper, so it covers the identified set with posterior
probability at least :math:`p` (0.94, :data:`bayesfed.posterior.intervals.PROB`). The breakdown
value is the smallest :math:`M` at which the average's interval covers 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import xarray as xr

from bayesfed.design.stacked import StackedData

WeightKind = Literal["pupils", "federations"]


@dataclass(frozen=True)
class AttWeights:
    """The weights of the aggregates (module docstring).

    Attributes
    ----------
    kind : {"pupils", "federations"}
    unit : ndarray, shape (F, T)
        :math:`u_{fk}` on the model's grid of years (F federations).
    cohort : ndarray, shape (n_foundings, T)
        :math:`w(e,k)`; each year's column sums to 1 where the year has federated pupils.
    years : tuple of int, length T
    """

    kind: WeightKind
    unit: np.ndarray
    cohort: np.ndarray
    years: tuple[int, ...]


def att_weights(data: StackedData, kind: WeightKind = "pupils") -> AttWeights:
    """Unit and cohort weights of the fitted data.

    Parameters
    ----------
    data : StackedData
    kind : {"pupils", "federations"}
    """
    if kind not in ("pupils", "federations"):
        raise ValueError(f"weights must be 'pupils' or 'federations', got {kind!r}")
    fed = data.federated == 1
    pupils = np.zeros((len(data.federations), len(data.years)))
    np.add.at(pupils, data.federation_idx[fed], data.n[fed])
    unit = pupils if kind == "pupils" else (pupils > 0).astype(float)
    of_cohort = (data.federation_founding[None, :]
                 == np.arange(len(data.foundings))[:, None]).astype(float)  # (E, F)
    per_cohort = of_cohort @ unit
    total = per_cohort.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        cohort = np.where(total > 0, per_cohort / total, 0.0)
    return AttWeights(kind, unit, cohort, data.years)


def att_variables(posterior: xr.Dataset, data: StackedData, weights: AttWeights
                  ) -> dict[str, xr.DataArray]:
    """The aggregates of every draw.

    Parameters
    ----------
    posterior : xarray.Dataset
        With ``cohort_effect`` (chain, draw, founding, event_year), ``lead`` (chain, draw,
        founding, lead_year) and, when modelled, ``federation_deviation`` (chain, draw,
        federation) (:func:`bayesfed.posterior.event_draws.posterior_draws`).
    data : StackedData
    weights : AttWeights

    Returns
    -------
    dict of str to DataArray
        ``att_cohort`` (founding, event_year): :math:`ATT(e,k)`; ``att`` (event_year):
        :math:`ATT(k)`; ``att_average`` (scalar): the mean over years; ``lead_att``
        (lead_year): the aggregated leads. Outcome units, dims chain and draw first.
    """
    r = data.reference
    theta = posterior["cohort_effect"].transpose("chain", "draw", "founding", "event_year")
    post_unit = weights.unit[:, r + 1:]  # (F, K1)
    of_cohort = (data.federation_founding[None, :]
                 == np.arange(len(data.foundings))[:, None]).astype(float)  # (E, F)
    att_cohort = theta.to_numpy().copy()
    if "federation_deviation" in posterior:
        b = posterior["federation_deviation"].transpose("chain", "draw", "federation").to_numpy()
        mass = of_cohort @ post_unit  # (E, K1)
        with np.errstate(invalid="ignore", divide="ignore"):
            share = np.where(mass[:, None, :] > 0, of_cohort[:, :, None] * post_unit[None]
                             / mass[:, None, :], 0.0)  # (E, F, K1)
        att_cohort += np.einsum("cdf,efk->cdek", b, share)
    w_post = weights.cohort[:, r + 1:]
    w_lead = weights.cohort[:, :r]
    att = np.einsum("cdek,ek->cdk", att_cohort, w_post)
    lead = posterior["lead"].transpose("chain", "draw", "founding", "lead_year").to_numpy()
    lead_att = np.einsum("cdek,ek->cdk", lead, w_lead)
    dims = ("chain", "draw")
    coords = {"founding": theta["founding"].to_numpy(),
              "event_year": theta["event_year"].to_numpy(),
              "lead_year": posterior["lead"]["lead_year"].to_numpy()}
    return {
        "att_cohort": xr.DataArray(att_cohort, dims=(*dims, "founding", "event_year"),
                                   coords={k: coords[k] for k in ("founding", "event_year")}),
        "att": xr.DataArray(att, dims=(*dims, "event_year"),
                            coords={"event_year": coords["event_year"]}),
        "att_average": xr.DataArray(att.mean(axis=-1), dims=dims),
        "lead_att": xr.DataArray(lead_att, dims=(*dims, "lead_year"),
                                 coords={"lead_year": coords["lead_year"]}),
    }


def weight_variables(data: StackedData, weights: AttWeights) -> dict[str, xr.DataArray]:
    """The cohort weights, for the fit's ``constant_data``: ``att_weight`` (founding, year:
    every grid year, leads included) and ``federated_pupils`` (founding, year)."""
    fed = data.federated == 1
    pupils = np.zeros((len(data.foundings), len(data.years)))
    np.add.at(pupils, data.founding_idx[fed], data.n[fed])
    coords = {"founding": list(data.foundings), "year": [str(k) for k in data.years]}
    return {"att_weight": xr.DataArray(weights.cohort, dims=("founding", "year"), coords=coords),
            "federated_pupils": xr.DataArray(pupils, dims=("founding", "year"), coords=coords)}


def quantile_interval(lower: np.ndarray, upper: np.ndarray, prob: float) -> tuple[float, float]:
    """The :math:`(1-p)/2` quantile of ``lower`` and :math:`(1+p)/2` of ``upper`` (draws)."""
    return (float(np.quantile(lower, (1 - prob) / 2)), float(np.quantile(upper, (1 + prob) / 2)))


def largest_pre_change(lead_att: np.ndarray) -> np.ndarray:
    """:math:`\\bar\\Delta` of each draw: the largest absolute change between consecutive
    pre-founding years, the reference year's lead being 0.

    Parameters
    ----------
    lead_att : ndarray, shape (n_draws, L)
        Aggregated leads of the L consecutive years ``k_min .. -2``.
    """
    path = np.concatenate([lead_att, np.zeros((lead_att.shape[0], 1))], axis=1)
    return np.abs(np.diff(path, axis=1)).max(axis=1)


def sensitivity(att: np.ndarray, lead_att: np.ndarray, years: list[int], grid: list[float],
                prob: float) -> dict[str, object] | None:
    """The relative-magnitudes sensitivity analysis (module docstring).

    Parameters
    ----------
    att : ndarray, shape (n_draws, K1)
        :math:`ATT(k)` draws for the years ``years`` (0..K).
    lead_att : ndarray, shape (n_draws, L)
    years : list of int
    grid : list of float
        The values of M.
    prob : float
        Interval probability.

    Returns
    -------
    dict or None
        None without leads. Otherwise ``grid``; ``att`` (year -> list of [low, high], one per
        M); ``average`` (list of [low, high]); ``breakdown_m`` (the smallest M at which the
        average's interval covers 0, found by bisection to 1e-3; None beyond 100: no M
        breaks it); ``max_pre_change`` (posterior mean of :math:`\\bar\\Delta`, outcome
        units).
    """
    if lead_att.shape[1] == 0:
        return None
    delta = largest_pre_change(lead_att)
    steps = np.array(years, dtype=float) + 1.0
    average = att.mean(axis=1)

    def avg_interval(m: float) -> tuple[float, float]:
        bound = m * steps.mean() * delta
        return quantile_interval(average - bound, average + bound, prob)

    out = {"grid": list(grid), "max_pre_change": float(delta.mean()),
           "att": {str(k): [list(quantile_interval(att[:, i] - m * steps[i] * delta,
                                                   att[:, i] + m * steps[i] * delta, prob))
                            for m in grid] for i, k in enumerate(years)},
           "average": [list(avg_interval(m)) for m in grid]}
    out["breakdown_m"] = breakdown(avg_interval)
    return out


def breakdown(interval, limit: float = 100.0, tol: float = 1e-3) -> float | None:
    """The smallest M >= 0 whose ``interval(M)`` covers 0, by bisection (the intervals are
    nested, growing with M); None if even ``limit`` does not."""
    def covers(m: float) -> bool:
        low, high = interval(m)
        return low <= 0.0 <= high

    if covers(0.0):
        return 0.0
    if not covers(limit):
        return None
    low, high = 0.0, limit
    while high - low > tol:
        mid = 0.5 * (low + high)
        low, high = (low, mid) if covers(mid) else (mid, high)
    return high
