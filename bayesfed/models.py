r"""The two-level random-intercept model in PyMC.

For pupil :math:`i` in school :math:`j`, with pupil-level predictors :math:`x_{ij}` (row of the
pupil-level columns of ``X``) and school-level predictors :math:`z_j` (the school's value of the
school-level columns, constant within a school):

.. math::

    \alpha &\sim \mathrm{Normal}(\mu_\alpha, \sigma_\alpha) \\
    \beta_k &\sim \mathrm{Normal}(\mu_k, \sigma_k), \quad k = 1..K \\
    \tau &\sim \mathrm{HalfNormal}(s_\tau) \\
    \sigma &\sim \mathrm{HalfNormal}(s_\sigma) \\
    u_j &\sim \mathrm{Normal}(\alpha + z_j^\top \beta_{\mathrm{school}},\; \tau) \\
    y_{ij} &\sim \mathrm{Normal}(u_j + x_{ij}^\top \beta_{\mathrm{pupil}},\; \sigma)

with the prior parameters from a :class:`~bayesfed.priors.PriorSet`. In PyMC names:
:math:`\alpha` = ``intercept``, :math:`\beta` = ``beta`` (pupil- and school-level coefficients
together, dims ``predictor``), :math:`\tau` = ``sd_school``, :math:`\sigma` = ``sigma``,
:math:`u` = ``u`` and the school effect :math:`u_j - \alpha - z_j^\top\beta_{\mathrm{school}}` =
``school_effect``. The school variance is :math:`\tau^2` and the pupil variance
:math:`\sigma^2`, the two levels of the paper's Tables 3-5.

How it is sampled. The school intercepts are centred, with the school-level predictors in
their mean, and are sampled as each school's mean outcome at its own pupils' mean composition,
:math:`m_j = u_j + \bar x_j^\top \beta_{\mathrm{pupil}}` (free variable ``school_mean``), so
that

.. math::

    m_j &\sim \mathrm{Normal}(\alpha + z_j^\top \beta_{\mathrm{school}}
          + \bar x_j^\top \beta_{\mathrm{pupil}},\; \tau) \\
    y_{ij} &\sim \mathrm{Normal}(m_j + (x_{ij} - \bar x_j)^\top \beta_{\mathrm{pupil}},\; \sigma)

with :math:`\bar x_j` the school's mean of the pupil-level predictors. This is the same model
(a shift of :math:`u_j` given :math:`\beta`, with unit Jacobian), and ``u`` is recovered as a
deterministic. Why: with about 250 pupils a school each school's mean is well determined by
its own data, the regime in which centred intercepts sample well; a non-centred version mixed
poorly for the school-level federation effect (R-hat 1.02-1.04). But with :math:`u_j` itself
as the free variable, a predictor whose school means vary (IDACI, KS2) couples :math:`u_j` and
its coefficient in the likelihood: on the shipped study's year 5, M2's IDACI coefficient had a
bulk ESS of 463 of 4,000 draws and R-hat 1.012. Sampling :math:`m_j` instead leaves the
likelihood with no such coupling: the same fit gave a bulk ESS of at least 1,500 for every
coefficient, R-hat 1.003, in less time.
"""

from __future__ import annotations

import numpy as np
import pymc as pm

from bayesfed.design import Design, group_sums
from bayesfed.priors import PriorSet


def school_values(design: Design, columns: np.ndarray) -> np.ndarray:
    """Each school's value of some columns of ``X``: its first pupil's.

    Parameters
    ----------
    design : Design
    columns : ndarray of int, shape (n_cols,)
        Indices into the columns of ``design.X`` (school-level columns).

    Returns
    -------
    ndarray, shape (n_schools, n_cols)
    """
    first = np.full(design.n_schools, -1, dtype=np.int64)
    order = np.arange(design.n_pupils)[::-1]  # the last write of a school is its first pupil
    first[design.school_idx[order]] = order
    if (first < 0).any():
        raise ValueError("a school of the design has no pupils")
    return design.X[np.ix_(first, columns)]


def school_means(design: Design, columns: np.ndarray) -> np.ndarray:
    """Each school's mean of some columns of ``X`` over its pupils.

    Parameters
    ----------
    design : Design
    columns : ndarray of int, shape (n_cols,)

    Returns
    -------
    ndarray, shape (n_schools, n_cols)
    """
    counts = np.bincount(design.school_idx, minlength=design.n_schools)
    return group_sums(design.school_idx, design.n_schools, design.X[:, columns]) / counts[:, None]


def build_two_level(design: Design, priors: PriorSet) -> pm.Model:
    """Build the centred two-level random-intercept model (see the module docstring).

    Parameters
    ----------
    design : Design
        The outcome ``y`` (n_pupils,), predictors ``X`` (n_pupils, n_coef), schools and which
        coefficients are school-level.
    priors : PriorSet
        Resolved priors; its ``coef_names`` must equal ``design.coef_names``.

    Returns
    -------
    pm.Model
        Coords ``school`` (design.schools), ``pupil`` (0..n_pupils-1), ``predictor``
        (design.coef_names), ``pupil_predictor`` and ``school_predictor`` (the pupil- and
        school-level subsets). Free variables ``intercept`` (scalar), ``beta`` (predictor;
        absent without predictors), ``sd_school``, ``sigma`` (scalars) and ``school_mean``
        (school); deterministics ``u`` and ``school_effect`` (school); observed ``y`` (pupil).
        Data containers ``school_idx`` (pupil), ``X_within`` (pupil, pupil_predictor: the
        pupil-level predictors minus their school means), ``X_bar`` (school, pupil_predictor)
        and ``Z`` (school, school_predictor), each only when there are such predictors, and
        ``y_obs``.
    """
    if priors.coef_names != design.coef_names:
        raise ValueError(f"priors are for coefficients {list(priors.coef_names)}, the design "
                         f"has {list(design.coef_names)}")
    is_school = np.array(design.school_level, dtype=bool)
    names = np.array(design.coef_names, dtype=object)
    pupil_cols, school_cols = np.flatnonzero(~is_school), np.flatnonzero(is_school)
    coords = {
        "school": list(design.schools),
        "pupil": np.arange(design.n_pupils),
        "predictor": list(design.coef_names),
        "pupil_predictor": list(names[pupil_cols]),
        "school_predictor": list(names[school_cols]),
    }
    with pm.Model(coords=coords) as model:
        school_idx = pm.Data("school_idx", design.school_idx, dims="pupil")
        y_obs = pm.Data("y_obs", design.y, dims="pupil")
        # float64 scalars: PyTensor would store a Python float such as 2.5, exact in float32, as
        # a float32 constant and evaluate its log density in single precision.
        intercept = pm.Normal("intercept", mu=np.float64(priors.intercept.mu),
                              sigma=np.float64(priors.intercept.sigma))
        u_mean = intercept  # prior mean of u_j
        composition = 0.0  # xbar_j' beta_pupil, per school
        within = 0.0  # (x_ij - xbar_j)' beta_pupil, per pupil
        if design.coef_names:
            beta = pm.Normal("beta", mu=priors.slope_mu, sigma=priors.slope_sigma,
                             dims="predictor")
        if school_cols.size:
            Z = pm.Data("Z", school_values(design, school_cols),
                        dims=("school", "school_predictor"))
            u_mean = intercept + Z @ beta[school_cols]
        if pupil_cols.size:
            xbar = school_means(design, pupil_cols)
            X_bar = pm.Data("X_bar", xbar, dims=("school", "pupil_predictor"))
            X_within = pm.Data("X_within", design.X[:, pupil_cols] - xbar[design.school_idx],
                               dims=("pupil", "pupil_predictor"))
            composition = X_bar @ beta[pupil_cols]
            within = X_within @ beta[pupil_cols]
        sd_school = pm.HalfNormal("sd_school", sigma=np.float64(priors.sd_school))
        sigma = pm.HalfNormal("sigma", sigma=np.float64(priors.sigma))
        m = pm.Normal("school_mean", mu=u_mean + composition, sigma=sd_school, dims="school")
        u = pm.Deterministic("u", m - composition, dims="school")
        pm.Deterministic("school_effect", u - u_mean, dims="school")
        pm.Normal("y", mu=m[school_idx] + within, sigma=sigma, observed=y_obs, dims="pupil")
    return model
