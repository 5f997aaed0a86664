r"""Variance partitions of two-level models, computed per posterior draw.

The one place where school and pupil variances become shares. Every function takes posterior
draws (an :class:`xarray.Dataset`, or a ``DataTree`` group such as ``tree.posterior``, with
dims ``chain`` and ``draw``) and returns one value per draw, so that any summary of a share
(mean, HDI) is a summary of its posterior, not a ratio of posterior means.

With :math:`\tau` = ``sd_school`` and :math:`\sigma` = ``sigma``:

* variance partition coefficient (:func:`vpc`): :math:`\tau^2 / (\tau^2 + \sigma^2)`, the
  share of the residual variance that lies between schools (three shares when the
  event-time model's school-by-cohort sd :math:`\omega` = ``sd_cell`` is present);
* proportional reduction in variance (:func:`variance_explained`), the paper's "variance
  explained" at each level: :math:`1 - \tau^2_{\mathrm{model}} / \tau^2_{\mathrm{reference}}` and
  :math:`1 - \sigma^2_{\mathrm{model}} / \sigma^2_{\mathrm{reference}}`;
* Rights & Sterba (2019) decomposition (:func:`decomposition`) of the model-implied total
  variance :math:`\beta^\top \Sigma_X \beta + \tau^2 + \sigma^2` into the fixed part, the school
  part and the pupil part, and with the fixed part split within and between schools
  (:func:`decomposition_levels`): R-squared within and between, inside one posterior;
* with random slopes (:mod:`bayesfed.modelling.random_slopes`), the school effects' covariance
  :math:`\Sigma` (:func:`school_covariance`), the VPC at given predictor values
  (:func:`vpc_at`) and, in the decomposition, the school part averaged over the pupils,
  :math:`\mathrm{tr}(\Sigma M)` (Johnson 2014);
* with a residual sd by school (:mod:`bayesfed.modelling.location_scale`), the pupil variance
  is the schools' mean :math:`E[\sigma_j^2] = \sigma^2 e^{2 s^2}` in every partition
  (:func:`pupil_variance`).
"""

from __future__ import annotations

import numpy as np
import xarray as xr
from arviz_stats import hdi

from bayesfed.design.columns import Design
from bayesfed.design.suffstats import SchoolSummary, summary_of
from bayesfed.posterior.intervals import PROB

#: Dims of one posterior draw.
SAMPLE_DIMS = ("chain", "draw")


def pupil_variance(posterior: xr.Dataset) -> xr.DataArray:
    r"""The pupil-level variance of each draw (outcome units squared): :math:`\sigma^2`, or,
    with a residual sd by school (``sd_log_sigma`` :math:`= s` present), the mean over schools
    :math:`E[\sigma_j^2] = \sigma^2 e^{2 s^2}` of the log-normal :math:`\sigma_j` (median
    :math:`\sigma`). Every partition of this module takes the pupil variance from here."""
    pupil = posterior["sigma"] ** 2
    if "sd_log_sigma" in posterior:
        pupil = pupil * np.exp(2 * posterior["sd_log_sigma"] ** 2)
    return pupil


def vpc(posterior: xr.Dataset) -> xr.Dataset:
    r"""Variance partition coefficients: the shares of the residual variance at each level.

    Parameters
    ----------
    posterior : xarray.Dataset
        With ``sd_school`` and ``sigma`` (outcome units), dims (chain, draw); for the
        three-level event-time model also ``sd_cell`` (:math:`\omega`, school-by-cohort).

    Returns
    -------
    xarray.Dataset
        ``school`` = :math:`\tau^2/(\tau^2+\sigma^2)` and ``pupil`` = 1 - ``school``, shares in
        [0, 1], dims (chain, draw); with ``sd_cell``, ``school``, ``cell`` and ``pupil`` are
        :math:`\tau^2`, :math:`\omega^2` and :math:`\sigma^2` over
        :math:`\tau^2+\omega^2+\sigma^2`.
    """
    parts = {"school": posterior["sd_school"] ** 2}
    if "sd_cell" in posterior:
        parts["cell"] = posterior["sd_cell"] ** 2
    parts["pupil"] = pupil_variance(posterior)
    total = sum(parts.values())
    return xr.Dataset({level: var / total for level, var in parts.items()})


def _flat_draws(da: xr.DataArray, n: int) -> np.ndarray:
    """The first ``n`` draws of a scalar-per-draw variable, chain by chain, shape (n,)."""
    return da.transpose(*SAMPLE_DIMS).to_numpy().reshape(-1)[:n]


def school_covariance(posterior: xr.Dataset) -> xr.DataArray:
    r"""The covariance :math:`\Sigma = \mathrm{diag}(s)\,\Omega\,\mathrm{diag}(s)` of a
    random-slope model's school effects, per draw (outcome units squared, per predictor unit
    for a slope).

    Parameters
    ----------
    posterior : xarray.Dataset
        With ``sd_school`` (chain, draw), ``sd_slope`` (chain, draw, slope) and ``cor_school``
        (chain, draw, re_term, re_term_b), as :mod:`bayesfed.modelling.random_slopes` names them.

    Returns
    -------
    xarray.DataArray
        Dims (chain, draw, re_term, re_term_b); intercept first, then the slopes.
    """
    sds = np.concatenate([posterior["sd_school"].transpose(*SAMPLE_DIMS).to_numpy()[..., None],
                          posterior["sd_slope"].transpose(*SAMPLE_DIMS, "slope").to_numpy()],
                         axis=-1)
    cor = posterior["cor_school"].transpose(*SAMPLE_DIMS, "re_term", "re_term_b")
    return cor.copy(data=sds[..., :, None] * cor.to_numpy() * sds[..., None, :])


def vpc_at(posterior: xr.Dataset, z: np.ndarray) -> xr.DataArray:
    r"""The school share of the residual variance of pupils with random-effect design ``z``
    in a random-slope model: :math:`z^\top\Sigma z / (z^\top\Sigma z + \sigma^2)`, per draw.

    Parameters
    ----------
    posterior : xarray.Dataset
        As :func:`school_covariance`, and ``sigma``.
    z : ndarray, shape (n_points, r)
        :math:`(1, x_S)` at each point: 1 then the slope predictors' values.

    Returns
    -------
    xarray.DataArray
        Dims (chain, draw, point), shares in [0, 1].
    """
    cov = school_covariance(posterior).to_numpy()
    z = np.asarray(z, dtype=float)
    school = np.einsum("pi,...ij,pj->...p", z, cov, z)
    pupil = pupil_variance(posterior).transpose(*SAMPLE_DIMS).to_numpy()[..., None]
    return xr.DataArray(school / (school + pupil), dims=(*SAMPLE_DIMS, "point"))


def variance_explained(reference_posterior: xr.Dataset, posterior: xr.Dataset) -> xr.Dataset:
    r"""Proportional reduction in variance at each level relative to a reference model.

    ``school`` = :math:`1 - \tau^2_{\mathrm{model}}/\tau^2_{\mathrm{reference}}` and ``pupil`` =
    :math:`1 - \sigma^2_{\mathrm{model}}/\sigma^2_{\mathrm{reference}}`: the paper's variance
    explained by the model's predictors (e.g. M1 against the empty model M0).

    The two models are fitted separately, so their posteriors are independent. Draws are paired
    by position: each posterior's (chain, draw) is flattened chain by chain to one ``sample``
    dim and draw ``i`` of the model is paired with draw ``i`` of the reference. Because MCMC
    draws are (after convergence) exchangeable draws of each marginal posterior, the pairs are
    draws from the product of the two posteriors and the ratio's distribution is that of the
    ratio of independent variables. When the counts differ only the first ``n`` draws of each
    are used, ``n`` the smaller count (the tail of the longer run, i.e. whole later chains, is
    dropped; what is kept is still a valid set of draws from that posterior).

    A negative value is not a bug: it means the model's variance at that level is LARGER than
    the reference's. Adding pupil predictors can raise the school variance when the pupils'
    composition differs between schools (e.g. schools whose intake is disadvantaged but whose
    results are average have a larger adjusted school effect). Report it as it is.

    Parameters
    ----------
    reference_posterior, posterior : xarray.Dataset
        Posterior draws of the reference and the model, each with ``sd_school`` and ``sigma``
        (outcome units), dims (chain, draw).

    Returns
    -------
    xarray.Dataset
        ``school`` and ``pupil``, dims (sample,), length ``n``; values in (-inf, 1].
    """
    n = min(reference_posterior["sigma"].size, posterior["sigma"].size)
    out = {}
    for level, variance in (("school", lambda post: post["sd_school"] ** 2),
                            ("pupil", pupil_variance)):
        ref = _flat_draws(variance(reference_posterior), n)
        mod = _flat_draws(variance(posterior), n)
        out[level] = ("sample", 1 - mod / ref)
    return xr.Dataset(out, coords={"sample": np.arange(n)})


def snijders_bosker(reference_posterior: xr.Dataset, posterior: xr.Dataset,
                    group_size: float) -> xr.Dataset:
    r"""Snijders & Bosker's R-squared at each level, relative to a reference (empty) model.

    ``pupil`` = :math:`1 - (\sigma^2_M + \tau^2_M) / (\sigma^2_0 + \tau^2_0)`, the proportional
    reduction in the prediction error of a pupil's outcome, and ``school`` =
    :math:`1 - (\sigma^2_M / n + \tau^2_M) / (\sigma^2_0 / n + \tau^2_0)`, of a school's mean
    outcome, :math:`n` a representative school size (Snijders & Bosker 1994, *Sociological
    Methods & Research* 22(3), 342-363, https://doi.org/10.1177/0049124194022003004). Unlike
    the proportional reductions of :func:`variance_explained`, adding a pupil predictor cannot
    lower them in the population. Draws are paired as in :func:`variance_explained`.

    Parameters
    ----------
    reference_posterior, posterior : xarray.Dataset
        Each with ``sd_school`` and ``sigma`` (outcome units), dims (chain, draw).
    group_size : float
        Pupils per school, :math:`n` (bayesfed uses the fit's mean).

    Returns
    -------
    xarray.Dataset
        ``pupil`` and ``school``, dims (sample,); values in (-inf, 1].
    """
    n = min(reference_posterior["sigma"].size, posterior["sigma"].size)
    tau0, sigma0 = (_flat_draws(reference_posterior["sd_school"], n) ** 2,
                    _flat_draws(pupil_variance(reference_posterior), n))
    tau, sigma = (_flat_draws(posterior["sd_school"], n) ** 2,
                  _flat_draws(pupil_variance(posterior), n))
    return xr.Dataset(
        {"pupil": ("sample", 1 - (sigma + tau) / (sigma0 + tau0)),
         "school": ("sample", 1 - (sigma / group_size + tau) / (sigma0 / group_size + tau0))},
        coords={"sample": np.arange(n)})


def decomposition(posterior: xr.Dataset, design: Design) -> xr.Dataset:
    """Rights & Sterba shares for a fit of ``design`` (see :func:`decomposition_from_cov`)."""
    names = tuple(str(v) for v in posterior["beta"]["predictor"].to_numpy()) \
        if "beta" in posterior else ()
    if names != design.coef_names:
        raise ValueError(f"posterior coefficients {list(names)} differ from the design's "
                         f"{list(design.coef_names)}")
    return decomposition_from_cov(posterior, predictor_cov(design))


def predictor_cov(data: Design | SchoolSummary) -> np.ndarray:
    """Sample covariance matrix (denominator ``n - 1``) of the predictors over pupils, from a
    design or its summary (:meth:`bayesfed.design.suffstats.SchoolSummary.total_cov`).

    Returns
    -------
    ndarray, shape (n_coef, n_coef)
    """
    return summary_of(data).total_cov()[1:, 1:]


def decomposition_from_cov(posterior: xr.Dataset, x_cov: np.ndarray,
                           z_moment: np.ndarray | None = None) -> xr.Dataset:
    r"""Rights & Sterba (2019) shares of the model-implied total variance, per draw.

    The total variance of a pupil's outcome implied by a random-intercept model is
    :math:`\beta^\top \Sigma_X \beta + \tau^2 + \sigma^2`, with :math:`\Sigma_X` the sample
    covariance matrix of the predictors over pupils (:func:`predictor_cov`, stored with each
    fit). Each part is divided by the total. With random slopes the school part is the school
    effects' variance averaged over the pupils, :math:`\mathrm{tr}(\Sigma M)` with
    :math:`\Sigma` their covariance (:func:`school_covariance`) and :math:`M` the pupils' mean
    of :math:`z z^\top`, :math:`z = (1, x_S)` (Johnson 2014; what ``performance::r2_nakagawa``
    computes for lme4's random slopes).

    Parameters
    ----------
    posterior : xarray.Dataset
        With ``sd_school``, ``sigma`` (chain, draw) and, when there are predictors, ``beta``
        (chain, draw, predictor) in the order of ``x_cov``'s rows; with ``z_moment`` also
        ``sd_slope`` and ``cor_school``.
    x_cov : ndarray, shape (n_coef, n_coef)
    z_moment : ndarray, shape (r, r), optional
        :math:`M`, for a random-slope model (``r`` = 1 + its slopes, intercept first).

    Returns
    -------
    xarray.Dataset
        Dims (chain, draw), shares in [0, 1]: ``fixed`` (predictors; 0 without predictors),
        ``school``, ``pupil`` (summing to 1), ``r2_marginal`` (= ``fixed``) and
        ``r2_conditional`` (= ``fixed`` + ``school``).
    """
    school = posterior["sd_school"] ** 2
    if z_moment is not None:
        school = (school_covariance(posterior) * xr.DataArray(
            np.asarray(z_moment, dtype=float), dims=("re_term", "re_term_b"))).sum(
            ("re_term", "re_term_b"))
    pupil = pupil_variance(posterior)
    fixed = xr.zeros_like(school)
    if x_cov.size:
        b = posterior["beta"].transpose(..., "predictor").to_numpy()
        fixed = fixed + np.einsum("...i,ij,...j->...", b, x_cov, b)
    total = fixed + school + pupil
    out = xr.Dataset({"fixed": fixed / total, "school": school / total, "pupil": pupil / total})
    out["r2_marginal"] = out["fixed"]
    out["r2_conditional"] = out["fixed"] + out["school"]
    return out


def predictor_cov_levels(school: xr.Dataset) -> tuple[np.ndarray, np.ndarray]:
    r"""Within- and between-school covariance matrices of the predictors over pupils, from a
    fit's per-school statistics (:func:`bayesfed.posterior.checks.school_data`).

    :math:`\Sigma_w = \sum_j \sum_{i \in j} (x_i - \bar x_j)(x_i - \bar x_j)^\top / (n - 1)` and
    :math:`\Sigma_b = \sum_j n_j (\bar x_j - \bar x)(\bar x_j - \bar x)^\top / (n - 1)`; they sum
    to :func:`predictor_cov`'s matrix. A school-level predictor has no within part.

    Returns
    -------
    within, between : ndarray, shape (n_coef, n_coef)
    """
    n = school["school_n"].to_numpy().astype(float)
    means = school["school_x_mean"].transpose("school", "predictor").to_numpy()
    within = school["school_xx"].transpose("school", "predictor", "predictor_").to_numpy()
    deviation = means - n @ means / n.sum()
    between = (deviation * n[:, None]).T @ deviation
    return within.sum(axis=0) / (n.sum() - 1), between / (n.sum() - 1)


def decomposition_levels(posterior: xr.Dataset, within: np.ndarray, between: np.ndarray
                         ) -> xr.Dataset:
    r"""Rights & Sterba (2019) decomposition with its within and between parts, per draw.

    For a random-intercept model the total variance is :math:`f_1 + f_2 + m + \sigma^2`
    (no random slopes: :math:`v = 0`), with :math:`f_1 = \beta^\top \Sigma_w \beta` the
    predictors' variance within schools, :math:`f_2 = \beta^\top \Sigma_b \beta` between
    schools (:func:`predictor_cov_levels`), :math:`m = \tau^2` the school intercepts'. The
    within-school variance is :math:`f_1 + \sigma^2` and the between-school variance
    :math:`f_2 + m`, so :math:`R^2_w = f_1 / (f_1 + \sigma^2)` and
    :math:`R^2_b = f_2 / (f_2 + m)`. Rights, J. D. & Sterba, S. K. (2019), Quantifying
    explained variance in multilevel models, *Psychological Methods* 24(3), 309-338,
    https://doi.org/10.1037/met0000184.

    Parameters
    ----------
    posterior : xarray.Dataset
        With ``sd_school``, ``sigma`` (chain, draw) and, with predictors, ``beta`` (chain,
        draw, predictor) in the order of the matrices' rows.
    within, between : ndarray, shape (n_coef, n_coef)

    Returns
    -------
    xarray.Dataset
        Dims (chain, draw): ``f1``, ``f2``, ``m``, ``pupil`` (shares of the total, summing to
        1), ``r2_within`` and ``r2_between`` (in [0, 1]; 0 without predictors).
    """
    school = posterior["sd_school"] ** 2
    pupil = pupil_variance(posterior)
    f1 = xr.zeros_like(school)
    f2 = xr.zeros_like(school)
    if within.size:
        b = posterior["beta"].transpose(..., "predictor").to_numpy()
        f1 = f1 + np.einsum("...i,ij,...j->...", b, within, b)
        f2 = f2 + np.einsum("...i,ij,...j->...", b, between, b)
    total = f1 + f2 + school + pupil
    return xr.Dataset({"f1": f1 / total, "f2": f2 / total, "m": school / total,
                       "pupil": pupil / total, "r2_within": f1 / (f1 + pupil),
                       "r2_between": f2 / (f2 + school)})


def term_share_between(posterior: xr.Dataset, between: np.ndarray, term: str) -> xr.DataArray:
    r"""The share of the between-school variance :math:`f_2 + m` that one term accounts for,
    per draw: :math:`(f_2 - f_2^{(-t)}) / (f_2 + m)`, with :math:`f_2^{(-t)}` the between part
    without term :math:`t`'s coefficient (the others held at their values), so covariances with
    the other predictors' school means count to the term. For M2's ``federated`` it is the
    federation's share of the school-level variance inside one posterior (the paper's Table 5
    compares two fits instead).

    Parameters
    ----------
    posterior : xarray.Dataset
        With ``sd_school`` and ``beta`` (chain, draw, predictor).
    between : ndarray, shape (n_coef, n_coef)
        :func:`predictor_cov_levels`'s between-school matrix, in ``beta``'s order.
    term : str
        A ``predictor`` label of ``beta``.

    Returns
    -------
    xarray.DataArray
        Dims (chain, draw); in [0, 1] when the term is uncorrelated with the others.
    """
    names = [str(v) for v in posterior["beta"]["predictor"].to_numpy()]
    b = posterior["beta"].transpose(..., "predictor").to_numpy()
    without = b.copy()
    without[..., names.index(term)] = 0.0
    f2 = np.einsum("...i,ij,...j->...", b, between, b)
    f2_without = np.einsum("...i,ij,...j->...", without, between, without)
    school = posterior["sd_school"] ** 2
    return (f2 - f2_without) / (f2 + school)


def hdi_summary(da: xr.DataArray, prob: float = PROB) -> dict[str, float]:
    """Mean, standard deviation and highest-density interval of a scalar-per-draw quantity.

    Parameters
    ----------
    da : xarray.DataArray
        One value per draw; every dim is treated as a sample dim (e.g. (chain, draw) or
        (sample,)).
    prob : float
        Probability mass of the HDI, in (0, 1).

    Returns
    -------
    dict
        ``mean``, ``sd`` (denominator ``n - 1``, as ArviZ's summary), ``hdi_low`` and
        ``hdi_high`` (ArviZ's HDI, "nearest" method), in ``da``'s units.
    """
    if not 0 < prob < 1:
        raise ValueError(f"prob must lie in (0, 1), got {prob}")
    interval = hdi(da, prob=prob, dim=list(da.dims))
    return {
        "mean": float(da.mean()),
        "sd": float(da.std(ddof=1)),
        "hdi_low": float(interval.sel(ci_bound="lower")),
        "hdi_high": float(interval.sel(ci_bound="upper")),
    }
