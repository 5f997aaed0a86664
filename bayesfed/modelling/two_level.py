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

with the prior parameters from a :class:`~bayesfed.modelling.priors.PriorSet`. In PyMC names:
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
poorly for the school-level federation effect and failed the R-hat gate. But with :math:`u_j`
itself as the free variable, a predictor whose school means vary (IDACI, KS2) couples
:math:`u_j` and its coefficient in the likelihood, and that coefficient mixed poorly.
Sampling :math:`m_j` instead leaves the likelihood with no such coupling, and every
coefficient mixed well, in less time (``docs/benchmarks.md``, section "Parameterisation of
the per-year model (``bench/parameterisation.py``)").

Collapsed likelihood
--------------------
:func:`build_two_level_collapsed` is the same model with the school intercepts integrated out,
for data of any size. Let :math:`\mu_j = \alpha + \bar x_j^\top \beta_{\mathrm{pupil}} +
z_j^\top \beta_{\mathrm{school}}` (the fixed part at the school's mean predictors),
:math:`r_j = \bar y_j - \mu_j`, :math:`n_j` the school's pupils, :math:`N` all pupils and
:math:`J` the schools. Within a school the pupils' covariance is :math:`\sigma^2 I + \tau^2
11^\top`; its inverse separates the school's mean residual :math:`r_j`, of variance
:math:`\tau^2 + \sigma^2/n_j`, from the pupils' deviations from their school means, which
enter only through the pooled within-school sum of squares

.. math::

    W(\beta) = \sum_i (\tilde y_i - \tilde x_i^\top\beta)^2
             = \tilde y^\top\tilde y - 2\beta^\top\tilde X^\top\tilde y
               + \beta^\top\tilde X^\top\tilde X\beta

(tilde: centred at the school mean; zero for school-level columns). With :math:`h_j = n_j /
(\sigma^2 + n_j\tau^2)`, the precision of :math:`\bar y_j` given :math:`\mu_j`:

.. math::

    -2 \log p(y \mid \alpha, \beta, \tau, \sigma) =
    N \log 2\pi + (N - J)\log\sigma^2 + \sum_j \log(\sigma^2 + n_j\tau^2)
    + W(\beta)/\sigma^2 + \sum_j h_j r_j^2.

A single-pupil school contributes its mean term only. The data enter through
:class:`~bayesfed.design.suffstats.SchoolStats` (:math:`n_j`, :math:`\bar y_j`, :math:`\bar x_j` and
the three cross products); the log density is the potential ``marginal_loglik``
(:func:`marginal_loglik`), and a gradient costs :math:`O(Jp + p^2)` for :math:`p` coefficients.
``tests/test_collapsed.py`` checks that it equals the pupil-row model's joint density divided
by the Gaussian conditional density of the intercepts.

NUTS samples ``level``, ``beta``, ``sd_school`` and ``sigma``. ``level`` :math:`= \alpha +
\bar x^\top\beta`, with :math:`\bar x` the pupils' mean of every column of ``X`` (for the
federation dummy, the share of pupils in federated schools), is the mean outcome at the
pupils' mean composition; ``intercept`` :math:`= \mathrm{level} - \bar x^\top\beta` is a
deterministic. Its prior is :math:`\mathrm{level} \mid \beta \sim \mathrm{Normal}(\mu_\alpha +
\bar x^\top\beta, \sigma_\alpha)`, the intercept's prior moved by a shift of unit Jacobian, so
the model (priors included) is exactly the pupil-row model's. Why: with the intercepts
integrated out, the intercept at uncentred predictors shares the uncertainty of every
coefficient whose school means vary (the federation dummy above all: with uncentred
predictors the intercept is the mean of the non-federated schools); centring removes that
correlation, and the coefficients mix better for it, while the sds, already well sampled,
lose a little (``docs/benchmarks.md``, section "Collapsed vs pupil-row likelihood of the
per-year model (``bench/collapsed.py``)").

The school intercepts are recovered exactly after sampling (:func:`add_school_draws`): given
the other parameters, the school effects :math:`a_j = u_j - \alpha - z_j^\top
\beta_{\mathrm{school}}` are independent Gaussians,

.. math::

    a_j \mid y, \alpha, \beta, \tau, \sigma \sim \mathrm{Normal}\left(
    \frac{(n_j/\sigma^2)\, r_j}{n_j/\sigma^2 + 1/\tau^2},\;
    (n_j/\sigma^2 + 1/\tau^2)^{-1/2} \right),

and one is drawn per posterior draw, so that the stored ``u``, ``school_effect`` and
``school_mean`` (:math:`m_j = \mu_j + a_j`) are draws from their joint posterior with the
other parameters, under the pupil-row model's names and dims.
"""

from __future__ import annotations

import numpy as np
import pymc as pm
import pytensor.tensor as pt
import xarray as xr

from bayesfed.design.columns import Design
from bayesfed.design.suffstats import SchoolStats, SchoolSummary, school_stats
from bayesfed.inputs.moments import group_sums
from bayesfed.modelling.priors import PriorSet


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


def _check_priors(design: Design, priors: PriorSet) -> None:
    if priors.coef_names != design.coef_names:
        raise ValueError(f"priors are for coefficients {list(priors.coef_names)}, the design "
                         f"has {list(design.coef_names)}")


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
    _check_priors(design, priors)
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


def marginal_loglik(stats: SchoolStats, fixed_mean, beta, sigma, sd_school, n_pupils=None,
                    n_schools=None):
    """The exact log-likelihood with the school intercepts integrated out.

    Parameters
    ----------
    stats : SchoolStats
    fixed_mean : tensor, shape (n_schools,) or scalar
        :math:`\\mu_j`, the fixed part at each school's mean predictors (outcome units).
    beta : tensor, shape (n_coef,), or None
        Coefficients (outcome units per predictor unit); None without predictors.
    sigma, sd_school : tensor scalars
        Pupil and school sds (outcome units).
    n_pupils, n_schools : int or tensor scalar, optional
        :math:`N` and :math:`J`; by default ``stats.n_pupils`` and ``stats.n_schools`` (which
        need ``stats`` to hold arrays, not tensors).

    Returns
    -------
    tensor scalar
        The formula of the module docstring (nats).
    """
    s2, t2 = sigma**2, sd_school**2
    n_pupils = stats.n_pupils if n_pupils is None else n_pupils
    n_schools = stats.n_schools if n_schools is None else n_schools
    mean_var = s2 + stats.n * t2  # n_j times the variance of a school's mean residual
    r = stats.y_mean - fixed_mean
    within = stats.yy
    if beta is not None:
        within = within - 2 * pt.dot(beta, stats.Xy) + pt.dot(beta, pt.dot(stats.XX, beta))
    log_det = (n_pupils - n_schools) * pt.log(s2) + pt.sum(pt.log(mean_var))
    quad = within / s2 + pt.sum(stats.n * r**2 / mean_var)
    return -0.5 * (n_pupils * np.log(2 * np.pi) + log_det + quad)


#: Scalars at the head of the data container of :func:`build_two_level_collapsed`, in order;
#: the per-coefficient vectors of :data:`PACKED_VECTORS`, ``XX`` and the school table follow.
PACKED_SCALARS = ("n_pupils", "yy", "prior_intercept_mu", "prior_intercept_sigma",
                  "prior_sd_school", "prior_sigma")
#: Vectors of length n_coef in the data container, in order, after the scalars.
PACKED_VECTORS = ("Xy", "X_centre", "prior_slope_mu", "prior_slope_sigma")


def collapsed_data(design: Design | SchoolSummary, priors: PriorSet) -> np.ndarray:
    """The value of the one data container of :func:`build_two_level_collapsed`.

    The collapsed model's graph depends on the data and priors only through this array, so a
    model compiled for one year's design samples another year's (same coefficients) once its
    container holds that year's values (:func:`bayesfed.sampling.nuts.sample_reusing`). One
    container rather than one per statistic: nutpie's compiled wrapper unpacks each container
    separately, so every container adds to the compile time (``docs/benchmarks.md``, section
    "One compiled model per specification (``sampling.sample_reusing``)").

    Parameters
    ----------
    design : Design or SchoolSummary
        The pupils, or their per-school summary (:func:`bayesfed.design.suffstats.summary_of`).
    priors : PriorSet
        Resolved priors; its ``coef_names`` must equal ``design.coef_names``.

    Returns
    -------
    ndarray, float64, shape (6 + 4 p + p**2 + J (2 + p),)
        For ``p`` coefficients and ``J`` schools: the scalars :data:`PACKED_SCALARS` (the
        number of pupils, the
        pooled within-school sum of squares of the outcome, the prior parameters of the
        intercept and the two sds; outcome units), the vectors :data:`PACKED_VECTORS` (the
        within-school cross products with the outcome, the pupils' mean of each column of
        ``X``, the coefficients' prior means and sds), the within-school cross products ``XX``
        row by row, then per school its pupil count, mean outcome and mean of each column of
        ``X`` (:class:`~bayesfed.design.suffstats.SchoolStats`). :func:`unpack_collapsed` reads it.
    """
    _check_priors(design, priors)
    stats = school_stats(design)
    vectors = {"Xy": stats.Xy, "X_centre": stats.X_centre, "prior_slope_mu": priors.slope_mu,
               "prior_slope_sigma": priors.slope_sigma}
    return np.concatenate([
        [stats.n_pupils, stats.yy, priors.intercept.mu, priors.intercept.sigma,
         priors.sd_school, priors.sigma],
        *(vectors[name] for name in PACKED_VECTORS), stats.XX.ravel(),
        np.column_stack([stats.n, stats.y_mean, stats.X_mean]).ravel()]).astype(np.float64)


def unpack_collapsed(packed, n_coef: int) -> dict:
    """The named statistics and priors inside :func:`collapsed_data`'s array.

    Parameters
    ----------
    packed : ndarray or tensor
        As :func:`collapsed_data` returns it, or the model's data container: slicing works
        the same on both.
    n_coef : int
        Number of coefficients ``p``.

    Returns
    -------
    dict
        Every name of :data:`PACKED_SCALARS` (scalars) and :data:`PACKED_VECTORS` (n_coef,),
        ``XX`` (n_coef, n_coef), ``n``, ``y_mean`` (n_schools,) and ``X_mean`` (n_schools,
        n_coef).
    """
    out = {name: packed[i] for i, name in enumerate(PACKED_SCALARS)}
    start = len(PACKED_SCALARS)
    for name in PACKED_VECTORS:
        out[name] = packed[start:start + n_coef]
        start += n_coef
    out["XX"] = packed[start:start + n_coef * n_coef].reshape((n_coef, n_coef))
    schools = packed[start + n_coef * n_coef:].reshape((-1, 2 + n_coef))
    return out | {"n": schools[:, 0], "y_mean": schools[:, 1], "X_mean": schools[:, 2:]}


def centred_fixed_part(x_centre, slope_mu, slope_sigma, intercept_mu, intercept_sigma,
                       n_coef: int):
    """The fixed part's free variables of the collapsed models, in the current PyMC model:
    ``beta`` (dim ``predictor``; None without coefficients), ``level`` :math:`= \\alpha +
    \\bar x^\\top\\beta` with the intercept's prior moved to it (unit Jacobian: module
    docstring), and the deterministic ``intercept``.

    Parameters
    ----------
    x_centre : tensor or ndarray, shape (n_coef,)
        :math:`\\bar x`, the pupils' mean of each column of ``X``.
    slope_mu, slope_sigma : tensor or ndarray, shape (n_coef,)
    intercept_mu, intercept_sigma : tensor scalar or float
    n_coef : int

    Returns
    -------
    beta, level : tensors
    """
    beta, composition = None, 0.0
    if n_coef:
        beta = pm.Normal("beta", mu=slope_mu, sigma=slope_sigma, dims="predictor")
        composition = pt.dot(x_centre, beta)
    level = pm.Normal("level", mu=composition + intercept_mu, sigma=intercept_sigma)
    pm.Deterministic("intercept", level - composition)
    return beta, level


def build_two_level_collapsed(design: Design | SchoolSummary, priors: PriorSet) -> pm.Model:
    """Build the two-level model with the school intercepts integrated out (module docstring).

    The same model and priors as :func:`build_two_level`, sampled without school-level
    variables; :func:`add_school_draws` adds ``u``, ``school_effect`` and ``school_mean`` to
    the posterior afterwards. The sufficient statistics and the prior parameters are the one
    data container ``collapsed_data`` (:func:`collapsed_data`), so the graph is the same for
    every design with the same coefficients: one compiled model serves every year.

    Parameters
    ----------
    design : Design or SchoolSummary
        The pupils, or their per-school summary (:func:`bayesfed.design.suffstats.summary_of`).
    priors : PriorSet
        Resolved priors; its ``coef_names`` must equal ``design.coef_names``.

    Returns
    -------
    pm.Model
        Coord ``predictor`` (design.coef_names). Free variables ``beta`` (predictor; absent
        without predictors), ``level`` (the mean outcome at the pupils' mean predictors),
        ``sd_school`` and ``sigma`` (scalars); deterministic ``intercept``; the likelihood is
        the potential ``marginal_loglik``; the data container ``collapsed_data``. No pupil- or
        school-level variable is kept.
    """
    n_coef = len(design.coef_names)
    with pm.Model(coords={"predictor": list(design.coef_names)}) as model:
        d = unpack_collapsed(pm.Data("collapsed_data", collapsed_data(design, priors)), n_coef)
        stats = SchoolStats(n=d["n"], y_mean=d["y_mean"], X_mean=d["X_mean"], XX=d["XX"],
                            Xy=d["Xy"], yy=d["yy"])
        beta, level = centred_fixed_part(d["X_centre"], d["prior_slope_mu"],
                                         d["prior_slope_sigma"], d["prior_intercept_mu"],
                                         d["prior_intercept_sigma"], n_coef)
        fixed_part = 0.0 if beta is None else pt.dot(d["X_mean"] - d["X_centre"], beta)
        sd_school = pm.HalfNormal("sd_school", sigma=d["prior_sd_school"])
        sigma = pm.HalfNormal("sigma", sigma=d["prior_sigma"])
        pm.Potential("marginal_loglik", marginal_loglik(
            stats, level + fixed_part, beta, sigma, sd_school,
            n_pupils=d["n_pupils"], n_schools=d["n"].shape[0]))
    return model


def school_effect_conditional(
    stats: SchoolStats, fixed_mean: np.ndarray, sigma: np.ndarray, sd_school: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Mean and sd of each school effect given the data and the other parameters.

    Parameters
    ----------
    stats : SchoolStats
    fixed_mean : ndarray, shape (..., n_schools)
        :math:`\\mu_j`, the fixed part at each school's mean predictors (outcome units), e.g.
        one row per posterior draw.
    sigma, sd_school : ndarray, shape (...)
        Pupil and school sds (outcome units).

    Returns
    -------
    mean, sd : ndarray, shape (..., n_schools)
        Of :math:`a_j = u_j - \\alpha - z_j^\\top\\beta_{\\mathrm{school}}` (outcome units):
        :math:`\\tau^2 n_j r_j / (\\sigma^2 + n_j\\tau^2)` and
        :math:`\\sigma\\tau / \\sqrt{\\sigma^2 + n_j\\tau^2}`, the module docstring's
        formula written so that it holds at :math:`\\tau = 0` too.
    """
    s2 = np.asarray(sigma, dtype=float)[..., None] ** 2
    t2 = np.asarray(sd_school, dtype=float)[..., None] ** 2
    total = s2 + stats.n * t2
    mean = t2 * stats.n * (stats.y_mean - fixed_mean) / total
    return mean, np.sqrt(s2 * t2 / total)


def add_school_draws(tree: xr.DataTree, design: Design | SchoolSummary, seed: int) -> xr.DataTree:
    """Add exact posterior draws of the school intercepts to a collapsed model's fit.

    For every posterior draw of ``intercept``, ``beta``, ``sd_school`` and ``sigma`` one
    school effect per school is drawn from its Gaussian conditional
    (:func:`school_effect_conditional`), so that the result holds draws from the joint
    posterior of the pupil-row model (:func:`build_two_level`).

    Parameters
    ----------
    tree : xarray.DataTree
        A fit of :func:`build_two_level_collapsed` to ``design`` (group ``posterior`` with dims
        ``chain`` and ``draw``).
    design : Design or SchoolSummary
        The design (or its summary) the model was built from.
    seed : int
        Seed of the NumPy generator that draws the school effects; the same tree, design and
        seed give the same draws.

    Returns
    -------
    xarray.DataTree
        A copy of ``tree`` whose ``posterior`` also holds ``u``, ``school_effect`` and
        ``school_mean`` (chain, draw, school), as :func:`build_two_level` defines them
        (outcome units), with coord ``school`` = ``design.schools``.

    Raises
    ------
    ValueError
        The posterior already has ``u``, or its coefficients are not the design's.
    """
    post = tree["posterior"].to_dataset()
    if "u" in post:
        raise ValueError("the posterior already holds school intercepts 'u'")
    stats = school_stats(design)
    intercept = post["intercept"].transpose("chain", "draw").to_numpy()
    if design.coef_names:
        names = tuple(str(p) for p in post["beta"]["predictor"].to_numpy())
        if names != design.coef_names:
            raise ValueError(f"the posterior has coefficients {list(names)}, the design "
                             f"{list(design.coef_names)}")
        beta = post["beta"].transpose("chain", "draw", "predictor").to_numpy()
    else:
        beta = np.zeros((*intercept.shape, 0))
    fixed_mean = intercept[..., None] + beta @ stats.X_mean.T  # (chain, draw, school)
    mean, sd = school_effect_conditional(
        stats, fixed_mean, post["sigma"].transpose("chain", "draw").to_numpy(),
        post["sd_school"].transpose("chain", "draw").to_numpy())
    effect = mean + sd * np.random.default_rng(seed).standard_normal(mean.shape)
    school = np.array(design.school_level, dtype=bool)
    u = intercept[..., None] + beta[..., school] @ stats.X_mean[:, school].T + effect
    dims = ("chain", "draw", "school")
    out = tree.copy()
    out["posterior"] = post.assign(
        u=(dims, u), school_effect=(dims, effect), school_mean=(dims, fixed_mean + effect)
    ).assign_coords(school=list(design.schools))
    return out
