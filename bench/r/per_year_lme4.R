# lme4 REML fits of the per-year models, timed, for bench/job_speed.py.
#
# Usage: Rscript bench/r/per_year_lme4.R DATA.csv OUT.json
#   DATA.csv  columns fit (one label per model and year), y, school and x1..xp: each fit's
#             pupils with bayesfed's own design columns (treatment-coded already), blank where
#             a fit has fewer columns than p (bench/r2_agreement.py's layout)
#   OUT.json  total_s (every fit, wall seconds, reading the CSV excluded), and per fit its
#             seconds, sd_school, sigma and whether lme4 reported convergence
#
# Each fit is y ~ x1 + ... + xk + (1 | school) by REML, k its number of columns.

args <- commandArgs(trailingOnly = TRUE)
if (length(args) != 2) stop("usage: Rscript per_year_lme4.R DATA.csv OUT.json")
suppressMessages({library(lme4); library(jsonlite)})
now <- function() proc.time()[["elapsed"]]
d <- utils::read.csv(args[[1]], colClasses = c(fit = "character", school = "character"))
out <- list()
start <- now()
for (label in unique(d$fit)) {
  one <- d[d$fit == label, ]
  xs <- grep("^x[0-9]+$", names(one), value = TRUE)
  xs <- xs[colSums(!is.na(one[xs])) == nrow(one)]
  rhs <- if (length(xs)) paste(xs, collapse = " + ") else "1"
  t0 <- now()
  fit <- lme4::lmer(stats::as.formula(paste("y ~", rhs, "+ (1 | school)")), data = one,
                    REML = TRUE)
  vc <- as.data.frame(lme4::VarCorr(fit))
  out[[label]] <- list(
    seconds = now() - t0,
    sd_school = vc$sdcor[vc$grp == "school"], sigma = vc$sdcor[vc$grp == "Residual"],
    converged = identical(as.integer(fit@optinfo$conv$opt), 0L))
}
result <- list(total_s = now() - start, lme4 = as.character(utils::packageVersion("lme4")),
               fits = out)
writeLines(jsonlite::toJSON(result, auto_unbox = TRUE, digits = NA), args[[2]])
