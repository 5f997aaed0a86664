"""Convergence diagnostics vectorised over a variable's elements: rank-normalised split R-hat,
bulk and tail effective sample sizes, and the Monte Carlo error of the mean (Vehtari, Gelman,
Simpson, Carpenter & Bürkner 2021).

The definitions are ArviZ's (``arviz_stats``), element for element; a test checks every value
against ArviZ. ArviZ computes them one element at a time (a Python call per element: about
30 s for the 6,000 school elements of a national fit); here each is a handful of array
operations over all elements at once, in blocks of :data:`BLOCK` elements to bound memory.

- R-hat: the larger of the split R-hats of the rank-normalised draws and of the
  rank-normalised absolute deviations from the median ("folded").
- Bulk ESS: the ESS of the rank-normalised split chains (Geyer's initial monotone sequence).
- Tail ESS: the smaller ESS of the indicators ``draw <= q`` at the quantiles
  :data:`TAIL_PROB` (5 % and 95 %, as in Vehtari et al. and Stan's ``posterior``; ArviZ 1.x
  would otherwise take its interval default, 11 % and 89 %).
- MCSE of the mean: the draws' sd over the square root of the split chains' ESS.

An element with a NaN draw, or fewer than 4 draws a chain (or, for R-hat, than 2 chains),
gets NaN, as in ArviZ; so does one whose chains did not move (R-hat 0/0).
"""

from __future__ import annotations

import math

import numba
import numpy as np
import xarray as xr
from scipy import special

#: Quantiles whose indicator ESS is the tail ESS (the smaller of the two is reported).
TAIL_PROB = (0.05, 0.95)

#: Elements processed together (bounds memory: a few arrays of 8 bytes x draws x BLOCK).
BLOCK = 512


def _split(x: np.ndarray) -> np.ndarray:
    """(m, chain, draw) -> (m, 2 chain, draw // 2): each chain's first and last halves."""
    half = x.shape[2] // 2
    return np.concatenate([x[:, :, :half], x[:, :, x.shape[2] - half:]], axis=1)


def _normal_scores(size: int) -> np.ndarray:
    """The normal score of every average rank of ``size`` draws: entry ``k`` for rank
    ``k / 2 + 1`` (a tie group from sorted position ``a`` to ``b`` has rank ``(a + b) / 2 + 1``),
    with Blom's offset 3/8, as ArviZ's ``_z_scale``."""
    rank = np.arange(2 * size - 1) / 2 + 1
    return special.ndtri((rank - 0.375) / (size - 2 * 0.375 + 1))


@numba.njit(cache=True)
def _tie_scores(ordered: np.ndarray, order: np.ndarray, scores: np.ndarray,
                out: np.ndarray) -> None:  # pragma: no cover - compiled
    """Write each value's normal score to ``out[order[k]]``, ``ordered`` its values sorted."""
    size = ordered.size
    i = 0
    while i < size:
        j = i
        while j + 1 < size and ordered[j + 1] == ordered[i]:
            j += 1
        for k in range(i, j + 1):
            out[order[k]] = scores[i + j]
        i = j + 1


@numba.njit(cache=True)
def _rank_normalise(x: np.ndarray, orders: np.ndarray, scores: np.ndarray
                    ) -> tuple[np.ndarray, np.ndarray]:  # pragma: no cover - compiled
    """Rank-normalised values of each row of ``x`` (m, N), ``orders`` its argsort, and of its
    absolute deviations from the row's median ("folded"), with no second sort: the deviations'
    order is the merge of the values below the median (descending) and above it (ascending)."""
    m, size = x.shape
    bulk = np.empty((m, size))
    folded = np.empty((m, size))
    merged = np.empty(size)
    merged_order = np.empty(size, dtype=np.int64)
    for e in range(m):
        order = orders[e]
        ordered = x[e][order]
        _tie_scores(ordered, order, scores, bulk[e])
        half = size // 2
        median = (ordered[half] if size % 2 else (ordered[half - 1] + ordered[half]) / 2)
        up = 0
        while up < size and ordered[up] < median:
            up += 1
        down = up - 1
        for k in range(size):
            if down >= 0 and (up >= size
                              or abs(ordered[down] - median) <= abs(ordered[up] - median)):
                merged[k], merged_order[k] = abs(ordered[down] - median), order[down]
                down -= 1
            else:
                merged[k], merged_order[k] = abs(ordered[up] - median), order[up]
                up += 1
        _tie_scores(merged, merged_order, scores, folded[e])
    return bulk, folded


def _rhat(x: np.ndarray) -> np.ndarray:
    """Gelman-Rubin R-hat of chains (m, chain, draw) -> (m,)."""
    n = x.shape[2]
    between = n * np.var(x.mean(axis=2), axis=1, ddof=1)
    within = np.var(x, axis=2, ddof=1).mean(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.sqrt((between / within + n - 1) / n)


@numba.njit(cache=True)
def _geyer_ess(x: np.ndarray) -> np.ndarray:  # pragma: no cover - compiled
    """ESS of each element's chains, ``x`` (m, chain, draw): ArviZ's ``_ess`` step for step
    (Geyer's initial positive then monotone sequences of paired autocorrelations), each lag's
    autocovariance summed directly when the loop first needs it, instead of every lag by FFT:
    the loop stops after a few lags for a chain that mixes."""
    m, c, n = x.shape
    size = c * n
    out = np.empty(m)
    centred = np.empty((c, n))
    rho = np.zeros(n)
    floor = 1.0 / math.log10(size)
    for e in range(m):
        lo, hi = x[e, 0, 0], x[e, 0, 0]
        for i in range(c):
            for t in range(n):
                lo, hi = min(lo, x[e, i, t]), max(hi, x[e, i, t])
        if hi - lo < 1e-15:  # numpy's finfo(float).resolution
            out[e] = size
            continue
        means = np.empty(c)
        for i in range(c):
            means[i] = x[e, i].mean()
            for t in range(n):
                centred[i, t] = x[e, i, t] - means[i]
        grand = means.mean()
        between = 0.0
        for i in range(c):
            between += (means[i] - grand) ** 2

        def acov(lag):
            total = 0.0
            for i in range(c):
                for t in range(n - lag):
                    total += centred[i, t] * centred[i, t + lag]
            return total / n / c

        mean_var = acov(0) * n / (n - 1.0)
        var_plus = mean_var * (n - 1.0) / n
        if c > 1:
            var_plus += between / (c - 1)
        rho[:] = 0.0
        even = 1.0
        rho[0] = even
        odd = 1.0 - (mean_var - acov(1)) / var_plus
        rho[1] = odd
        t = 1
        while t < n - 3 and even + odd > 0.0:
            even = 1.0 - (mean_var - acov(t + 1)) / var_plus
            odd = 1.0 - (mean_var - acov(t + 2)) / var_plus
            if even + odd >= 0:
                rho[t + 1] = even
                rho[t + 2] = odd
            t += 2
        max_t = t - 2
        if even > 0:
            rho[max_t + 1] = even
        t = 1
        while t <= max_t - 2:
            if rho[t + 1] + rho[t + 2] > rho[t - 1] + rho[t]:
                rho[t + 1] = (rho[t - 1] + rho[t]) / 2.0
                rho[t + 2] = rho[t + 1]
            t += 2
        tau = -1.0 + 2.0 * rho[: max_t + 1].sum() + rho[max_t + 1: max_t + 2].sum()
        tau = max(tau, floor)
        out[e] = size / tau
        for k in range(n):
            if math.isnan(rho[k]):
                out[e] = np.nan
                break
    return out


def element_diagnostics(draws: np.ndarray) -> dict[str, np.ndarray]:
    """R-hat, bulk and tail ESS and the MCSE of the mean of every element.

    Parameters
    ----------
    draws : numpy.ndarray
        Shape ``(chain, draw, *shape)``.

    Returns
    -------
    dict of str -> numpy.ndarray
        ``r_hat``, ``ess_bulk``, ``ess_tail``, ``mcse_mean``, each of shape ``shape``
        (draws' units for ``mcse_mean``; ESS in draws).
    """
    draws = np.asarray(draws, dtype=float)
    chains, n = draws.shape[:2]
    shape = draws.shape[2:]
    elements = np.moveaxis(draws.reshape(chains, n, -1), 2, 0)  # (m, chain, draw)
    parts: dict[str, list[np.ndarray]] = {"r_hat": [], "ess_bulk": [], "ess_tail": [],
                                          "mcse_mean": []}
    scores = _normal_scores(2 * chains * (n // 2))
    for start in range(0, elements.shape[0], BLOCK):
        x = np.array(elements[start:start + BLOCK], order="C")  # a copy: NaN are zeroed
        m = x.shape[0]
        # ArviZ's refusals: a NaN draw, fewer than 4 draws (and 2 chains for R-hat)
        bad = np.isnan(x).any(axis=(1, 2)) | (n < 4)
        x[bad] = 0.0  # reported as NaN below; keeps NaN out of the sort
        split = _split(x)
        rows = split.reshape(m, -1)
        # numpy's sort is about 3 times numba's
        bulk, folded = (v.reshape(split.shape) for v in _rank_normalise(
            rows, np.argsort(rows, axis=1), scores))
        rhat = np.maximum(_rhat(bulk), _rhat(folded))
        flat = x.reshape(m, -1)
        low, high = np.quantile(flat, TAIL_PROB, axis=1)
        tail = np.minimum(_geyer_ess(_split(x <= low[:, None, None]).astype(float)),
                          _geyer_ess(_split(x <= high[:, None, None]).astype(float)))
        with np.errstate(invalid="ignore", divide="ignore"):
            mcse = np.std(flat, axis=1, ddof=1) / np.sqrt(_geyer_ess(split))
        parts["r_hat"].append(np.where(bad | (chains < 2), np.nan, rhat))
        for key, value in (("ess_bulk", _geyer_ess(bulk)), ("ess_tail", tail),
                           ("mcse_mean", mcse)):
            parts[key].append(np.where(bad, np.nan, value))
    return {k: (np.concatenate(v) if v else np.empty(0)).reshape(shape)
            for k, v in parts.items()}


def dataset_diagnostics(posterior: xr.Dataset, names: list[str] | tuple[str, ...]
                        ) -> dict[str, dict[str, np.ndarray]]:
    """:func:`element_diagnostics` of the named variables of a posterior (dims chain and draw
    first, then the variable's own), all variables' elements in one pass.

    Returns
    -------
    dict
        ``name -> {r_hat, ess_bulk, ess_tail, mcse_mean}``, each shaped like one draw of the
        variable.
    """
    arrays = [posterior[name].transpose("chain", "draw", ...).to_numpy() for name in names]
    if not arrays:
        return {}
    c, n = arrays[0].shape[:2]
    flat = element_diagnostics(np.concatenate([a.reshape(c, n, -1) for a in arrays], axis=2))
    out, start = {}, 0
    for name, a in zip(names, arrays, strict=True):
        size = int(np.prod(a.shape[2:], dtype=int))
        out[name] = {k: v[start:start + size].reshape(a.shape[2:]) for k, v in flat.items()}
        start += size
    return out


def relative_ess(posterior: xr.Dataset) -> float:
    """The draws' relative efficiency for PSIS (ArviZ's ``_get_r_eff``): the mean over every
    element of every variable of ESS(mean) / draws (the ESS of the split chains, not rank
    normalised); 1 for one chain."""
    chains, draws = posterior.sizes["chain"], posterior.sizes["draw"]
    if chains == 1:
        return 1.0
    ess = []
    for name in posterior.data_vars:
        x = posterior[name].transpose("chain", "draw", ...).to_numpy().astype(float)
        x = np.ascontiguousarray(np.moveaxis(x.reshape(chains, draws, -1), 2, 0))
        bad = np.isnan(x).any(axis=(1, 2)) | (draws < 4)
        ess.append(np.where(bad, np.nan, _geyer_ess(_split(x))))
    return float(np.concatenate(ess).mean() / (chains * draws))
