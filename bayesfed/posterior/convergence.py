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

import numpy as np
import xarray as xr
from scipy import fft, special, stats

#: Quantiles whose indicator ESS is the tail ESS (the smaller of the two is reported).
TAIL_PROB = (0.05, 0.95)

#: Elements processed together (bounds the FFT's memory: about 16 bytes x 2 x draws x BLOCK).
BLOCK = 256


def _split(x: np.ndarray) -> np.ndarray:
    """(chain, draw, m) -> (2 chain, draw // 2, m): each chain's first and last halves."""
    half = x.shape[1] // 2
    return np.concatenate([x[:, :half], x[:, x.shape[1] - half:]], axis=0)


def _z_scale(x: np.ndarray) -> np.ndarray:
    """Rank-normalise each element's draws (chain, draw, m) jointly over chains and draws:
    average ranks, Blom's offset 3/8, the normal quantile."""
    c, n, m = x.shape
    rank = stats.rankdata(x.reshape(c * n, m), axis=0, method="average")
    return special.ndtri((rank - 0.375) / (c * n + 0.25)).reshape(c, n, m)


def _rhat(x: np.ndarray) -> np.ndarray:
    """Gelman-Rubin R-hat of chains (chain, draw, m) -> (m,)."""
    n = x.shape[1]
    between = n * np.var(x.mean(axis=1), axis=0, ddof=1)
    within = np.var(x, axis=1, ddof=1).mean(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.sqrt((between / within + n - 1) / n)


def _ess(x: np.ndarray) -> np.ndarray:
    """Effective sample size of chains (chain, draw, m) -> (m,): ArviZ's ``_ess`` (Geyer's
    initial positive and monotone sequences of paired autocorrelations), for every element at
    once."""
    x = x.astype(float, copy=False)
    c, n, m = x.shape
    size = c * n
    constant = (x.max(axis=(0, 1)) - x.min(axis=(0, 1))) < np.finfo(float).resolution
    centred = x - x.mean(axis=1, keepdims=True)
    nfft = fft.next_fast_len(2 * n)
    spectrum = np.fft.rfft(centred, n=nfft, axis=1)
    spectrum *= np.conjugate(spectrum)
    acov = np.fft.irfft(spectrum, n=nfft, axis=1)[:, :n] / n  # (chain, lag, m)
    mean_acov = acov.mean(axis=0)  # (lag, m)
    mean_var = mean_acov[0] * n / (n - 1.0)
    var_plus = mean_var * (n - 1.0) / n
    if c > 1:
        var_plus = var_plus + np.var(x.mean(axis=1), axis=0, ddof=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        rho = 1.0 - (mean_var - mean_acov) / var_plus  # (lag, m); rho[0] is replaced by 1
    rho[0] = 1.0
    # pair k = (rho[2k], rho[2k + 1]), k = 0..k_max: the pairs ArviZ's loop may reach
    k_max = (n - 3) // 2
    pairs = rho[: 2 * k_max + 2].reshape(k_max + 1, 2, m)
    sums = pairs.sum(axis=1)  # (k_max + 1, m)
    # the loop stops after the first pair whose sum is not positive, or at k_max
    nonpositive = ~(sums > 0)
    last = np.where(nonpositive.any(axis=0), nonpositive.argmax(axis=0), k_max)
    last = np.minimum(last, k_max)
    # pairs before the last are positive; their monotone sequence is the running minimum
    running = np.minimum.accumulate(sums, axis=0)
    before = np.arange(k_max + 1)[:, None] < last[None, :]
    total = np.where(before, running, 0.0).sum(axis=0)
    cols = np.arange(m)
    even = pairs[last, 0, cols]
    kept = (sums[last, cols] >= 0) | (even > 0)
    tau = -1.0 + 2.0 * total + np.where(kept, even, 0.0)
    tau = np.maximum(tau, 1.0 / np.log10(size))
    with np.errstate(invalid="ignore", divide="ignore"):
        ess = size / tau
    # ArviZ: NaN when any autocorrelation it used is NaN (zero variance across chains)
    used = np.arange(rho.shape[0])[:, None] <= 2 * last[None, :] + 1
    ess = np.where(np.isnan(np.where(used, rho[: rho.shape[0]], 0.0)).any(axis=0), np.nan, ess)
    return np.where(constant, float(size), ess)


def _blocks(draws: np.ndarray):
    """(chain, draw, *shape) -> blocks (chain, draw, <= BLOCK) of the flattened elements."""
    c, n = draws.shape[:2]
    flat = draws.reshape(c, n, -1)
    for start in range(0, flat.shape[2], BLOCK):
        yield flat[:, :, start:start + BLOCK]


def _invalid(x: np.ndarray, min_chains: int) -> np.ndarray:
    """Elements ArviZ refuses (NaN): a NaN draw, too few draws or chains."""
    c, n = x.shape[:2]
    return np.isnan(x).any(axis=(0, 1)) | (n < 4) | (c < min_chains)


def element_diagnostics(draws: np.ndarray) -> dict[str, np.ndarray]:
    """R-hat, bulk and tail ESS and the MCSE of the mean of every element.

    Parameters
    ----------
    draws : numpy.ndarray
        Shape (chain, draw, *shape).

    Returns
    -------
    dict of str -> numpy.ndarray
        ``r_hat``, ``ess_bulk``, ``ess_tail``, ``mcse_mean``, each of shape ``shape``
        (draws' units for ``mcse_mean``; ESS in draws).
    """
    draws = np.asarray(draws, dtype=float)
    shape = draws.shape[2:]
    parts: dict[str, list[np.ndarray]] = {"r_hat": [], "ess_bulk": [], "ess_tail": [],
                                          "mcse_mean": []}
    for x in _blocks(draws):
        bad = _invalid(x, 1)
        x = np.where(bad[None, None, :], 0.0, x)  # refused below; keeps NaN out of the ranks
        split = _split(x)
        z = _z_scale(split)
        folded = _z_scale(np.abs(split - np.median(split.reshape(-1, split.shape[2]), axis=0)))
        rhat = np.maximum(_rhat(z), _rhat(folded))
        flat = x.reshape(-1, x.shape[2])
        low, high = np.quantile(flat, TAIL_PROB, axis=0)
        tail = np.minimum(_ess(_split((x <= low).astype(float))),
                          _ess(_split((x <= high).astype(float))))
        sd = np.std(flat, axis=0, ddof=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            mcse = sd / np.sqrt(_ess(split))
        parts["r_hat"].append(np.where(_invalid(x, 2) | bad, np.nan, rhat))
        for key, value in (("ess_bulk", _ess(z)), ("ess_tail", tail), ("mcse_mean", mcse)):
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
