r"""The two-level model with random slopes, collapsed: the school effects integrated out exactly.

For pupil :math:`i` in school :math:`j`, with the predictors :math:`x_{ij}` (all of ``X``'s
columns) and the random-effect design :math:`z_{ij} = (1, x_{ij,S})`, the intercept and the
``slopes`` columns :math:`S` (:math:`r = 1 + |S|`):

.. math::

    y_{ij} &= \alpha + x_{ij}^\top\beta + z_{ij}^\top b_j + e_{ij}, \quad
    e_{ij} \sim \mathrm{Normal}(0, \sigma^2), \quad
    b_j \sim \mathrm{MvNormal}(0, \Sigma), \\
    \Sigma &= \mathrm{diag}(s)\,\Omega\,\mathrm{diag}(s), \quad
    \Omega \sim \mathrm{LKJ}(\eta), \quad s_0 \sim \mathrm{HalfNormal}(s_\tau), \quad
    s_k \sim \mathrm{HalfNormal}(s_y / s_{x_k}),

lme4's and brms's ``(1 + ks2 | school)``. ``b_j`` holds the school's intercept deviation
(sd :math:`s_0` = ``sd_school``, the variance at :math:`x_S = 0`) and its slope deviations
(sds ``sd_slope``, dim ``slope``; outcome units per predictor unit), correlated by
:math:`\Omega` (``cor_school``, dims ``re_term`` and ``re_term_b``). The fixed part and its
priors are the random-intercept model's (:mod:`bayesfed.modelling.two_level`, sampled through
``level`` likewise).

Collapsed likelihood. With :math:`L` the lower Cholesky factor of :math:`\Sigma`, the school's
Gram matrix :math:`A_j = \sum_i z_{ij} z_{ij}^\top`, :math:`c_j = \sum_i z_{ij} e_{ij}(\beta)`
(the cross products of the random-effect design with the fixed-part residuals
:math:`e_{ij}(\beta) = y_{ij} - \alpha - x_{ij}^\top\beta`), Woodbury's identity and the
determinant lemma give for the school's :math:`n_j` pupils

.. math::

    -2\log p(y_j \mid \alpha, \beta, \Sigma, \sigma) = n_j \log 2\pi\sigma^2
    + \log\det B_j - r\log\sigma^2
    + \Big(\sum_i e_{ij}^2 - \lVert R_j^{-1} L^\top c_j \rVert^2\Big)/\sigma^2,
    \qquad B_j = \sigma^2 I_r + L^\top A_j L = R_j R_j^\top,

finite and exact even where :math:`\Sigma` is singular. Everything is a quadratic form in
:math:`g = (-(\alpha - \bar y), -\beta, 1)` of each school's cross products of :math:`w =
(1, x - \bar x, y - \bar y)` (bars: the pupils' grand means, so that no large sum cancels),
which :class:`~bayesfed.design.suffstats.SchoolSummary` already holds: :math:`\sum_i e_{ij}^2 =
g^\top W_j g`, :math:`c_j = T W_j g`, :math:`A_j = T W_j T^\top` with :math:`T` the map from
:math:`w` to :math:`z`. A gradient costs :math:`O(J r^2 (p + r))`, whatever the number of
pupils: :math:`R_j` and the solve are written out element by element for the small :math:`r`
(``tests/modelling/test_random_slopes.py`` checks the density against the pupils' dense
multivariate normal to 1e-8).
"""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np
import pymc as pm
import pytensor.tensor as pt
import xarray as xr

from bayesfed.design.suffstats import SchoolSummary, quadratic_forms
from bayesfed.modelling.priors import LKJ_ETA, PriorSet, default_slope_sd
from bayesfed.modelling.two_level import centred_fixed_part


@dataclass(frozen=True)
class SlopeData:
    """The statistics the collapsed random-slope likelihood needs.

    Attributes
    ----------
    gram : ndarray, shape (n_schools, r, r)
        :math:`A_j`, each school's cross products of :math:`z = (1, x_S)`.
    cross : ndarray, shape (n_schools, r, 2 + n_coef)
        :math:`T W_j`: the cross products of :math:`z` with :math:`w = (1, x - \\bar x, y -
        \\bar y)`.
    school_total : ndarray, shape (n_schools, 2 + n_coef, 2 + n_coef)
        :math:`W_j`, each school's cross products of :math:`w`.
    school_n : ndarray, shape (n_schools,)
        Pupils a school.
    y_centre : float
        :math:`\\bar y` (outcome units).
    x_centre : ndarray, shape (n_coef,)
        :math:`\\bar x`.
    """

    gram: np.ndarray
    cross: np.ndarray
    school_total: np.ndarray
    school_n: np.ndarray
    y_centre: float
    x_centre: np.ndarray

    @property
    def total(self) -> np.ndarray:
        """:math:`\\sum_j W_j`, shape (2 + n_coef, 2 + n_coef)."""
        return self.school_total.sum(axis=0)

    @property
    def pupil_count(self) -> int:
        """Pupils in all."""
        return int(self.school_n.sum())


def slope_columns(summary: SchoolSummary, slopes: tuple[str, ...]) -> np.ndarray:
    """The indices of ``slopes`` in ``summary.coef_names``.

    Raises
    ------
    ValueError
        A slope is not a coefficient, or is school-level (constant within a school: its
        slope cannot vary by school).
    """
    out = []
    for name in slopes:
        if name not in summary.coef_names:
            raise ValueError(f"random slope {name!r} is not a coefficient of the model "
                             f"({', '.join(summary.coef_names)})")
        k = summary.coef_names.index(name)
        if summary.school_level[k]:
            raise ValueError(f"random slope {name!r} is school-level: it is constant within "
                             "a school, so it has no slope by school")
        out.append(k)
    return np.array(out, dtype=np.int64)


def slope_data(summary: SchoolSummary, slopes: tuple[str, ...]) -> SlopeData:
    """The :class:`SlopeData` of a summary's pupils (module docstring's :math:`W_j`, :math:`T`).

    Parameters
    ----------
    summary : SchoolSummary
    slopes : tuple of str
        Coefficient names with a random slope (at least one).
    """
    cols = slope_columns(summary, slopes)
    n = summary.n.astype(float)
    y_centre = float(n @ summary.y_mean / n.sum())
    x_centre = n @ summary.X_mean / n.sum()
    p = len(summary.coef_names)
    # each school's means of w = (1, x - xbar, y - ybar) and its centred cross products
    mean = np.column_stack([np.ones_like(n), summary.X_mean - x_centre,
                            summary.y_mean - y_centre])
    within = np.zeros((len(n), 2 + p, 2 + p))
    within[:, 1:1 + p, 1:1 + p] = summary.within[:, 1:, 1:]
    within[:, 1:1 + p, 1 + p] = summary.within[:, 1:, 0]
    within[:, 1 + p, 1:1 + p] = summary.within[:, 0, 1:]
    within[:, 1 + p, 1 + p] = summary.within[:, 0, 0]
    W = within + n[:, None, None] * mean[:, :, None] * mean[:, None, :]
    r = 1 + len(cols)
    T = np.zeros((r, 2 + p))  # z = T w: z_0 = 1, z_s = (x_s - xbar_s) + xbar_s
    T[0, 0] = 1.0
    for i, k in enumerate(cols):
        T[1 + i, 1 + k] = 1.0
        T[1 + i, 0] = x_centre[k]
    cross = np.einsum("ra,jab->jrb", T, W)
    gram = np.einsum("jrb,sb->jrs", cross, T)
    return SlopeData(gram=gram, cross=cross, school_total=W, school_n=n, y_centre=y_centre,
                     x_centre=x_centre)


def _cholesky(B: list[list]) -> list[list]:
    """Lower Cholesky factors of a batch of small SPD matrices given element by element
    (``B[a][b]`` a tensor over the batch); returns ``R[a][b]`` for ``b <= a``."""
    r = len(B)
    R = [[None] * r for _ in range(r)]
    for a in range(r):
        for b in range(a + 1):
            v = B[a][b]
            for k in range(b):
                v = v - R[a][k] * R[b][k]
            R[a][b] = pt.sqrt(v) if a == b else v / R[b][b]
    return R


def marginal_loglik(gram, cross, total, n_pupils, g, sigma, chol, r: int):
    """The module docstring's log-likelihood (nats).

    Parameters
    ----------
    gram : tensor, shape (n_schools, r, r)
    cross : tensor, shape (n_schools, r, 2 + p)
    total : tensor, shape (2 + p, 2 + p)
    n_pupils : int or tensor scalar
    g : tensor, shape (2 + p,)
        :math:`(-(\\alpha + \\bar x^\\top\\beta - \\bar y), -\\beta, 1)`.
    sigma : tensor scalar
        Pupil sd (outcome units).
    chol : tensor, shape (r, r)
        Lower Cholesky factor of the school effects' covariance :math:`\\Sigma`.
    r : int
        Random effects a school (1 + the slopes).
    """
    s2 = sigma**2
    c = pt.dot(cross, g)  # (J, r)
    Lc = pt.dot(c, chol)  # (J, r): L' c_j
    LAL = pt.dot(pt.dot(chol.T, gram).dimshuffle(1, 0, 2), chol)  # (J, r, r): L' A_j L
    B = [[LAL[:, a, b] + (s2 if a == b else 0.0) for b in range(r)] for a in range(r)]
    R = _cholesky(B)
    log_det = 0.0
    quad = 0.0
    v = []
    for a in range(r):  # forward solve R v = L' c, and log det B = 2 sum log R_aa
        t = Lc[:, a]
        for k in range(a):
            t = t - R[a][k] * v[k]
        v.append(t / R[a][a])
        log_det = log_det + 2.0 * pt.log(R[a][a])
        quad = quad + v[a] ** 2
    rss = pt.dot(g, pt.dot(total, g))
    n_schools = gram.shape[0]
    return -0.5 * (n_pupils * np.log(2 * np.pi) + n_pupils * pt.log(s2)
                   + pt.sum(log_det) - r * n_schools * pt.log(s2)
                   + (rss - pt.sum(quad)) / s2)


def build_random_slopes(summary: SchoolSummary, priors: PriorSet, slopes: tuple[str, ...],
                        slope_sd: np.ndarray | None = None, eta: float = LKJ_ETA) -> pm.Model:
    """Build the collapsed random-slope model (module docstring).

    Parameters
    ----------
    summary : SchoolSummary
    priors : PriorSet
        The fixed part's and ``sd_school``'s and ``sigma``'s priors (as for the random-intercept
        model).
    slopes : tuple of str
        Coefficients with a random slope.
    slope_sd : ndarray, shape (n_slopes,), optional
        Scales of the slope sds' HalfNormal priors (outcome units per predictor unit); by
        default :func:`bayesfed.modelling.priors.default_slope_sd`.
    eta : float
        The LKJ prior's shape.

    Returns
    -------
    pm.Model
        Coords ``predictor``, ``slope`` (``slopes``), ``re_term`` and ``re_term_b``
        (``intercept`` then the slopes). Free variables ``beta``, ``level``, ``school_cov``
        (LKJ Cholesky, packed) and ``sigma``; deterministics ``intercept``, ``sd_school``,
        ``sd_slope``, ``cor_school``; the likelihood is the potential ``marginal_loglik``.
    """
    data = slope_data(summary, tuple(slopes))
    if slope_sd is None:
        slope_sd = default_slope_sd(summary, tuple(slopes))
    terms = ["intercept", *slopes]
    coords = {"predictor": list(summary.coef_names), "slope": list(slopes), "re_term": terms,
              "re_term_b": terms}
    r = len(terms)
    with pm.Model(coords=coords) as model:
        gram = pm.Data("slope_gram", data.gram)
        cross = pm.Data("slope_cross", data.cross)
        total = pm.Data("slope_total", data.total)
        beta, level = centred_fixed_part(data.x_centre, priors.slope_mu, priors.slope_sigma,
                                         np.float64(priors.intercept.mu),
                                         np.float64(priors.intercept.sigma),
                                         len(summary.coef_names))
        scales = np.concatenate([[priors.sd_school], np.asarray(slope_sd, dtype=float)])
        chol, corr, sds = pm.LKJCholeskyCov(
            "school_cov", n=r, eta=np.float64(eta),
            sd_dist=pm.HalfNormal.dist(sigma=scales, shape=r), compute_corr=True)
        pm.Deterministic("sd_school", sds[0])
        pm.Deterministic("sd_slope", sds[1:], dims="slope")
        pm.Deterministic("cor_school", corr, dims=("re_term", "re_term_b"))
        sigma = pm.HalfNormal("sigma", sigma=np.float64(priors.sigma))
        g = pt.concatenate([pt.stack([data.y_centre - level]), -beta, pt.ones(1)])
        pm.Potential("marginal_loglik", marginal_loglik(gram, cross, total, data.pupil_count, g,
                                                        sigma, chol, r))
    return model


def _woodbury(data: SlopeData, g: np.ndarray, sigma: np.ndarray, chol: np.ndarray
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    r"""Per draw and school (module docstring): :math:`L^\top c_j` (draws, n_schools, r),
    :math:`B_j = \sigma^2 I + L^\top A_j L` and its lower Cholesky factor :math:`R_j`
    (draws, n_schools, r, r)."""
    c = np.einsum("jrq,sq->sjr", data.cross, g)
    lc = np.einsum("sab,sja->sjb", chol, c)
    B = (np.einsum("sab,jac,scd->sjbd", chol, data.gram, chol)
         + (sigma**2)[:, None, None, None] * np.eye(chol.shape[-1]))
    return lc, B, np.linalg.cholesky(B)


def effect_conditional(data: SlopeData, g: np.ndarray, sigma: np.ndarray, chol: np.ndarray
                       ) -> tuple[np.ndarray, np.ndarray]:
    r"""Each school's effects :math:`b_j` given the other parameters, per draw: their Gaussian
    conditional's mean and a square root of its covariance, exact also where :math:`\Sigma`
    is singular.

    With :math:`b_j = L a_j`, :math:`a_j \sim N(0, I)` a priori, the school's pupils give
    :math:`a_j \mid \cdot \sim N(B_j^{-1} L^\top c_j,\ \sigma^2 B_j^{-1})`, :math:`B_j =
    \sigma^2 I + L^\top A_j L = R_j R_j^\top` (module docstring), so :math:`b_j` has mean
    :math:`L B_j^{-1} L^\top c_j` and covariance :math:`S S^\top`, :math:`S = \sigma L
    R_j^{-\top}`. The reference for :func:`effect_draws`' kernel (tests).

    Parameters
    ----------
    data : SlopeData
    g : ndarray, shape (draws, 2 + n_coef)
        :math:`(\bar y - \mathrm{level}, -\beta, 1)` of each draw.
    sigma : ndarray, shape (draws,)
        Pupil sd (outcome units).
    chol : ndarray, shape (draws, r, r)
        Lower Cholesky factor of :math:`\Sigma`.

    Returns
    -------
    mean : ndarray, shape (draws, n_schools, r)
        Outcome units (per predictor unit for a slope).
    root : ndarray, shape (draws, n_schools, r, r)
        :math:`S`, with :math:`S S^\top` the conditional covariance.
    """
    r = chol.shape[-1]
    lc, B, R = _woodbury(data, g, sigma, chol)
    mean = np.einsum("sab,sjb->sja", chol, np.linalg.solve(B, lc[..., None])[..., 0])
    # S = sigma L R^-T: solve R^T X = I
    inv_rt = np.linalg.solve(np.swapaxes(R, -1, -2), np.broadcast_to(np.eye(r), R.shape))
    root = sigma[:, None, None, None] * np.einsum("sab,sjbc->sjac", chol, inv_rt)
    return mean, root


@numba.njit(cache=True, nogil=True, inline="always")
def _factor(L, gram, c, s2, lc, B, v):  # pragma: no cover - compiled
    r"""One school and draw (:func:`effect_conditional`'s notation): :math:`R_j` into the lower
    triangle of ``B`` (r, r), :math:`v = R_j^{-1} L^\top c_j` into ``v`` (r,), using ``lc``
    (r,) as scratch; returns :math:`\log\det B_j` and :math:`\lVert v \rVert^2`. ``L`` (r, r)
    lower triangular, ``gram`` :math:`A_j` (r, r), ``c`` :math:`c_j` (r,), ``s2``
    :math:`\sigma^2`."""
    r = len(c)
    for b in range(r):  # L^T c_j
        acc = 0.0
        for a in range(b, r):
            acc += L[a, b] * c[a]
        lc[b] = acc
    for b in range(r):  # B = L^T A_j L + sigma^2 I
        for d in range(b + 1):
            acc = 0.0
            for a in range(b, r):
                for e in range(d, r):
                    acc += L[a, b] * gram[a, e] * L[e, d]
            B[b, d] = acc + (s2 if b == d else 0.0)
    for b in range(r):  # Cholesky in place, lower triangle
        for d in range(b + 1):
            acc = B[b, d]
            for k in range(d):
                acc -= B[b, k] * B[d, k]
            B[b, d] = np.sqrt(acc) if b == d else acc / B[d, d]
    log_det = 0.0
    norm = 0.0
    for b in range(r):  # v = R^-1 L^T c_j
        acc = lc[b]
        for k in range(b):
            acc -= B[b, k] * v[k]
        v[b] = acc / B[b, b]
        log_det += 2.0 * np.log(B[b, b])
        norm += v[b] * v[b]
    return log_det, norm


@numba.njit(cache=True, nogil=True)
def _school_terms(c, gram, sigma, chol):  # pragma: no cover - compiled
    r""":func:`school_loglik`'s per-school part, :math:`\log\det B_j - \lVert R_j^{-1} L^\top
    c_j \rVert^2/\sigma^2`, shape (draws, S), one school and draw at a time in registers
    (NumPy's batched ``einsum`` and ``solve`` over draws x schools x r x r arrays took 7 s for
    4,000 draws of 3,002 schools). ``c`` (draws, S, r): :math:`c_j`; ``gram`` (S, r, r);
    ``sigma`` (draws,); ``chol`` (draws, r, r)."""
    D, S, r = c.shape
    out = np.empty((D, S))
    lc, B, v = np.empty(r), np.empty((r, r)), np.empty(r)
    for s in range(D):
        s2 = sigma[s] * sigma[s]
        for j in range(S):
            log_det, norm = _factor(chol[s], gram[j], c[s, j], s2, lc, B, v)
            out[s, j] = log_det - norm / s2
    return out


@numba.njit(cache=True, nogil=True)
def _school_draws(c, gram, sigma, chol, xi):  # pragma: no cover - compiled
    r""":func:`effect_draws`' draws, shape (draws, S, r): :math:`b_j = L R_j^{-\top}(R_j^{-1}
    L^\top c_j + \sigma\xi_j)`, :func:`effect_conditional`'s mean plus :math:`S\xi_j`
    (NumPy's batched version took 11 s for 4,000 draws of 3,002 schools). Arguments as
    :func:`_school_terms`'s, and ``xi`` (draws, S, r) standard normals."""
    D, S, r = c.shape
    out = np.empty((D, S, r))
    lc, B, v = np.empty(r), np.empty((r, r)), np.empty(r)
    for s in range(D):
        L = chol[s]
        for j in range(S):
            _factor(L, gram[j], c[s, j], sigma[s] * sigma[s], lc, B, v)
            for b in range(r):
                v[b] += sigma[s] * xi[s, j, b]
            for b in range(r - 1, -1, -1):  # a = R^-T v, in v
                acc = v[b]
                for k in range(b + 1, r):
                    acc -= B[k, b] * v[k]
                v[b] = acc / B[b, b]
            for a in range(r):  # b_j = L a
                acc = 0.0
                for b in range(a + 1):
                    acc += L[a, b] * v[b]
                out[s, j, a] = acc
    return out


def _cross_products(data: SlopeData, g: np.ndarray) -> np.ndarray:
    """:math:`c_j = T W_j g` for every draw and school, shape (draws, n_schools, r), as one
    matrix product."""
    S, r, q = data.cross.shape
    return (g @ data.cross.reshape(S * r, q).T).reshape(len(g), S, r)


def effect_draws(data: SlopeData, g: np.ndarray, sigma: np.ndarray, chol: np.ndarray,
                 rng: np.random.Generator, block: int = 256) -> np.ndarray:
    """One exact draw of every school's effects per posterior draw
    (:func:`effect_conditional`), shape (draws, n_schools, r), computed ``block`` draws at a
    time."""
    out = np.empty((g.shape[0], data.gram.shape[0], chol.shape[-1]))
    for start in range(0, g.shape[0], block):
        part = slice(start, start + block)
        xi = rng.standard_normal(out[part].shape)
        out[part] = _school_draws(_cross_products(data, g[part]), data.gram, sigma[part],
                                  chol[part], xi)
    return out


def school_loglik(data: SlopeData, g: np.ndarray, sigma: np.ndarray, chol: np.ndarray,
                  block: int = 256) -> np.ndarray:
    """Each school's log-likelihood per draw, its effects integrated out (nats), shape (draws,
    n_schools): the terms of :func:`marginal_loglik`, school by school (for leave-one-school-out),
    ``block`` draws at a time.

    Parameters
    ----------
    data : SlopeData
    g, sigma, chol
        As :func:`effect_conditional`.
    """
    r = chol.shape[-1]
    out = np.empty((g.shape[0], data.gram.shape[0]))
    n = data.school_n[None, :]
    for start in range(0, g.shape[0], block):
        part = slice(start, start + block)
        s2 = sigma[part, None] ** 2
        terms = _school_terms(_cross_products(data, g[part]), data.gram, sigma[part],
                              chol[part])
        rss = quadratic_forms(g[part], data.school_total)
        out[part] = -0.5 * (n * np.log(2 * np.pi * s2) - r * np.log(s2) + terms + rss / s2)
    return out


def packed_cholesky(packed: np.ndarray, r: int) -> np.ndarray:
    """Lower Cholesky factors (..., r, r) from ``school_cov``'s packed draws (..., r(r+1)/2),
    lower triangle in row order (PyMC's ``expand_packed_triangular``)."""
    out = np.zeros((*packed.shape[:-1], r, r))
    rows, cols = np.tril_indices(r)
    out[..., rows, cols] = packed
    return out


def draw_parameters(posterior: xr.Dataset, data: SlopeData
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A fit's draws, chains one after the other, as :func:`effect_conditional` and
    :func:`school_loglik` take them: ``g`` (draws, 2 + n_coef), ``sigma`` (draws,) and the
    Cholesky factor of the school effects' covariance (draws, r, r), from ``level``, ``beta``,
    ``sigma`` and ``school_cov``."""
    def flat(name: str) -> np.ndarray:
        da = posterior[name].transpose("chain", "draw", ...).to_numpy()
        return da.reshape(-1, *da.shape[2:])

    beta, level = flat("beta"), flat("level")
    g = np.column_stack([data.y_centre - level, -beta, np.ones(len(level))])
    return g, flat("sigma"), packed_cholesky(flat("school_cov"), data.gram.shape[-1])


def add_slope_draws(tree: xr.DataTree, summary: SchoolSummary, data: SlopeData,
                    slopes: tuple[str, ...], seed: int) -> xr.DataTree:
    """Add exact posterior draws of every school's effects to a fit of
    :func:`build_random_slopes` (:func:`effect_draws`, one per posterior draw); ``data`` is
    the summary's :func:`slope_data` for ``slopes``.

    Returns
    -------
    xarray.DataTree
        A copy whose ``posterior`` also holds ``u`` (chain, draw, school): each school's
        intercept at zero of the slope predictors (``intercept``, the school-level predictors'
        part and the school's intercept effect, as the random-intercept model's ``u``), and
        ``school_slope`` (chain, draw, school, slope): each school's slopes (the coefficient
        plus the school's slope effect); outcome units (per predictor unit for a slope).
    """
    post = tree["posterior"].to_dataset()
    chains, draws = post.sizes["chain"], post.sizes["draw"]
    g, sigma, chol = draw_parameters(post, data)
    b = effect_draws(data, g, sigma, chol, np.random.default_rng(seed))
    beta = -g[:, 1:-1]
    intercept = post["intercept"].transpose("chain", "draw").to_numpy().ravel()
    school = np.array(summary.school_level, dtype=bool)
    u = intercept[:, None] + beta[:, school] @ summary.X_mean[:, school].T + b[..., 0]
    cols = slope_columns(summary, slopes)
    school_slope = beta[:, None, cols] + b[..., 1:]
    out = tree.copy()
    out["posterior"] = post.assign(
        u=(("chain", "draw", "school"), u.reshape(chains, draws, -1)),
        school_slope=(("chain", "draw", "school", "slope"),
                      school_slope.reshape(chains, draws, -1, len(slopes))),
    ).assign_coords(school=list(summary.schools))
    return out


def slope_dataset(data: SlopeData, schools: tuple[str, ...], slopes: tuple[str, ...]
                  ) -> xr.Dataset:
    """A :class:`SlopeData` as a fit's ``constant_data`` variables (``slope_*``), with the
    pupils' mean of :math:`z z^\\top` (``slope_moment``, for the variance decomposition)."""
    terms = ["intercept", *slopes]
    w = ["one", *[f"x{k}" for k in range(data.cross.shape[-1] - 2)], "y"]
    return xr.Dataset(
        {"slope_gram": (("school", "re_term", "re_term_b"), data.gram),
         "slope_cross": (("school", "re_term", "w_term"), data.cross),
         "slope_school_total": (("school", "w_term", "w_term_b"), data.school_total),
         "slope_school_n": ("school", data.school_n),
         "slope_y_centre": data.y_centre,
         "slope_x_centre": ("x_term", data.x_centre),
         "slope_moment": (("re_term", "re_term_b"), data.gram.sum(axis=0) / data.pupil_count)},
        coords={"school": list(schools), "re_term": terms, "re_term_b": terms,
                "w_term": w, "w_term_b": w})


def slope_data_of(constant: xr.Dataset) -> SlopeData:
    """The :class:`SlopeData` a fit stored (:func:`slope_dataset`)."""
    return SlopeData(gram=constant["slope_gram"].to_numpy(),
                     cross=constant["slope_cross"].to_numpy(),
                     school_total=constant["slope_school_total"].to_numpy(),
                     school_n=constant["slope_school_n"].to_numpy(),
                     y_centre=float(constant["slope_y_centre"]),
                     x_centre=constant["slope_x_centre"].to_numpy())
