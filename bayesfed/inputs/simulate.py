"""Synthetic federation studies with known truth, calibrated to Muijs's rural federations.

The generator mimics the design of the paper's re-analysis: rural federations of secondary
schools (Table 2 typology), each with matched non-federated schools sharing its founding
year, and GCSE cohorts from two years before to five years after founding. Outcomes follow
a two-level linear model whose pupil predictors are those of Table 4:

.. math::

    y_{ijt} = \\beta_0 + \\gamma_t + x_{ijt}'\\beta + u_j + w_{jt}
              + \\delta_{t - f_j}\\,\\mathrm{federated}_j + e_{ijt},

with school intercepts :math:`u_j \\sim N(0, \\tau^2)`, school-by-cohort shocks
:math:`w_{jt} \\sim N(0, \\omega^2)`, pupil residuals :math:`e_{ijt} \\sim N(0, \\sigma^2)`,
calendar-year effects :math:`\\gamma_t \\sim N(0, \\sigma_\\gamma^2)`, founding year
:math:`f_j` and the federation effect :math:`\\delta_k` for ``years_since`` :math:`k`. The
outcome depends on the predictors only through :math:`x'\\beta`, so REML fits of the paper's
models estimate :math:`\\beta` without bias. Federated and matched schools are drawn from the
same distributions, so the federation dummy is unconfounded.

True parameters and their sources (outcome in GCSE score points, the paper's scale):

=========================  ============  ==========================================================
Parameter                  Default       Source
=========================  ============  ==========================================================
typology counts            12/4/10/5     Table 2 rural column (38.7/12.9/32.2/16.1 % of 31)
``effect`` delta_0..5      0.32 ...      Table 5 "Federation" row: .32 .41 .49 .65 .81 .82
``pre_trend``              0.0           none (scenario knob); delta_{-m} = m * pre_trend
``cohort_slope``           0.0           none (scenario knob); founding cohort e's effect at
                                         k >= 0 is delta_k + cohort_slope * (e - e_mid) * k
``calendar_trend``         0.0           none (scenario knob); gamma_t gains
                                         calendar_trend * (t - t_first), per year
``shock_ar``               0.0           none (scenario knob); AR(1) correlation of w_jt over
                                         a school's consecutive years, sd unchanged
``sd_federation_effect``   0.0           none (scenario knob); b_f ~ N(0, sd^2) added to a
                                         federation's schools from founding (k >= 0) on
``intercept``              5.3           chosen so that M0 constants are ~4.2 (Table 3: 3.84-4.85)
fsm                        -0.95         Table 4 mean over years (-0.82 ... -1.02)
idaci                      -3.57         Table 4 mean (-3.14 ... -4.10), per unit IDACI (0-1)
male                       -0.39         Table 4 mean (-0.32 ... -0.45)
sen[school_action]         -3.33         Table 4 mean (-3.02 ... -4.01)
sen[school_action_plus]    -3.53         Table 4 mean (-3.11 ... -4.20)
sen[statemented]           -3.60         Table 4 mean (-3.08 ... -4.36)
non_white_british          0.0           Table 4 mean (0.005; never significant)
ks2                        4.35          Table 4 mean (3.99 ... 4.82), per unit share of max marks
``sd_school``              1.45          calibrated: M0 school share 17-20 % (Table 3) and
``sd_school_cohort``       0.70          M1 school-level PRV ~1/3 (Table 4)
``sigma``                  3.80          calibrated: M1 pupil-level PRV ~12 % (Table 4)
``sd_cohort``              0.1           assumption: small calendar-year effects
secondary schools          1/2/1-2/1-2   assumption: per cross-phase/performance/size/faith
                                         federation (~42 federated schools in all)
intake (class ``Intake``)  see class     rural-England prevalences (FSM ~10 %, SEN 10/5/2 %, ...)
=========================  ============  ==========================================================

The variance parameters are not published; they were chosen so that REML fits of the
paper's per-year models to the default study reproduce Tables 3 and 4 (see
``tests/test_calibration.py``). Tables 3-4 together fix the ratio of between- to
within-school variance of ``x'beta`` (about 0.65, hence the strong clustering of KS2, IDACI
and SEN in ``Intake``); the three variances then set the scale: total outcome variance
about 20 (sd 4.4). Population values: M0 school share 0.19, M1 PRV 0.34 (school) and 0.12
(pupil); ``truth["implied"]`` gives them per year for the realised schools.

The scenario knobs (all off by default; off, they leave the default study and its random
stream unchanged) make a staggered-adoption event study harder than the model above: effects
that differ by founding cohort, a national calendar trend, serially correlated school shocks
and federation-level deviations of the effect. ``truth["att"]`` gives the realised average
effect on the treated pupils, by founding cohort and year since founding, and its pupil- and
federation-weighted aggregates.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from scipy.special import expit, logit, ndtri

import bayesfed
from bayesfed.errors import BayesfedError
from bayesfed.inputs.schema import SEN_LEVELS
from bayesfed.store import write_json, write_with

#: Seed of the shipped study ``data/synthetic_study.parquet``. Chosen among seeds 1-20 as the
#: draw whose per-year REML M0/M1 summaries (school share, PRV per level, constant) are
#: closest to the Table 3-4 means; the federation estimates played no part in the choice.
DEFAULT_SEED = 7

#: Table 4 pupil coefficients (means over the six years), in Design coefficient names.
TABLE4_COEFFICIENTS = (
    ("fsm", -0.95),
    ("idaci", -3.57),
    ("male", -0.39),
    ("sen[school_action]", -3.33),
    ("sen[school_action_plus]", -3.53),
    ("sen[statemented]", -3.60),
    ("non_white_british", 0.0),
    ("ks2", 4.35),
)

#: Table 2 rural typology: (type, percent of federations, min and max secondary schools).
TABLE2_TYPOLOGY = (
    ("cross_phase", 38.7, 1, 1),
    ("performance", 12.9, 2, 2),
    ("size", 32.2, 1, 2),
    ("faith", 16.1, 1, 2),
)


@dataclass(frozen=True)
class Intake:
    """Pupil intake: prevalences and how strongly they cluster in schools.

    Pupils carry two latent standard-normal traits, deprivation ``D`` and attainment ``A``.
    Each is a school part plus a pupil part; a school's catchment deprivation ``z_j`` lowers
    ``A`` and raises ``D``, so intake differs between schools and the Table 4 predictors
    explain school-level variance.

    Attributes
    ----------
    school_share_deprivation : float
        Share of the variance of ``D`` between schools (0-1).
    school_share_attainment : float
        Share of the variance of ``A`` between schools (0-1), all of it through ``z_j``.
    attainment_on_deprivation : float
        Within-school correlation of ``A`` with ``D`` (negative).
    idaci_mean, idaci_logit_sd : float
        IDACI (share of income-deprived children, 0-1) is ``expit(logit(idaci_mean) +
        idaci_logit_sd * (0.9 D + noise))``, to 3 decimals as published; mean about 0.16,
        sd about 0.1.
    fsm_rate : float
        Share of pupils eligible for free school meals.
    fsm_on_deprivation : float
        Correlation of the FSM latent with ``D``.
    sen_rates : tuple of float
        Shares at school action, school action plus and statemented.
    sen_on_attainment : float
        Correlation of the SEN latent (low = more need) with ``A``.
    sen_school_sd : float
        Loading of a school's SEN identification propensity on the SEN latent.
    ks2_logit_mean, ks2_logit_sd, ks2_on_attainment : float
        KS2 share of maximum marks is ``expit(ks2_logit_mean + ks2_logit_sd * K)`` with
        ``K = ks2_on_attainment * A + noise`` (unit variance).
    ks2_max_marks : int
        Maximum KS2 English plus maths marks; the share is rounded to whole marks.
    ks2_national_mean : float
        National mean share of maximum marks; ``ks2`` is the share minus this (4 decimals).
    non_white_british_rate : float
        Share of pupils not White British (rural England).
    non_white_british_school_sd : float
        Between-school sd of the logit of that share.
    male_rate : float
        Share of boys.
    """

    school_share_deprivation: float = 0.55
    school_share_attainment: float = 0.6
    attainment_on_deprivation: float = -0.3
    idaci_mean: float = 0.14
    idaci_logit_sd: float = 0.75
    fsm_rate: float = 0.10
    fsm_on_deprivation: float = 0.6
    sen_rates: tuple[float, float, float] = (0.10, 0.05, 0.02)
    sen_on_attainment: float = 0.3
    sen_school_sd: float = 0.55
    ks2_logit_mean: float = 0.55
    ks2_logit_sd: float = 0.72
    ks2_on_attainment: float = 0.9
    ks2_max_marks: int = 200
    ks2_national_mean: float = 0.62
    non_white_british_rate: float = 0.05
    non_white_british_school_sd: float = 0.8
    male_rate: float = 0.5


@dataclass(frozen=True)
class SimConfig:
    """Design and true parameters of a synthetic federation study.

    Attributes
    ----------
    n_federations : int
        Number of federations; split over ``typology`` by Table 2 shares (largest remainder).
    matched_per_federation : int
        Matched non-federated schools per federation; each shares the federation's founding
        year and its schools' size distribution.
    pupils_per_school : float
        Mean GCSE cohort size (pupils) of a school; schools in or matched to ``size``
        federations have ``size_factor`` times this. Each school's mean varies by a
        log-normal factor (sd ``school_size_sd`` on the log scale); each cohort is Poisson.
    size_factor : float
        Cohort-size multiplier for ``size`` federations and their matches.
    school_size_sd : float
        Log-scale sd of school mean cohort sizes.
    years_before, years_after : int
        Cohorts from ``founding - years_before`` to ``founding + years_after`` (years).
    first_founding, last_founding : int
        Founding years are uniform on this inclusive range (calendar years).
    effect : tuple of float, length ``years_after + 1``
        True federation effect delta_k for years since founding k = 0, 1, ... (score points).
    pre_trend : float
        Pre-founding gap per year: delta_{-m} = m * pre_trend for m = 1..years_before
        (score points). Zero (no anticipation, parallel trends) by default.
    type_effect : tuple of (str, float)
        Extra effect, in every year since founding >= 0, for federated schools of a federation
        type (score points): heterogeneity by type. Empty (no heterogeneity) by default.
    cohort_slope : float
        Effect heterogeneity by founding cohort (score points per year since founding per
        founding year): a federated school founded in year e has the effect
        ``effect[k] + cohort_slope * (e - e_mid) * k`` at k >= 0 years since founding, with
        ``e_mid = (first_founding + last_founding) / 2``; later cohorts' effects grow faster.
        Zero (the same effects for every cohort) by default.
    calendar_trend : float
        National calendar trend (score points per year): every pupil of GCSE year t gains
        ``calendar_trend * (t - t_first)``, ``t_first = first_founding - years_before`` the
        study's first calendar year; part of the truth's ``cohort_effects``. Zero by default.
    shock_ar : float
        AR(1) correlation rho, ``|rho| < 1``, of a school's school-by-cohort shocks over its
        consecutive calendar years; each shock keeps the marginal sd ``sd_school_cohort``
        (see :func:`ar1_shocks`). Zero (independent shocks) by default.
    sd_federation_effect : float
        Sd of the federation deviations ``b_f ~ N(0, sd^2)`` of the effect, added to the
        outcome of a federation's schools at every k >= 0 years since founding (score
        points). Drawn after everything else, so the rest of the study is that of the same
        seed without them. Zero (no deviations, no draw) by default.
    sd_ks2_slope : float
        Sd of the schools' random KS2 slopes ``c_j`` (score points per KS2 unit), added to the
        fixed ``ks2`` coefficient: a pupil's score gains ``c_j * ks2``. Drawn after everything
        else (after the federation deviations), so the rest of the study is that of the same
        seed without them. Zero (no slopes, no draw) by default.
    cor_ks2_slope : float
        Correlation of a school's KS2 slope with its random intercept, in (-1, 1).
    sd_log_sigma : float
        Sd of the schools' log pupil sds around log ``sigma`` (log units): school j's pupil
        residuals have sd ``sigma * exp(omega_j)`` (a location-scale model). Drawn after
        everything else (after the KS2 slopes), so the rest of the study is that of the same
        seed without them. Zero (one pupil sd, no draw) by default.
    cor_log_sigma : float
        Correlation of a school's log pupil sd with its random intercept, in (-1, 1).
    typology : tuple of (str, float, int, int)
        Federation types: name, percentage of federations, min and max secondary schools
        (each federation's count is uniform on that range).
    intercept : float
        beta_0, expected score of a pupil with all predictors zero in a matched school.
    coefficients : tuple of (str, float)
        Pupil coefficients by Design coefficient name (score points per unit).
    sd_school : float
        tau, sd of school random intercepts (score points).
    sd_school_cohort : float
        omega, sd of school-by-cohort shocks (score points).
    sigma : float
        Pupil residual sd (score points).
    sd_cohort : float
        Sd of calendar-year (cohort) effects (score points).
    intake : Intake
        Pupil composition.
    """

    n_federations: int = 31
    matched_per_federation: int = 1
    pupils_per_school: float = 230.0
    size_factor: float = 0.55
    school_size_sd: float = 0.25
    years_before: int = 2
    years_after: int = 5
    first_founding: int = 2004
    last_founding: int = 2008
    effect: tuple[float, ...] = (0.32, 0.41, 0.49, 0.65, 0.81, 0.82)
    pre_trend: float = 0.0
    type_effect: tuple[tuple[str, float], ...] = ()
    cohort_slope: float = 0.0
    calendar_trend: float = 0.0
    shock_ar: float = 0.0
    sd_federation_effect: float = 0.0
    sd_ks2_slope: float = 0.0
    cor_ks2_slope: float = 0.0
    sd_log_sigma: float = 0.0
    cor_log_sigma: float = 0.0
    typology: tuple[tuple[str, float, int, int], ...] = TABLE2_TYPOLOGY
    intercept: float = 5.3
    coefficients: tuple[tuple[str, float], ...] = TABLE4_COEFFICIENTS
    sd_school: float = 1.45
    sd_school_cohort: float = 0.7
    sigma: float = 3.8
    sd_cohort: float = 0.1
    intake: Intake = field(default_factory=Intake)

    def __post_init__(self) -> None:
        if len(self.effect) != self.years_after + 1:
            raise BayesfedError(
                f"SimConfig: effect has {len(self.effect)} values but years_after="
                f"{self.years_after} needs {self.years_after + 1} (one per year 0..years_after)"
            )
        if self.first_founding > self.last_founding:
            raise BayesfedError("SimConfig: first_founding must not be after last_founding")
        if self.n_federations < 1 or self.matched_per_federation < 0:
            raise BayesfedError("SimConfig: need n_federations >= 1, matched_per_federation >= 0")
        if not -1.0 < self.shock_ar < 1.0:
            raise BayesfedError(f"SimConfig: shock_ar must be an AR(1) correlation in (-1, 1), "
                                f"got {self.shock_ar}")
        if not self.sd_federation_effect >= 0.0:
            raise BayesfedError(f"SimConfig: sd_federation_effect must be >= 0, "
                                f"got {self.sd_federation_effect}")
        if not self.sd_ks2_slope >= 0.0:
            raise BayesfedError(f"SimConfig: sd_ks2_slope must be >= 0, got {self.sd_ks2_slope}")
        if not -1.0 < self.cor_ks2_slope < 1.0:
            raise BayesfedError(f"SimConfig: cor_ks2_slope must be a correlation in (-1, 1), "
                                f"got {self.cor_ks2_slope}")
        if not self.sd_log_sigma >= 0.0:
            raise BayesfedError(f"SimConfig: sd_log_sigma must be >= 0, got {self.sd_log_sigma}")
        if not -1.0 < self.cor_log_sigma < 1.0:
            raise BayesfedError(f"SimConfig: cor_log_sigma must be a correlation in (-1, 1), "
                                f"got {self.cor_log_sigma}")

    @classmethod
    def national(cls) -> SimConfig:
        """A national-scale study: about 3,000 schools, 8 cohorts, 4.5 million pupil rows.

        Returns
        -------
        SimConfig
            1,266 federations (about 1.37 secondary schools each) plus one match each,
            214 pupils per cohort in a typical school (about 188 on average).
        """
        return cls(n_federations=1266, pupils_per_school=214.0)

    def delta(self) -> dict[int, float]:
        """True federation effect by years since founding, leads included.

        Returns
        -------
        dict of int -> float
            ``k -> delta_k`` for k = -years_before .. years_after (score points).
        """
        leads = {-m: m * self.pre_trend for m in range(self.years_before, 0, -1)}
        return leads | dict(enumerate(self.effect))


def type_counts(n_federations: int, typology: tuple[tuple[str, float, int, int], ...]) -> list[int]:
    """Split federations over types by their percentages (largest-remainder rounding).

    Parameters
    ----------
    n_federations : int
    typology : tuple of (str, float, int, int)
        Federation types: name, percentage of federations, min and max schools.

    Returns
    -------
    list of int, length len(typology)
        Counts summing to ``n_federations``.
    """
    shares = np.array([t[1] for t in typology], dtype=float)
    quota = n_federations * shares / shares.sum()
    counts = np.floor(quota).astype(int)
    order = np.argsort(-(quota - counts), kind="stable")
    counts[order[: n_federations - counts.sum()]] += 1
    return counts.tolist()


def schools_table(config: SimConfig, rng: np.random.Generator) -> pd.DataFrame:
    """Draw federations and schools: one row per school.

    Parameters
    ----------
    config : SimConfig
    rng : numpy Generator

    Returns
    -------
    DataFrame, one row per school
        ``school_id``, ``federation_id`` (None for matched), ``federation_type`` (None for
        matched), ``match_type`` (type of the federation, for sizes), ``federation`` (index
        0..n_federations-1 of the school's federation, or of the one it is matched to),
        ``federated``, ``founding_year``, ``mean_size`` (pupils per cohort).
    """
    counts = type_counts(config.n_federations, config.typology)
    fed_type = np.repeat([t[0] for t in config.typology], counts)
    lo = np.repeat([t[2] for t in config.typology], counts)
    hi = np.repeat([t[3] for t in config.typology], counts)
    n_fed = config.n_federations
    founding = rng.integers(config.first_founding, config.last_founding + 1, size=n_fed)
    n_secondary = rng.integers(lo, hi + 1)
    n_per_fed = n_secondary + config.matched_per_federation
    fed_of_school = np.repeat(np.arange(n_fed), n_per_fed)
    rank = np.arange(fed_of_school.size) - np.repeat(np.cumsum(n_per_fed) - n_per_fed, n_per_fed)
    federated = (rank < n_secondary[fed_of_school]).astype(np.int8)
    width = max(2, len(str(n_fed)))
    fed_labels = np.array([f"F{i + 1:0{width}d}" for i in range(n_fed)], dtype=object)
    n_schools = fed_of_school.size
    school_width = max(4, len(str(n_schools)))
    match_type = fed_type[fed_of_school]
    base = np.where(match_type == "size", config.size_factor, 1.0) * config.pupils_per_school
    return pd.DataFrame(
        {
            "school_id": [f"S{i + 1:0{school_width}d}" for i in range(n_schools)],
            "federation_id": np.where(federated == 1, fed_labels[fed_of_school], None),
            "federation_type": np.where(federated == 1, match_type.astype(object), None),
            "match_type": match_type,
            "federation": fed_of_school,
            "federated": federated,
            "founding_year": founding[fed_of_school].astype(np.int64),
            "mean_size": base * rng.lognormal(0.0, config.school_size_sd, size=n_schools),
        }
    )


def draw_intake(
    intake: Intake, z: np.ndarray, sen_school: np.ndarray, nwb_school: np.ndarray,
    rng: np.random.Generator,
) -> dict[str, np.ndarray]:
    """Draw the pupil predictors of Table 4.

    Parameters
    ----------
    intake : Intake
    z : ndarray, shape (n_pupils,)
        The pupil's school catchment deprivation (standard normal per school).
    sen_school : ndarray, shape (n_pupils,)
        The school's SEN identification propensity (standard normal per school).
    nwb_school : ndarray, shape (n_pupils,)
        The school's ethnic-mix deviation (standard normal per school).
    rng : numpy Generator

    Returns
    -------
    dict of str -> ndarray, each shape (n_pupils,)
        ``fsm``, ``idaci``, ``male``, ``sen``, ``non_white_british``, ``ks2``.
    """
    n = z.shape[0]
    noise = rng.standard_normal((7, n))
    s_d = np.sqrt(intake.school_share_deprivation)
    dep_pupil = noise[0]
    deprivation = s_d * z + np.sqrt(1.0 - s_d**2) * dep_pupil
    s_a = np.sqrt(intake.school_share_attainment)
    r = intake.attainment_on_deprivation
    attainment = -s_a * z + np.sqrt(1.0 - s_a**2) * (r * dep_pupil + np.sqrt(1 - r**2) * noise[1])
    idaci = expit(
        logit(intake.idaci_mean)
        + intake.idaci_logit_sd * (0.9 * deprivation + np.sqrt(1 - 0.81) * noise[2])
    )
    c = intake.fsm_on_deprivation
    fsm = c * deprivation + np.sqrt(1 - c**2) * noise[3] > ndtri(1.0 - intake.fsm_rate)
    a, b = intake.sen_on_attainment, intake.sen_school_sd
    sen_latent = a * attainment + b * sen_school + np.sqrt(1 - a**2 - b**2) * noise[4]
    cuts = ndtri(np.cumsum(intake.sen_rates[::-1]))  # statemented, +plus, +action
    sen_code = 3 - np.searchsorted(cuts, sen_latent)  # 0 none .. 3 statemented
    k = intake.ks2_on_attainment
    ks2_latent = k * attainment + np.sqrt(1 - k**2) * noise[5]
    marks = np.round(intake.ks2_max_marks
                     * expit(intake.ks2_logit_mean + intake.ks2_logit_sd * ks2_latent))
    p_nwb = expit(logit(intake.non_white_british_rate)
                  + intake.non_white_british_school_sd * nwb_school)
    return {
        "fsm": fsm.astype(np.int8),
        "idaci": np.round(idaci, 3),
        "male": (noise[6] < ndtri(intake.male_rate)).astype(np.int8),
        "sen": np.asarray(SEN_LEVELS, dtype=object)[sen_code],
        "non_white_british": (rng.random(n) < p_nwb).astype(np.int8),
        "ks2": np.round(marks / intake.ks2_max_marks - intake.ks2_national_mean, 4),
    }


def linear_predictor(config: SimConfig, pupils: dict[str, np.ndarray]) -> np.ndarray:
    """x'beta of each pupil under the true coefficients.

    Parameters
    ----------
    config : SimConfig
    pupils : dict of str -> ndarray, each shape (n_pupils,)
        Predictors as returned by :func:`draw_intake`.

    Returns
    -------
    ndarray, shape (n_pupils,)
        Score points.
    """
    total = np.zeros(pupils["ks2"].shape[0])
    for name, beta in config.coefficients:
        if name.startswith("sen["):
            total += beta * (pupils["sen"] == name[4:-1])
        else:
            total += beta * pupils[name]
    return total


def simulate(config: SimConfig, seed: int = DEFAULT_SEED) -> tuple[pd.DataFrame, dict]:
    """Simulate one study.

    Parameters
    ----------
    config : SimConfig
    seed : int
        Seed of ``numpy.random.default_rng``; the same seed gives the same study.

    Returns
    -------
    frame : DataFrame, one row per pupil
        Columns ``pupil_id``, ``school_id``, ``federation_id``, ``federation_type``,
        ``federated``, ``cohort``, ``founding_year``, ``years_since``, ``gcse_score``,
        ``fsm``, ``idaci``, ``male``, ``sen``, ``non_white_british``, ``ks2``.
    truth : dict
        JSON-ready true parameters (see :func:`truth_dict`) plus ``implied``, the variance
        components per years since founding (see :func:`implied_by_year`), ``att``, the
        realised average effect on the treated (see :func:`realised_att`),
        ``federation_deviations`` (see :func:`deviations_by_id`), ``ks2_slopes`` (school id
        -> its random KS2 slope, :func:`ks2_slopes`; all 0 by default) and
        ``log_sigma_deviations`` (school id -> ``omega_j``, its pupil sd being
        ``sigma * exp(omega_j)``, :func:`log_sigma_deviations`; all 0 by default).
    """
    rng = np.random.default_rng(seed)
    schools = schools_table(config, rng)
    n_schools = len(schools)
    school_effects = rng.standard_normal((4, n_schools))  # u, z, sen, nwb
    offsets = np.arange(-config.years_before, config.years_after + 1)
    years = np.arange(config.first_founding - config.years_before,
                      config.last_founding + config.years_after + 1)
    cohort_effect = (config.sd_cohort * rng.standard_normal(years.size)
                     + config.calendar_trend * (years - years[0]))
    sizes = rng.poisson(np.repeat(schools["mean_size"].to_numpy(), offsets.size))
    # one cell per school and cohort, by school then calendar year: its shock and its effects
    cell_school = np.repeat(np.arange(n_schools), offsets.size)
    cell_since = np.tile(offsets, n_schools)
    cell_cohort = schools["founding_year"].to_numpy()[cell_school] + cell_since
    cell_shock = ar1_shocks(rng.standard_normal(cell_school.size), cell_school, config.shock_ar,
                            config.sd_school_cohort)
    cell = np.repeat(np.arange(cell_school.size), sizes)
    school = cell_school[cell]
    pupils = draw_intake(config.intake, school_effects[1][school], school_effects[2][school],
                         school_effects[3][school], rng)
    xb = linear_predictor(config, pupils)
    noise = config.sigma * rng.standard_normal(school.size)
    deviation = federation_deviations(config, rng)  # last: the default stream is unchanged
    slope = ks2_slopes(config, school_effects[0], rng)  # after them, likewise
    log_sd = log_sigma_deviations(config, school_effects[0], rng)  # after them, likewise
    noise = noise * np.exp(log_sd[school])
    cell_extra = cell_heterogeneity(config, schools, deviation, cell_school, cell_since)
    delta = config.delta()
    cell_effect = (cohort_effect[cell_cohort - years[0]]
                   + schools["federated"].to_numpy()[cell_school]
                   * np.array([delta[k] for k in cell_since])
                   + cell_extra)
    score = (config.intercept + cell_effect[cell] + xb + slope[school] * pupils["ks2"]
             + config.sd_school * school_effects[0][school] + cell_shock[cell] + noise)
    frame = pupil_frame(schools, school, cell_cohort[cell], cell_since[cell], np.round(score, 2),
                        pupils)
    truth = truth_dict(config, seed, dict(zip(years.tolist(), cohort_effect.tolist())))
    return frame, truth | {
        "implied": implied_by_year(config, cell, cell_since, cell_effect, xb),
        "att": realised_att(config, treated_cells(schools, cell, cell_school, cell_since,
                                                  cell_extra)),
        "federation_deviations": deviations_by_id(config, schools, deviation),
        "ks2_slopes": dict(zip(schools["school_id"].tolist(), slope.tolist())),
        "log_sigma_deviations": dict(zip(schools["school_id"].tolist(), log_sd.tolist())),
    }


def ar1_shocks(z: np.ndarray, school: np.ndarray, rho: float, sd: float) -> np.ndarray:
    """Turn standard normals into stationary AR(1) shocks within each school.

    Parameters
    ----------
    z : ndarray, shape (n_cells,)
        Standard normals, one per school-by-cohort cell.
    school : ndarray of int, shape (n_cells,)
        School of each cell; cells are sorted by school, then by calendar year, and a
        school's cells are consecutive years.
    rho : float
        Lag-1 correlation of a school's shocks, ``|rho| < 1``.
    sd : float
        Marginal sd of every shock (score points).

    Returns
    -------
    ndarray, shape (n_cells,)
        ``w_1 = sd * z_1`` and ``w_t = rho * w_{t-1} + sqrt(1 - rho^2) * sd * z_t`` within
        each school (score points); exactly ``sd * z`` when ``rho = 0``.
    """
    shock = sd * z
    first = np.ones(z.size, dtype=bool)
    first[1:] = school[1:] != school[:-1]
    index = np.arange(z.size)
    position = index - np.maximum.accumulate(np.where(first, index, 0))
    innovation = np.sqrt(1.0 - rho**2) * sd
    for step in range(1, int(position.max(initial=0)) + 1):
        at = np.flatnonzero(position == step)
        shock[at] = rho * shock[at - 1] + innovation * z[at]
    return shock


def federation_deviations(config: SimConfig, rng: np.random.Generator) -> np.ndarray:
    """Draw the federation deviations ``b_f`` of the effect.

    Parameters
    ----------
    config : SimConfig
    rng : numpy Generator
        Used only when ``sd_federation_effect > 0``.

    Returns
    -------
    ndarray, shape (n_feds,)
        ``b_f ~ N(0, sd_federation_effect^2)`` by federation index, n_feds =
        ``config.n_federations`` (score points); zeros without a draw when the sd is zero.
    """
    if config.sd_federation_effect > 0:
        return config.sd_federation_effect * rng.standard_normal(config.n_federations)
    return np.zeros(config.n_federations)


def ks2_slopes(config: SimConfig, intercept_z: np.ndarray, rng: np.random.Generator
               ) -> np.ndarray:
    """Draw the schools' random KS2 slopes ``c_j``.

    Parameters
    ----------
    config : SimConfig
    intercept_z : ndarray, shape (n_schools,)
        The schools' standardised random intercepts (the intercept is ``sd_school`` times it).
    rng : numpy Generator
        Used only when ``sd_ks2_slope > 0``.

    Returns
    -------
    ndarray, shape (n_schools,)
        ``c_j = sd (r z_j + sqrt(1 - r^2) w_j)``, ``w_j`` standard normal, ``r`` =
        ``cor_ks2_slope``: correlation ``r`` with the intercept (score points per KS2 unit);
        zeros without a draw when the sd is zero.
    """
    if config.sd_ks2_slope > 0:
        r = config.cor_ks2_slope
        w = rng.standard_normal(intercept_z.size)
        return config.sd_ks2_slope * (r * intercept_z + np.sqrt(1 - r**2) * w)
    return np.zeros(intercept_z.size)


def log_sigma_deviations(config: SimConfig, intercept_z: np.ndarray,
                         rng: np.random.Generator) -> np.ndarray:
    """Draw the schools' log pupil-sd deviations ``omega_j`` (a school's pupils' residual
    sd is ``sigma * exp(omega_j)``: ``sigma`` is the median school's).

    Parameters
    ----------
    config : SimConfig
    intercept_z : ndarray, shape (n_schools,)
        The schools' standardised random intercepts.
    rng : numpy Generator
        Used only when ``sd_log_sigma > 0``.

    Returns
    -------
    ndarray, shape (n_schools,)
        ``sd (r z_j + sqrt(1 - r^2) w_j)``, ``w_j`` standard normal, ``r`` =
        ``cor_log_sigma`` (log units); zeros without a draw when the sd is zero.
    """
    if config.sd_log_sigma > 0:
        r = config.cor_log_sigma
        w = rng.standard_normal(intercept_z.size)
        return config.sd_log_sigma * (r * intercept_z + np.sqrt(1 - r**2) * w)
    return np.zeros(intercept_z.size)


def cell_heterogeneity(
    config: SimConfig, schools: pd.DataFrame, deviation: np.ndarray, cell_school: np.ndarray,
    cell_since: np.ndarray,
) -> np.ndarray:
    """Each cell's federation effect beyond ``delta_k``: by founding cohort, type, federation.

    Parameters
    ----------
    config : SimConfig
    schools : DataFrame
        From :func:`schools_table`.
    deviation : ndarray, shape (n_feds,)
        ``b_f`` by federation index, from :func:`federation_deviations` (score points).
    cell_school : ndarray of int, shape (n_cells,)
        Row of ``schools`` of each cell.
    cell_since : ndarray of int, shape (n_cells,)
        Years since founding k of each cell.

    Returns
    -------
    ndarray, shape (n_cells,)
        For a federated school's cell at k >= 0: ``cohort_slope * (e - e_mid) * k`` (e its
        founding year) plus its type's ``type_effect`` plus its federation's ``b_f``; zero
        for every other cell (score points).
    """
    e_mid = (config.first_founding + config.last_founding) / 2
    extra = dict(config.type_effect)
    bonus = np.array([extra.get(k, 0.0) if isinstance(k, str) else 0.0
                      for k in schools["federation_type"]])
    per_school = bonus + deviation[schools["federation"].to_numpy()]
    founding = schools["founding_year"].to_numpy()[cell_school]
    treated = (schools["federated"].to_numpy()[cell_school] == 1) & (cell_since >= 0)
    return treated * (config.cohort_slope * (founding - e_mid) * cell_since
                      + per_school[cell_school])


def treated_cells(
    schools: pd.DataFrame, cell: np.ndarray, cell_school: np.ndarray, cell_since: np.ndarray,
    cell_extra: np.ndarray,
) -> pd.DataFrame:
    """The federated school-by-cohort cells from founding on that hold pupils.

    Parameters
    ----------
    schools : DataFrame
        From :func:`schools_table`.
    cell : ndarray of int, shape (n_pupils,)
        School-cohort cell of each pupil.
    cell_school, cell_since : ndarray of int, shape (n_cells,)
        Row of ``schools`` and years since founding of each cell.
    cell_extra : ndarray, shape (n_cells,)
        Effect beyond ``delta_k``, from :func:`cell_heterogeneity` (score points).

    Returns
    -------
    DataFrame, one row per federated cell with k >= 0 and at least one pupil
        ``e`` (founding year), ``k`` (years since founding), ``federation`` (index),
        ``n`` (pupils), ``extra`` (score points).
    """
    n = np.bincount(cell, minlength=cell_school.size)
    keep = (schools["federated"].to_numpy()[cell_school] == 1) & (cell_since >= 0) & (n > 0)
    rows = cell_school[keep]
    return pd.DataFrame({
        "e": schools["founding_year"].to_numpy()[rows],
        "k": cell_since[keep],
        "federation": schools["federation"].to_numpy()[rows],
        "n": n[keep],
        "extra": cell_extra[keep],
    })


def realised_att(config: SimConfig, cells: pd.DataFrame) -> dict:
    """The realised average effect on the treated, by cohort and year, and its aggregates.

    An effect is ``effect[k]`` plus the mean of the cells' ``extra`` (so, with every knob
    off, exactly ``effect[k]``). A federation's effect at k is constant over its schools.

    Parameters
    ----------
    config : SimConfig
    cells : DataFrame
        From :func:`treated_cells`.

    Returns
    -------
    dict
        ``by_cohort`` (``{str(e): {str(k): ATT(e, k)}}``, pupil-weighted within a founding
        cohort e, for each k at which e has federated pupils); ``pupils`` and
        ``federations`` (``{str(k): ATT(k)}``, the mean over federated pupils, or over
        federations with federated pupils, at k); ``weights`` (``{"pupils" | "federations":
        {str(k): {str(e): share}}}``, the cohort shares behind them, summing to 1 per k);
        ``average`` (``{"pupils" | "federations": mean of ATT(k) over k}``); ``leads``
        (``{str(k): delta_k - delta_{-1}}`` for k = -years_before..-2). Score points.
    """
    effect = dict(enumerate(config.effect))

    def plus_effect(extra: pd.Series) -> pd.Series:
        return extra + extra.index.get_level_values("k").map(effect).to_numpy()

    cells = cells.assign(n_extra=cells["n"] * cells["extra"])
    by_cohort = cells.groupby(["e", "k"])[["n", "n_extra"]].sum()
    by_year = cells.groupby("k")[["n", "n_extra"]].sum()
    federations = cells.drop_duplicates(["federation", "k"])
    att = {
        "pupils": plus_effect(by_year["n_extra"] / by_year["n"]),
        "federations": plus_effect(federations.groupby("k")["extra"].mean()),
    }
    weights = {
        "pupils": by_cohort["n"].div(by_cohort["n"].groupby(level="k").sum(), level="k"),
        "federations": federations.groupby(["e", "k"]).size().div(
            federations.groupby("k").size(), level="k"),
    }
    delta = config.delta()
    return {
        "by_cohort": nested(plus_effect(by_cohort["n_extra"] / by_cohort["n"])),
        **{name: {str(k): float(v) for k, v in values.items()} for name, values in att.items()},
        "weights": {name: nested(w.swaplevel().sort_index()) for name, w in weights.items()},
        "average": {name: float(values.mean()) for name, values in att.items()},
        "leads": {str(k): delta[k] - delta[-1] for k in range(-config.years_before, -1)},
    }


def nested(series: pd.Series) -> dict[str, dict[str, float]]:
    """A Series with a two-level index as ``{str(outer): {str(inner): value}}``."""
    out: dict[str, dict[str, float]] = {}
    for (outer, inner), value in series.items():
        out.setdefault(str(outer), {})[str(inner)] = float(value)
    return out


def deviations_by_id(config: SimConfig, schools: pd.DataFrame, deviation: np.ndarray) -> dict:
    """The federation deviations by ``federation_id``, for the truth file.

    Parameters
    ----------
    config : SimConfig
    schools : DataFrame
        From :func:`schools_table`.
    deviation : ndarray, shape (n_feds,)
        ``b_f`` by federation index, from :func:`federation_deviations` (score points).

    Returns
    -------
    dict of str -> float
        ``federation_id -> b_f`` for every federation with federated schools; empty when
        ``sd_federation_effect`` is zero.
    """
    if config.sd_federation_effect == 0:
        return {}
    federated = schools[schools["federated"] == 1].drop_duplicates("federation")
    return dict(zip(federated["federation_id"], deviation[federated["federation"]].tolist()))


def implied_by_year(
    config: SimConfig, cell: np.ndarray, cell_since: np.ndarray, cell_effect: np.ndarray,
    xb: np.ndarray,
) -> dict[str, dict[str, float]]:
    """Variance components the per-year models imply for this study's schools and pupils.

    For the pupils ``k`` years from founding (one cohort per school), the school variance of
    M2 is ``tau^2 + omega^2``; M1 adds the spread over schools of the calendar-year and
    federation effects; M0 also the spread of school means of ``x'beta``. The pupil variance
    of M1 and M2 is ``sigma^2``; M0 adds the pooled within-school variance of ``x'beta``.
    Spreads are population variances (ddof 0) over this study's schools.

    Also M1's Rights & Sterba parts (:func:`bayesfed.posterior.partition.decomposition_levels`)
    at the true coefficients: ``f1_m1``, the pooled within-school variance of ``x'beta``, and
    ``f2_m1``, the pupil-weighted variance of its school means (both over the pupils,
    denominator ``n - 1``, as bayesfed computes them from the data), and
    ``r2_within_m1`` = f1 / (f1 + sigma^2), ``r2_between_m1`` = f2 / (f2 + var_school_m1).

    Parameters
    ----------
    config : SimConfig
    cell : ndarray of int, shape (n_pupils,)
        School-cohort cell of each pupil.
    cell_since : ndarray of int, shape (n_cells,)
        Years since founding of each cell.
    cell_effect : ndarray, shape (n_cells,)
        Calendar-year plus federation effect of each cell (score points).
    xb : ndarray, shape (n_pupils,)
        ``x'beta`` of each pupil (score points).

    Returns
    -------
    dict
        ``str(k) -> {var_school_m0, var_school_m1, var_school_m2, var_pupil_m0,
        var_pupil_m1, vpc_m0, prv_school, prv_pupil, f1_m1, f2_m1, r2_within_m1,
        r2_between_m1}`` (score points squared; shares 0-1).
    """
    n = np.bincount(cell, minlength=cell_since.size)
    mean = np.bincount(cell, weights=xb, minlength=n.size) / np.maximum(n, 1)
    within = np.bincount(cell, weights=xb**2, minlength=n.size) - n * mean**2
    resid = config.sd_school**2 + config.sd_school_cohort**2
    out = {}
    for k in range(-config.years_before, config.years_after + 1):
        keep = (cell_since == k) & (n > 0)
        s1 = resid + float(np.var(cell_effect[keep]))
        s0 = resid + float(np.var(cell_effect[keep] + mean[keep]))
        p1 = config.sigma**2
        p0 = p1 + float(within[keep].sum() / n[keep].sum())
        pupils = n[keep].sum()
        # exactly rounded sums (math.fsum), not BLAS's dot, whose order of summation depends on
        # the CPU: the shipped truth file is reproduced to the bit on any machine (a test)
        grand = math.fsum(n[keep] * mean[keep]) / pupils
        f1 = float(within[keep].sum() / (pupils - 1))
        f2 = math.fsum(n[keep] * (mean[keep] - grand) ** 2) / (pupils - 1)
        out[str(k)] = {
            "var_school_m0": s0, "var_school_m1": s1, "var_school_m2": resid,
            "var_pupil_m0": p0, "var_pupil_m1": p1, "vpc_m0": s0 / (s0 + p0),
            "prv_school": 1 - s1 / s0, "prv_pupil": 1 - p1 / p0,
            "f1_m1": f1, "f2_m1": f2, "r2_within_m1": f1 / (f1 + p1),
            "r2_between_m1": f2 / (f2 + s1),
        }
    return out


def pupil_frame(
    schools: pd.DataFrame, school: np.ndarray, cohort: np.ndarray, since: np.ndarray,
    score: np.ndarray, pupils: dict[str, np.ndarray],
) -> pd.DataFrame:
    """Assemble the shipped pupil table (column order and types of the schema).

    Parameters
    ----------
    schools : DataFrame
        From :func:`schools_table`.
    school : ndarray of int, shape (n_pupils,)
        Row of ``schools`` of each pupil.
    cohort, since : ndarray of int, shape (n_pupils,)
        GCSE year and years since founding.
    score : ndarray, shape (n_pupils,)
        GCSE score (score points, 2 decimals).
    pupils : dict of str -> ndarray
        Predictors from :func:`draw_intake`.

    Returns
    -------
    DataFrame
    """
    n = school.size
    digits = len(str(n))
    pupil_id = pc.binary_join_element_wise(
        "P", pc.utf8_lpad(pa.array(np.arange(1, n + 1)).cast(pa.string()), digits, "0"), ""
    )

    def school_level(column: str) -> pa.Array:
        labels = pa.Array.from_pandas(schools[column]).cast(pa.string())
        return labels.take(pa.array(school))

    table = pa.table(
        {
            "pupil_id": pupil_id,
            "school_id": school_level("school_id"),
            "federation_id": school_level("federation_id"),
            "federation_type": school_level("federation_type"),
            "federated": schools["federated"].to_numpy()[school],
            "cohort": cohort.astype(np.int64),
            "founding_year": (cohort - since).astype(np.int64),
            "years_since": since.astype(np.int64),
            "gcse_score": score,
            "fsm": pupils["fsm"],
            "idaci": pupils["idaci"],
            "male": pupils["male"],
            "sen": pa.array(pupils["sen"], type=pa.string()),
            "non_white_british": pupils["non_white_british"],
            "ks2": pupils["ks2"],
        }
    )
    return table.to_pandas()


def truth_dict(config: SimConfig, seed: int, cohort_effects: dict[int, float]) -> dict:
    """The true parameters as a JSON-ready dict.

    Parameters
    ----------
    config : SimConfig
    seed : int
    cohort_effects : dict of int -> float
        Calendar-year effects gamma_t (score points).

    Returns
    -------
    dict
        ``intercept``, ``coefficients`` (name -> value), ``sd_school``, ``sd_school_cohort``,
        ``sigma``, ``var_school`` (tau^2 + omega^2, the school variance a single-cohort fit
        of M2 estimates), ``var_pupil`` (sigma^2), ``cohort_effects`` (year -> value),
        ``delta`` (years since founding, "-2".."5", -> value), ``config``, ``seed``,
        ``bayesfed_version``.
    """
    return {
        "intercept": config.intercept,
        "coefficients": dict(config.coefficients),
        "sd_school": config.sd_school,
        "sd_school_cohort": config.sd_school_cohort,
        "sigma": config.sigma,
        "var_school": config.sd_school**2 + config.sd_school_cohort**2,
        "var_pupil": config.sigma**2,
        "cohort_effects": {str(t): v for t, v in cohort_effects.items()},
        "delta": {str(k): v for k, v in config.delta().items()},
        "config": asdict(config),
        "seed": seed,
        "bayesfed_version": bayesfed.__version__,
    }


def truth_path(path: str | Path) -> Path:
    """Where the truth JSON of a study file lives: ``X.parquet -> X.truth.json``."""
    return Path(path).with_suffix(".truth.json")


def write_study(df: pd.DataFrame, truth: dict, path: str | Path) -> Path:
    """Write a study as Parquet and its truth as JSON beside it, both atomically.

    The same frame and truth give byte-identical files (no timestamps; sorted JSON keys).

    Parameters
    ----------
    df : DataFrame
        From :func:`simulate`.
    truth : dict
        From :func:`simulate`.
    path : str or Path
        The Parquet file (missing parent folders are created); the truth goes to
        ``path.with_suffix('.truth.json')``.

    Returns
    -------
    Path
        The truth JSON's path.
    """
    table = pa.Table.from_pandas(df, preserve_index=False)
    write_with(path, lambda tmp: pq.write_table(table, tmp, compression="zstd"))
    return write_json(truth_path(path), truth)
