# lme4 fits of a random-slope model to bayesfed's design columns (bench/random_slopes_agreement.py).
# Usage: Rscript random_slopes.R DATA.csv OUT.json; DATA has y, school, x1..xp; the random slope
# is on x<k> for k the argument --slope (default 1). Writes REML and ML estimates, ML log-lik.
suppressPackageStartupMessages({library(lme4); library(jsonlite)})
args <- commandArgs(trailingOnly = TRUE)
d <- read.csv(args[1])
slope <- args[3]
xs <- grep("^x[0-9]+$", names(d), value = TRUE)
f <- as.formula(paste("y ~", paste(xs, collapse = " + "), "+ (1 +", slope, "| school)"))
one <- function(reml) {
  t0 <- proc.time()[["elapsed"]]
  fit <- lmer(f, data = d, REML = reml,
              control = lmerControl(optimizer = "bobyqa", calc.derivs = TRUE))
  secs <- proc.time()[["elapsed"]] - t0
  vc <- VarCorr(fit)$school
  list(seconds = secs, beta = unname(fixef(fit)), sd = unname(attr(vc, "stddev")),
       cor = attr(vc, "correlation")[1, 2], sigma = sigma(fit),
       loglik = as.numeric(logLik(fit)), converged = is.null(fit@optinfo$conv$lme4$messages))
}
out <- list(lme4 = as.character(packageVersion("lme4")), reml = one(TRUE), ml = one(FALSE))
writeLines(toJSON(out, auto_unbox = TRUE, digits = NA), args[2])
