# Per-year M2 (paper Table 5) with lme4 (REML) and brms (default NUTS): timings, estimates, ESS.
#
# Usage: Rscript bench/r/m2_peers.R DATA.csv OUT.json [SEED] [PEERS]
#   DATA.csv  one year's pupils, the shipped study's column names (bench/peers.py writes it)
#   OUT.json  where the results go (one object per peer, seconds in *_s fields)
#   SEED      brms/Stan seed (default 1)
#   PEERS     comma-separated subset of "lme4,brms" (default both)
#
# The model: gcse_score ~ fsm + idaci + male + sen + non_white_british + ks2 + federated
# + (1 | school_id), sen a factor with reference level "none" (as bayesfed's spec codes it).
# brms runs with its defaults (flat priors on the coefficients, student_t(3, ., .) on the
# intercept and the sds, non-centred school intercepts), 4 chains x 1,000 draws after 1,000
# warm-up, 2 chains at a time (cores = 2). Compilation and sampling are timed apart: brm() with
# chains = 0 compiles only, update(recompile = FALSE) samples the compiled model.
# Times are wall-clock seconds (proc.time()[["elapsed"]]).

args <- commandArgs(trailingOnly = TRUE)
if (length(args) < 2) stop("usage: Rscript m2_peers.R DATA.csv OUT.json [SEED] [PEERS]")
data_path <- args[[1]]
out_path <- args[[2]]
seed <- if (length(args) >= 3) as.integer(args[[3]]) else 1L
peers <- if (length(args) >= 4) strsplit(args[[4]], ",")[[1]] else c("lme4", "brms")

now <- function() proc.time()[["elapsed"]]

SEN_LEVELS <- c("none", "school_action", "school_action_plus", "statemented")
FORMULA <- gcse_score ~ fsm + idaci + male + sen + non_white_british + ks2 + federated +
  (1 | school_id)

read_pupils <- function(path) {
  d <- utils::read.csv(path, colClasses = c(school_id = "character", sen = "character"))
  d$sen <- factor(d$sen, levels = SEN_LEVELS)
  if (anyNA(d$sen)) stop("sen has values outside ", paste(SEN_LEVELS, collapse = ", "))
  d
}

fit_lme4 <- function(d) {
  suppressMessages(library(lme4))
  start <- now()
  fit <- lme4::lmer(FORMULA, data = d, REML = TRUE)
  seconds <- now() - start
  vc <- as.data.frame(lme4::VarCorr(fit))
  coefs <- summary(fit)$coefficients
  list(
    peer = "lme4", version = as.character(utils::packageVersion("lme4")),
    fit_s = seconds,
    federated = unname(coefs["federated", "Estimate"]),
    federated_se = unname(coefs["federated", "Std. Error"]),
    sd_school = vc$sdcor[vc$grp == "school_id"],
    sigma = vc$sdcor[vc$grp == "Residual"],
    converged = identical(as.integer(fit@optinfo$conv$opt), 0L),
    messages = as.list(fit@optinfo$conv$lme4$messages)
  )
}

# Debian's r-cran-bh is an empty stub (Boost is in /usr/include from libboost-dev), and rstan
# refuses to compile when BH has no include folder: point rstan at the system headers.
use_system_boost <- function() {
  if (!nzchar(rstan::rstan_options("boost_lib")) && dir.exists("/usr/include/boost")) {
    rstan::rstan_options(boost_lib = "/usr/include")
  }
}

fit_brms <- function(d, seed) {
  suppressMessages(library(brms))
  use_system_boost()
  start <- now()
  empty <- brms::brm(FORMULA, data = d, chains = 0, silent = 2, refresh = 0)
  compiled <- now()
  fit <- stats::update(empty, recompile = FALSE, chains = 4, cores = 2, iter = 2000,
                       warmup = 1000, seed = seed, silent = 2, refresh = 0)
  done <- now()
  elapsed <- rstan::get_elapsed_time(fit$fit)  # per chain, warm-up and sampling, seconds
  draws <- posterior::as_draws_df(fit)
  names <- posterior::variables(draws)
  params <- names[grepl("^(b_|sd_|sigma$|r_)", names)]  # coefficients, sds, school intercepts
  summ <- posterior::summarise_draws(posterior::subset_draws(draws, variable = params),
                                     "mean", "rhat", "ess_bulk")
  row <- function(name) summ[summ$variable == name, ]
  list(
    peer = "brms", version = as.character(utils::packageVersion("brms")),
    rstan_version = as.character(utils::packageVersion("rstan")),
    compile_s = compiled - start,
    update_s = done - compiled,
    # Stan's own time in the chains, 4 chains run 2 at a time: the sampler's seconds
    stan_chain_s = sum(elapsed),
    sampling_s = sum(elapsed) / min(4, 2),
    federated = row("b_federated")$mean,
    ess_federated = row("b_federated")$ess_bulk,
    sd_school = row("sd_school_id__Intercept")$mean,
    ess_sd_school = row("sd_school_id__Intercept")$ess_bulk,
    sigma = row("sigma")$mean,
    ess_sigma = row("sigma")$ess_bulk,
    max_rhat = max(summ$rhat),
    divergences = rstan::get_num_divergent(fit$fit)
  )
}

start <- now()
pupils <- read_pupils(data_path)
read_s <- now() - start
results <- list(n_pupils = nrow(pupils), n_schools = length(unique(pupils$school_id)),
                read_s = read_s, r_version = R.version.string, peers = list())
if ("lme4" %in% peers) results$peers$lme4 <- fit_lme4(pupils)
if ("brms" %in% peers) results$peers$brms <- fit_brms(pupils, seed)
jsonlite::write_json(results, out_path, auto_unbox = TRUE, digits = NA, pretty = TRUE)
