"""REML cross-check: the paper's two-level random-intercept models, fitted with statsmodels
or, from school statistics alone, by maximising an exact closed form.

:func:`fit_reml` fits ``y = X beta + u_school + e`` by restricted maximum likelihood with
``statsmodels.MixedLM``, trying several optimisers and keeping the highest REML
log-likelihood, then checks that log-likelihood against :func:`reml_loglik`, an exact,
independent closed form, and that no higher value of the exact log-likelihood lies nearby
(:func:`exact_maximum`). A disagreement beyond ``LOGLIK_RTOL`` raises
:class:`~bayesfed.errors.BayesfedError`. The default ``lbfgs`` optimiser alone has been seen
to stop at wrong variance components while reporting convergence, hence the cross-check.

The closed form uses the block structure of a random-intercept model: for school ``j`` with
``n_j`` pupils, ``V_j = s2 I + t2 11'``, so ``V_j^{-1} = (I - g_j 11') / s2`` with
``g_j = t2 / (s2 + n_j t2)`` and ``log|V_j| = n_j log s2 + log(1 + n_j t2 / s2)``. With
``beta`` profiled out by GLS, the REML log-likelihood is

    -1/2 [ (n - p) log(2 pi) + log|V| + log|X' V^{-1} X| + r' V^{-1} r ],

``r = y - X beta_GLS``, ``p`` the number of fixed effects (intercept included); this is the
convention of statsmodels (and of lme4: no ``log|X'X|`` term).

The closed form needs the pupils only through :class:`RemlStats` (per-school sums and pooled
cross products), which :func:`remlstats_of` computes exactly from the school statistics
:class:`~bayesfed.design.suffstats.SchoolStats` that a batched reduction produces. Where no pupil
rows are at hand, :func:`fit_reml_stats` fits the model from those statistics alone, without
statsmodels: for a fixed ratio ``lam = t2 / s2`` the pupil variance has the closed-form
maximiser ``s2 = r' W^{-1} r / (n - p)`` (``W = V / s2``), so the profiled log-likelihood is
searched over ``log lam`` (a grid, then a bounded Brent search around its best point) and
compared with the boundary ``lam = 0``; the answer is checked: the profile is no higher a step
either side. Since ``s2`` is exact given ``lam``, the profile's maximum is the maximum over both
variances; about a hundred evaluations, each ``O(J p^2)`` for ``J`` schools (milliseconds at
national size; a two-variance Nelder-Mead polish took 1.5 s there and could not meet its
tolerance).
The fixed effects are the GLS estimates at the maximum. Their standard errors are
statsmodels' ``bse_fe``, computed in closed form (:func:`coef_se`): the fixed-effect block of
the inverse observed information of the pupil-variance-profiled REML function in
``(beta, lam)``. Its ``beta``-``lam`` cross term, zero in expectation but not in a sample,
makes them slightly larger than ``sqrt(diag((X' V^{-1} X)^{-1}))`` (by 0.02-0.2 % on the
Exam data).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from scipy import optimize

from bayesfed.design.columns import Design
from bayesfed.design.suffstats import SchoolStats
from bayesfed.errors import BayesfedError
from bayesfed.inputs.moments import group_sums

if TYPE_CHECKING:
    from statsmodels.regression.mixed_linear_model import MixedLMResults

#: Optimisers tried, in order; the fit with the highest REML log-likelihood is kept.
OPTIMISERS = ("powell", "lbfgs")

#: Largest relative difference allowed between statsmodels' and the exact log-likelihood.
LOGLIK_RTOL = 1e-6

#: Range of the variance ratio ``lam = var_school / var_pupil`` searched by
#: :func:`fit_reml_stats` (besides the boundary ``lam = 0``), and the number of grid points
#: (equally spaced in ``log lam``) that locate the interval of its Brent search.
LAMBDA_RANGE = (1e-10, 1e6)
LAMBDA_GRID = 75

#: Step in ``log lam`` either side of :func:`fit_reml_stats`' maximum at which the profiled
#: log-likelihood must not be higher.
CHECK_STEP = 1e-4


@dataclass(frozen=True)
class RemlFit:
    """A REML fit of a two-level random-intercept model.

    Attributes
    ----------
    coef : dict of str -> (float, float)
        ``name -> (estimate, standard error)`` in outcome units per predictor unit;
        ``"intercept"`` first, then the Design's coefficient names.
    var_school : float
        School-level (random intercept) variance, outcome units squared.
    var_pupil : float
        Pupil-level (residual) variance, outcome units squared.
    se_var_school, se_var_pupil : float or None
        Standard errors of the variances from the observed information of the exact REML
        log-likelihood (numerical Hessian); None where it is not negative definite (for
        example a school variance on the boundary).
    loglik : float
        Maximised REML log-likelihood (statsmodels' value, checked against the exact one; the
        exact value for :func:`fit_reml_stats`).
    converged : bool
        Whether the kept optimiser reported convergence.
    method : str
        The kept optimiser; ``"exact"`` for :func:`fit_reml_stats`.
    n_pupils, n_schools : int
        Size of the data.
    warnings : tuple of str
        Warnings statsmodels raised during the kept fit, and the errors of optimisers that
        failed outright (empty for :func:`fit_reml_stats`).
    """

    coef: dict[str, tuple[float, float]]
    var_school: float
    var_pupil: float
    se_var_school: float | None
    se_var_pupil: float | None
    loglik: float
    converged: bool
    method: str
    n_pupils: int
    n_schools: int
    warnings: tuple[str, ...]

    @property
    def vpc_school(self) -> float:
        """Share of the total variance at the school level (0-1)."""
        return self.var_school / (self.var_school + self.var_pupil)


def fixed_effects_matrix(design: Design) -> np.ndarray:
    """The design's predictors with a leading intercept column.

    Parameters
    ----------
    design : Design

    Returns
    -------
    ndarray, shape (n_pupils, n_coef + 1)
    """
    return np.column_stack([np.ones(design.n_pupils), design.X])


def school_sums(design: Design, values: np.ndarray) -> np.ndarray:
    """Sum rows of ``values`` within each school.

    Parameters
    ----------
    design : Design
    values : ndarray, shape (n_pupils,) or (n_pupils, k)

    Returns
    -------
    ndarray, shape (n_schools,) or (n_schools, k)
    """
    return group_sums(design.school_idx, design.n_schools, values)


def reml_loglik(design: Design, var_school: float, var_pupil: float) -> float:
    """Exact REML log-likelihood of a random-intercept model at given variances.

    Parameters
    ----------
    design : Design
    var_school : float
        School intercept variance ``t2`` (outcome units squared, >= 0).
    var_pupil : float
        Pupil residual variance ``s2`` (outcome units squared, > 0).

    Returns
    -------
    float
        The REML log-likelihood with the fixed effects profiled out by GLS (see the module
        docstring for the formula and constant).
    """
    return _loglik(reml_stats(design), var_school, var_pupil)


@dataclass(frozen=True)
class RemlStats:
    """What the REML log-likelihood needs of the data, computed once per design.

    :func:`reml_stats` computes them from the pupil rows, :func:`remlstats_of` from school
    statistics. Every evaluation of the log-likelihood then costs O(n_schools p^2), whatever
    the pupil count; ``p`` counts the fixed effects, intercept included.

    Attributes
    ----------
    n_j : ndarray of int, shape (n_schools,)
        Pupils per school.
    sx : ndarray, shape (n_schools, p)
        Per-school sums of the rows of ``[1, X]``.
    sy : ndarray, shape (n_schools,)
        Per-school sums of ``y`` (outcome units).
    xtx : ndarray, shape (p, p)
        ``[1, X]' [1, X]`` over all pupils (uncentred).
    xty : ndarray, shape (p,)
        ``[1, X]' y`` over all pupils (uncentred).
    yty : float
        ``y' y`` over all pupils (outcome units squared, uncentred).
    """

    n_j: np.ndarray
    sx: np.ndarray
    sy: np.ndarray
    xtx: np.ndarray
    xty: np.ndarray
    yty: float


def reml_stats(design: Design) -> RemlStats:
    """The sufficient statistics of :class:`RemlStats` for a design, from its pupil rows."""
    X, y = fixed_effects_matrix(design), design.y
    return RemlStats(n_j=np.bincount(design.school_idx, minlength=design.n_schools),
                     sx=school_sums(design, X), sy=school_sums(design, y),
                     xtx=X.T @ X, xty=X.T @ y, yty=float(y @ y))


def remlstats_of(stats: SchoolStats) -> RemlStats:
    """The statistics of :class:`RemlStats`, computed exactly from school statistics alone.

    With ``c_j = [1, xbar_j]`` (shape (p,), ``p = n_coef + 1``) the school's mean row of
    ``[1, X]``, the per-school sums are ``sx_j = n_j c_j`` and ``sy_j = n_j ybar_j``, and the
    uncentred cross products add the between-school part to the pooled within-school one:
    ``xtx = pad(XX) + sum_j n_j c_j c_j'``, ``xty = pad(Xy) + sum_j n_j c_j ybar_j``,
    ``yty = yy + sum_j n_j ybar_j^2``, where ``pad`` adds a zero first row and column (the
    intercept is constant within a school).

    Parameters
    ----------
    stats : SchoolStats
        Counts ``n`` (n_schools,), means ``y_mean`` (n_schools,) and ``X_mean``
        (n_schools, n_coef), within-school cross products ``XX`` (n_coef, n_coef), ``Xy``
        (n_coef,) and ``yy``.

    Returns
    -------
    RemlStats
        Equal, up to rounding, to :func:`reml_stats` of the design the statistics came from:
        ``sx`` (n_schools, p), ``sy`` (n_schools,), ``xtx`` (p, p), ``xty`` (p,), ``yty``.
    """
    n = np.asarray(stats.n)
    weight = n.astype(float)
    c = np.column_stack([np.ones(stats.n_schools), stats.X_mean])  # school mean rows of [1, X]
    ybar = np.asarray(stats.y_mean, dtype=float)
    p = c.shape[1]
    within_xx, within_xy = np.zeros((p, p)), np.zeros(p)
    within_xx[1:, 1:], within_xy[1:] = stats.XX, stats.Xy
    return RemlStats(n_j=n, sx=weight[:, None] * c, sy=weight * ybar,
                     xtx=within_xx + (c.T * weight) @ c,
                     xty=within_xy + c.T @ (weight * ybar),
                     yty=float(stats.yy + weight @ ybar**2))


def _gls(st: RemlStats, var_school: float, var_pupil: float
         ) -> tuple[np.ndarray, np.ndarray, float]:
    """GLS fixed effects at given variances.

    Returns
    -------
    beta : ndarray, shape (p,)
        GLS estimates (outcome units per predictor unit).
    xvx : ndarray, shape (p, p)
        ``X' V^{-1} X``, whose inverse is their covariance.
    quad : float
        ``r' V^{-1} r`` for the GLS residuals ``r`` (dimensionless).
    """
    t2, s2 = float(var_school), float(var_pupil)
    g = t2 / (s2 + st.n_j * t2)
    xvx = (st.xtx - (st.sx.T * g) @ st.sx) / s2
    xvy = (st.xty - (st.sx.T * g) @ st.sy) / s2
    beta = np.linalg.solve(xvx, xvy)
    rtr = st.yty - 2 * beta @ st.xty + beta @ st.xtx @ beta
    school_r = st.sy - st.sx @ beta  # per-school sums of the GLS residuals
    return beta, xvx, float((rtr - g @ school_r**2) / s2)


def _loglik(st: RemlStats, var_school: float, var_pupil: float) -> float:
    """:func:`reml_loglik` from precomputed statistics."""
    n, p = int(st.n_j.sum()), st.xtx.shape[0]
    t2, s2 = float(var_school), float(var_pupil)
    _, xvx, quad = _gls(st, t2, s2)
    logdet_v = n * np.log(s2) + np.sum(np.log1p(st.n_j * t2 / s2))
    logdet_xvx = np.linalg.slogdet(xvx)[1]
    return float(-0.5 * ((n - p) * np.log(2 * np.pi) + logdet_v + logdet_xvx + quad))


def _profile(st: RemlStats, ratio: float) -> tuple[float, float]:
    """The pupil variance maximising the REML log-likelihood at a fixed variance ratio.

    Parameters
    ----------
    st : RemlStats
    ratio : float
        ``lam = var_school / var_pupil`` (>= 0, dimensionless).

    Returns
    -------
    (float, float)
        ``s2 = r' W^{-1} r / (n - p)`` (outcome units squared), ``W = V / s2`` depending on
        ``lam`` only, and the REML log-likelihood at ``(lam s2, s2)``.
    """
    n, p = int(st.n_j.sum()), st.xtx.shape[0]
    s2 = _gls(st, ratio, 1.0)[2] / (n - p)
    return s2, _loglik(st, ratio * s2, s2)


def coef_se(st: RemlStats, var_school: float, var_pupil: float) -> np.ndarray:
    """Standard errors of the GLS fixed effects, as statsmodels' ``bse_fe`` defines them.

    With ``lam = t2 / s2``, ``W = V / s2`` and the pupil variance profiled out, statsmodels
    differentiates ``l(beta, lam) = -(f/2) log q - 1/2 log|W| - 1/2 log|X' W^{-1} X|``,
    ``q = r' W^{-1} r``, ``r = y - X beta``, ``f = n - p``, twice at the GLS ``beta`` and
    reports ``sqrt(diag(-H^{-1}))`` for the fixed effects. For a random intercept, with
    ``a_j = 1 / (1 + n_j lam)``, ``R_j`` school ``j``'s residual sum and ``sx_j`` its sum of
    ``[1, X]``: ``H_bb = -X' V^{-1} X``, ``H_bl = -(f / q) sum_j a_j^2 R_j sx_j`` and ``H_ll``
    from ``q' = -sum a_j^2 R_j^2``, ``q'' = 2 sum n_j a_j^3 R_j^2``,
    ``d2 log|W| = -sum n_j^2 a_j^2`` and ``M = X' W^{-1} X``, ``M' = -sum a_j^2 sx_j sx_j'``,
    ``M'' = 2 sum n_j a_j^3 sx_j sx_j'``. Where ``-H`` is not positive definite (a maximum on
    the boundary ``lam = 0`` need not be stationary), the cross term is dropped:
    ``sqrt(diag((X' V^{-1} X)^{-1}))``.

    Parameters
    ----------
    st : RemlStats
    var_school, var_pupil : float
        The variances (outcome units squared; ``var_pupil > 0``), normally the REML estimates.

    Returns
    -------
    ndarray, shape (p,)
        Standard errors of the intercept and the coefficients (outcome units per predictor
        unit).
    """
    n, p = int(st.n_j.sum()), st.xtx.shape[0]
    t2, s2 = float(var_school), float(var_pupil)
    lam, f = t2 / s2, n - p
    beta, xvx, _ = _gls(st, t2, s2)
    a = 1 / (1 + st.n_j * lam)
    resid = st.sy - st.sx @ beta  # per-school sums of the GLS residuals
    m = st.xtx - (st.sx.T * (lam * a)) @ st.sx
    q = st.yty - 2 * beta @ st.xty + beta @ st.xtx @ beta - lam * (a @ resid**2)
    dq, d2q = -(a**2 @ resid**2), 2 * (st.n_j * a**3) @ resid**2
    mi_dm = np.linalg.solve(m, -(st.sx.T * a**2) @ st.sx)
    mi_d2m = np.linalg.solve(m, (st.sx.T * (2 * st.n_j * a**3)) @ st.sx)
    info = np.empty((p + 1, p + 1))  # -H
    info[:p, :p] = xvx
    info[:p, p] = info[p, :p] = f / q * (st.sx.T @ (a**2 * resid))
    info[p, p] = ((f / 2) * (d2q / q - dq**2 / q**2) - 0.5 * np.sum((st.n_j * a)**2)
                  + 0.5 * (np.trace(mi_d2m) - np.trace(mi_dm @ mi_dm)))
    try:
        np.linalg.cholesky(info)
    except np.linalg.LinAlgError:
        return np.sqrt(np.diag(np.linalg.inv(xvx)))
    return np.sqrt(np.diag(np.linalg.inv(info))[:p])


def _exact_maximum(st: RemlStats, var_school: float, var_pupil: float
                   ) -> tuple[float, float, float, bool]:
    """:func:`exact_maximum` from precomputed statistics, with the optimiser's success flag."""

    def negative(theta: np.ndarray) -> float:
        return -_loglik(st, *np.exp(theta))

    start = np.log([max(var_school, 1e-6 * var_pupil), var_pupil])
    best = optimize.minimize(negative, start, method="Nelder-Mead",
                             options={"xatol": 1e-8, "fatol": 1e-10, "maxiter": 2000})
    t2, s2 = np.exp(best.x)
    return float(t2), float(s2), float(-best.fun), bool(best.success)


def exact_maximum(design: Design, var_school: float, var_pupil: float
                  ) -> tuple[float, float, float]:
    """Maximise :func:`reml_loglik` over the two variances, starting from a given point.

    Nelder-Mead on the log variances (the school variance may approach 0). Used to check that
    statsmodels' optimiser stopped at the maximum, not just that it reports the right value.

    Parameters
    ----------
    design : Design
    var_school, var_pupil : float
        Starting point (outcome units squared); a school variance below ``1e-6 var_pupil`` is
        raised to it (the search runs on the log scale).

    Returns
    -------
    (float, float, float)
        School variance, pupil variance (outcome units squared) and the maximised
        log-likelihood.
    """
    return _exact_maximum(reml_stats(design), var_school, var_pupil)[:3]


def _variance_se(st: RemlStats, var_school: float, var_pupil: float
                 ) -> tuple[float, float] | None:
    """:func:`variance_se` from precomputed statistics."""
    theta = np.array([var_school, var_pupil], dtype=float)
    h = 1e-4 * np.maximum(theta, 1e-3 * theta[1])
    hess = np.empty((2, 2))
    for a in range(2):
        for b in range(2):
            ea, eb = np.eye(2)[a] * h[a], np.eye(2)[b] * h[b]
            corners = [_loglik(st, *(theta + sa * ea + sb * eb))
                       for sa, sb in ((1, 1), (1, -1), (-1, 1), (-1, -1))]
            hess[a, b] = (corners[0] - corners[1] - corners[2] + corners[3]) / (4 * h[a] * h[b])
    if not np.all(np.isfinite(hess)) or np.any(np.linalg.eigvalsh(hess) >= 0):
        return None
    se = np.sqrt(np.diag(np.linalg.inv(-hess)))
    return float(se[0]), float(se[1])


def variance_se(design: Design, var_school: float, var_pupil: float) -> tuple[float, float] | None:
    """Standard errors of the two variances from the REML observed information.

    Parameters
    ----------
    design : Design
    var_school, var_pupil : float
        The REML estimates (outcome units squared).

    Returns
    -------
    (float, float) or None
        SEs of ``var_school`` and ``var_pupil`` (outcome units squared); None if the numerical
        Hessian (central differences, relative step 1e-4) is not finite and negative definite.
    """
    return _variance_se(reml_stats(design), var_school, var_pupil)


def fit_reml_stats(stats: SchoolStats, coef_names: tuple[str, ...]) -> RemlFit:
    """Fit a two-level random-intercept model by REML from school statistics alone.

    No pupil rows and no statsmodels: the exact REML log-likelihood (module docstring) of
    :func:`remlstats_of` is maximised with the pupil variance profiled out in closed form,
    first over ``log lam`` (``lam = var_school / var_pupil``: a grid of ``LAMBDA_GRID`` points
    over ``LAMBDA_RANGE``, then a bounded Brent search between the neighbours of its best
    point) and compared with the boundary ``lam = 0``; the better is returned (on the boundary the
    school variance is exactly 0) and checked: the profile is no higher :data:`CHECK_STEP`
    either side of it in ``log lam`` (on the boundary: at the smallest ratio searched).

    Parameters
    ----------
    stats : SchoolStats
        Per-school counts and means and pooled within-school cross products of the outcome
        and the predictors ``X`` (n_coef columns; an intercept is added).
    coef_names : tuple of str, length n_coef
        Names of the columns of ``X`` (``Design.coef_names``).

    Returns
    -------
    RemlFit
        ``coef`` holds the GLS estimates at the maximum and their standard errors
        (:func:`coef_se`, statsmodels' definition), ``"intercept"`` first; ``loglik`` the
        exact maximised value; the variances' standard errors are None on the boundary
        (``var_school == 0``); ``converged`` whether the Brent search reported success and the
        check passed; ``method`` is ``"exact"`` and ``warnings`` empty.

    Raises
    ------
    BayesfedError
        ``coef_names`` does not match the statistics, or there are no more pupils than
        fixed effects.
    """
    st = remlstats_of(stats)
    n, p = stats.n_pupils, st.xtx.shape[0]
    if len(coef_names) != p - 1:
        raise BayesfedError(f"REML: {len(coef_names)} coefficient names for statistics of "
                            f"{p - 1} predictors")
    if n <= p:
        raise BayesfedError(f"REML: {n} pupils cannot identify {p} fixed effects and a variance")

    def profiled(u: float) -> float:  # log lam -> the REML log-likelihood, s2 profiled out
        return _profile(st, float(np.exp(u)))[1]

    grid = np.linspace(*np.log(LAMBDA_RANGE), LAMBDA_GRID)
    values = [profiled(u) for u in grid]
    k = int(np.argmax(values))
    search = optimize.minimize_scalar(
        lambda u: -profiled(u), method="bounded",
        bounds=(grid[max(k - 1, 0)], grid[min(k + 1, grid.size - 1)]), options={"xatol": 1e-10})
    u, ll = float(search.x), float(-search.fun)
    if ll < values[k]:  # Brent never does worse than its bracket's best point
        u, ll = float(grid[k]), values[k]
    s2_zero, ll_zero = _profile(st, 0.0)
    if ll_zero >= ll:  # the boundary: checked against the smallest ratio searched
        ratio, s2, ll = 0.0, s2_zero, ll_zero
        neighbours = [values[0]]
    else:
        ratio, s2 = float(np.exp(u)), _profile(st, float(np.exp(u)))[0]
        neighbours = [profiled(u - CHECK_STEP), profiled(u + CHECK_STEP)]
    # the check: no higher value beside the maximum (s2 is exact given the ratio, so the
    # profile's maximum is the two-variance maximum)
    checked = all(v <= ll + 1e-12 * abs(ll) for v in neighbours)
    t2 = ratio * s2

    beta = _gls(st, t2, s2)[0]
    bse = coef_se(st, t2, s2)
    se_vars = _variance_se(st, t2, s2) if t2 > 0 else None
    names = ("intercept", *coef_names)
    return RemlFit(
        coef={name: (float(b), float(e)) for name, b, e in zip(names, beta, bse, strict=True)},
        var_school=float(t2),
        var_pupil=float(s2),
        se_var_school=None if se_vars is None else se_vars[0],
        se_var_pupil=None if se_vars is None else se_vars[1],
        loglik=float(ll),
        converged=bool(search.success) and checked,
        method="exact",
        n_pupils=n,
        n_schools=stats.n_schools,
        warnings=(),
    )


def statsmodels_fit(design: Design, method: str) -> tuple[MixedLMResults, tuple[str, ...]]:
    """One statsmodels REML fit with one optimiser, warnings captured.

    Parameters
    ----------
    design : Design
    method : str
        A ``scipy``-based optimiser name accepted by ``MixedLM.fit``.

    Returns
    -------
    (MixedLMResults, tuple of str)
        The fit and the messages of the warnings raised during it.
    """
    import statsmodels.api as sm  # here: statsmodels is only the tests' check (0.5 s to import)

    model = sm.MixedLM(design.y, fixed_effects_matrix(design), groups=design.school_idx)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = model.fit(reml=True, method=[method])
    return result, tuple(f"{w.category.__name__}: {w.message}" for w in caught)


def fit_reml(design: Design) -> RemlFit:
    """Fit a two-level random-intercept model by REML and verify its log-likelihood.

    Parameters
    ----------
    design : Design
        Outcome, predictors (an intercept is added) and school index.

    Returns
    -------
    RemlFit

    Raises
    ------
    BayesfedError
        statsmodels' REML log-likelihood differs from the exact one by more than
        ``LOGLIK_RTOL`` (relative), or no optimiser produced a finite log-likelihood.
    """
    fits, failures = {}, []
    for method in OPTIMISERS:
        try:
            fits[method] = statsmodels_fit(design, method)
        except (np.linalg.LinAlgError, ValueError) as exc:  # an optimiser stepped off the space
            failures.append(f"{method}: {type(exc).__name__}: {exc}")
    finite = {m: f for m, f in fits.items() if np.isfinite(f[0].llf)}
    if not finite:
        raise BayesfedError("REML: no optimiser produced a finite log-likelihood"
                            + (f" ({'; '.join(failures)})" if failures else ""))
    method = max(finite, key=lambda m: finite[m][0].llf)
    result, messages = finite[method]
    var_school, var_pupil = float(result.cov_re[0, 0]), float(result.scale)
    exact = reml_loglik(design, var_school, var_pupil)
    if abs(result.llf - exact) > LOGLIK_RTOL * abs(exact):
        raise BayesfedError(
            f"REML: statsmodels log-likelihood {result.llf:.10g} disagrees with the exact "
            f"{exact:.10g} at school variance {var_school:.6g}, pupil variance {var_pupil:.6g}"
        )
    stats = reml_stats(design)
    t2_max, s2_max, ll_max, _ = _exact_maximum(stats, var_school, var_pupil)
    if ll_max - exact > LOGLIK_RTOL * abs(exact):
        raise BayesfedError(
            f"REML: statsmodels ({method}) stopped at school variance {var_school:.6g}, pupil "
            f"variance {var_pupil:.6g} (log-likelihood {exact:.10g}), short of the exact "
            f"maximum {ll_max:.10g} at {t2_max:.6g}, {s2_max:.6g}"
        )
    names = ("intercept", *design.coef_names)
    se_vars = _variance_se(stats, var_school, var_pupil)
    return RemlFit(
        coef={name: (float(b), float(s))
              for name, b, s in zip(names, result.fe_params, result.bse_fe, strict=True)},
        var_school=var_school,
        var_pupil=var_pupil,
        se_var_school=None if se_vars is None else se_vars[0],
        se_var_pupil=None if se_vars is None else se_vars[1],
        loglik=float(result.llf),
        converged=bool(result.converged),
        method=method,
        n_pupils=design.n_pupils,
        n_schools=design.n_schools,
        warnings=(*messages, *failures),
    )
