# brms fits of bayesfed's two-level extensions to its design columns, with bayesfed's priors
# where brms can state them (bench/location_scale_agreement.py, bench/random_slopes_agreement.py).
# Usage: Rscript brms_school_variation.R DATA.csv PRIORS.json OUT.json MODE [SLOPE]
#   DATA has y, school, x1..xp; MODE "scale": bf(y ~ x + (1 | p | school),
#   sigma ~ 1 + (1 | p | school)); MODE "slope": y ~ x + (1 + SLOPE | school).
#   PRIORS: b_mu, b_sd (per x), intercept_mu, intercept_sd, sd_school, sd_slope,
#   log_sigma_mu, log_sigma_sd, sigma_sd (HalfNormal scale of sigma, mode "slope"),
#   sd_log_sigma, eta.
# Writes each parameter's posterior draws summary (mean, sd, mcse), the seconds to compile and
# to sample, and the brms version.
suppressPackageStartupMessages({library(brms); library(jsonlite); library(posterior)})
# Debian's r-cran-bh is an empty shell over the system's Boost (libboost-dev), where rstan does
# not look: point it there (https://github.com/eddelbuettel/bh/issues/94)
if (!nzchar(system.file("include", package = "BH"))) rstan::rstan_options(boost_lib = "/usr/include")
args <- commandArgs(trailingOnly = TRUE)
d <- read.csv(args[1])
p <- fromJSON(args[2])
mode <- args[4]
xs <- grep("^x[0-9]+$", names(d), value = TRUE)
fixed <- paste("y ~", paste(xs, collapse = " + "))
priors <- c(
  do.call(c, lapply(seq_along(xs), function(k)
    set_prior(sprintf("normal(%.17g, %.17g)", p$b_mu[k], p$b_sd[k]), class = "b", coef = xs[k]))),
  set_prior(sprintf("normal(%.17g, %.17g)", p$intercept_mu, p$intercept_sd), class = "Intercept"),
  set_prior(sprintf("normal(0, %.17g)", p$sd_school), class = "sd", group = "school",
            coef = "Intercept"),
  set_prior(sprintf("lkj(%.17g)", p$eta), class = "cor"))
if (mode == "scale") {
  f <- bf(as.formula(paste(fixed, "+ (1 | p | school)")), sigma ~ 1 + (1 | p | school))
  priors <- c(priors,
    set_prior(sprintf("normal(%.17g, %.17g)", p$log_sigma_mu, p$log_sigma_sd),
              class = "Intercept", dpar = "sigma"),
    set_prior(sprintf("normal(0, %.17g)", p$sd_log_sigma), class = "sd", group = "school",
              dpar = "sigma"))
} else {
  slope <- args[5]
  f <- bf(as.formula(paste(fixed, "+ (1 +", slope, "| school)")))
  priors <- c(priors,
    set_prior(sprintf("normal(0, %.17g)", p$sd_slope), class = "sd", group = "school",
              coef = slope),
    set_prior(sprintf("normal(0, %.17g)", p$sigma_sd), class = "sigma"))
}
t0 <- proc.time()[["elapsed"]]
fit0 <- brm(f, data = d, prior = priors, chains = 0, silent = 2, refresh = 0)
compile <- proc.time()[["elapsed"]] - t0
t0 <- proc.time()[["elapsed"]]
fit <- update(fit0, chains = 4, cores = 2, iter = 2000, warmup = 1000, seed = 1, refresh = 0,
              silent = 2)
seconds <- proc.time()[["elapsed"]] - t0
draws <- as_draws_df(fit)
keep <- grep("^(b_|sd_|cor_|sigma$)", names(draws), value = TRUE)
s <- summarise_draws(subset_draws(draws, variable = keep), "mean", "sd", "mcse_mean", "rhat",
                     "ess_bulk")
np <- nuts_params(fit)
out <- list(brms = as.character(packageVersion("brms")), compile_seconds = compile,
            seconds = seconds,
            divergences = sum(np$Value[np$Parameter == "divergent__"]),
            params = setNames(lapply(seq_len(nrow(s)), function(i) as.list(s[i, -1])),
                              s$variable))
if (mode == "scale") {
  # the median school's sd, exp of the log-sd intercept, as bayesfed's sigma
  v <- exp(draws$b_sigma_Intercept)
  out$params$sigma <- list(mean = mean(v), sd = sd(v),
                           mcse_mean = mcse_mean(v), rhat = rhat(v), ess_bulk = ess_bulk(v))
}
writeLines(toJSON(out, auto_unbox = TRUE, digits = NA), args[3])
