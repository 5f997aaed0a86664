"""REML cross-check: the paper's two-level random-intercept models fitted with statsmodels.

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
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import statsmodels.api as sm
from scipy import optimize
from statsmodels.regression.mixed_linear_model import MixedLMResults

from bayesfed.design import Design, group_sums
from bayesfed.errors import BayesfedError

#: Optimisers tried, in order; the fit with the highest REML log-likelihood is kept.
OPTIMISERS = ("powell", "lbfgs")

#: Largest relative difference allowed between statsmodels' and the exact log-likelihood.
LOGLIK_RTOL = 1e-6


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
        Maximised REML log-likelihood (statsmodels' value, checked against the exact one).
    converged : bool
        Whether the kept optimiser reported convergence.
    method : str
        The kept optimiser.
    n_pupils, n_schools : int
        Size of the data.
    warnings : tuple of str
        Warnings statsmodels raised during the kept fit, and the errors of optimisers that
        failed outright.
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

    ``n_j`` (n_schools,) pupils per school; ``sx`` (n_schools, p) and ``sy`` (n_schools,)
    per-school sums of ``[1, X]`` and ``y``; ``xtx`` (p, p), ``xty`` (p,), ``yty`` the pooled
    cross-products. Every evaluation then costs O(n_schools p^2), whatever the pupil count.
    """

    n_j: np.ndarray
    sx: np.ndarray
    sy: np.ndarray
    xtx: np.ndarray
    xty: np.ndarray
    yty: float


def reml_stats(design: Design) -> RemlStats:
    """The sufficient statistics of :class:`RemlStats` for a design."""
    X, y = fixed_effects_matrix(design), design.y
    return RemlStats(n_j=np.bincount(design.school_idx, minlength=design.n_schools),
                     sx=school_sums(design, X), sy=school_sums(design, y),
                     xtx=X.T @ X, xty=X.T @ y, yty=float(y @ y))


def _loglik(st: RemlStats, var_school: float, var_pupil: float) -> float:
    """:func:`reml_loglik` from precomputed statistics."""
    n, p = int(st.n_j.sum()), st.xtx.shape[0]
    t2, s2 = float(var_school), float(var_pupil)
    g = t2 / (s2 + st.n_j * t2)
    xvx = (st.xtx - (st.sx.T * g) @ st.sx) / s2
    xvy = (st.xty - (st.sx.T * g) @ st.sy) / s2
    beta = np.linalg.solve(xvx, xvy)
    rtr = st.yty - 2 * beta @ st.xty + beta @ st.xtx @ beta
    school_r = st.sy - st.sx @ beta  # per-school sums of the GLS residuals
    quad = (rtr - g @ school_r**2) / s2
    logdet_v = n * np.log(s2) + np.sum(np.log1p(st.n_j * t2 / s2))
    logdet_xvx = np.linalg.slogdet(xvx)[1]
    return float(-0.5 * ((n - p) * np.log(2 * np.pi) + logdet_v + logdet_xvx + quad))


def exact_maximum(design: Design, var_school: float, var_pupil: float
                  ) -> tuple[float, float, float]:
    """Maximise :func:`reml_loglik` over the two variances, starting from a given point.

    Nelder-Mead on the log variances (the school variance may approach 0). Used to check that
    statsmodels' optimiser stopped at the maximum, not just that it reports the right value.

    Returns
    -------
    (float, float, float)
        School variance, pupil variance and the maximised log-likelihood.
    """
    stats = reml_stats(design)

    def negative(theta: np.ndarray) -> float:
        return -_loglik(stats, *np.exp(theta))

    start = np.log([max(var_school, 1e-6 * var_pupil), var_pupil])
    best = optimize.minimize(negative, start, method="Nelder-Mead",
                             options={"xatol": 1e-8, "fatol": 1e-10, "maxiter": 2000})
    t2, s2 = np.exp(best.x)
    return float(t2), float(s2), float(-best.fun)


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
        SEs of ``var_school`` and ``var_pupil``; None if the numerical Hessian (central
        differences, relative step 1e-4) is not negative definite.
    """
    stats = reml_stats(design)
    theta = np.array([var_school, var_pupil], dtype=float)
    h = 1e-4 * np.maximum(theta, 1e-3 * theta[1])
    hess = np.empty((2, 2))
    for a in range(2):
        for b in range(2):
            ea, eb = np.eye(2)[a] * h[a], np.eye(2)[b] * h[b]
            corners = [_loglik(stats, *(theta + sa * ea + sb * eb))
                       for sa, sb in ((1, 1), (1, -1), (-1, 1), (-1, -1))]
            hess[a, b] = (corners[0] - corners[1] - corners[2] + corners[3]) / (4 * h[a] * h[b])
    if np.any(np.linalg.eigvalsh(hess) >= 0):
        return None
    se = np.sqrt(np.diag(np.linalg.inv(-hess)))
    return float(se[0]), float(se[1])


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
    t2_max, s2_max, ll_max = exact_maximum(design, var_school, var_pupil)
    if ll_max - exact > LOGLIK_RTOL * abs(exact):
        raise BayesfedError(
            f"REML: statsmodels ({method}) stopped at school variance {var_school:.6g}, pupil "
            f"variance {var_pupil:.6g} (log-likelihood {exact:.10g}), short of the exact "
            f"maximum {ll_max:.10g} at {t2_max:.6g}, {s2_max:.6g}"
        )
    names = ("intercept", *design.coef_names)
    se_vars = variance_se(design, var_school, var_pupil)
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
