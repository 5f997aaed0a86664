# Nakagawa's R-squared of lme4 fits (performance::r2_nakagawa), for bench/r2_agreement.py.
#
# Usage: Rscript bench/r/r2_nakagawa.R DATA.csv OUT.json [SLOPES]
#   DATA.csv  columns fit (one label per model and year), y, school and x1..xp: each fit's
#             pupils with bayesfed's own design columns (treatment-coded already), blank where
#             a fit has fewer columns than p
#   OUT.json  per fit: lme4's REML fixed effects (x1..xp order), sd_school, sigma, and
#             performance's marginal and conditional R-squared; with SLOPES also the random
#             slopes' sds (sd_slope, SLOPES order) and the correlation matrix (cor, intercept
#             first)
#   SLOPES    comma-separated columns with a random slope by school, e.g. x8
#
# Each fit is y ~ x1 + ... + xk + (1 | school) by REML, k its number of columns, or
# (1 + SLOPES | school).

args <- commandArgs(trailingOnly = TRUE)
if (!(length(args) %in% 2:3)) stop("usage: Rscript r2_nakagawa.R DATA.csv OUT.json [SLOPES]")
slopes <- if (length(args) == 3) strsplit(args[[3]], ",")[[1]] else character(0)
suppressMessages({library(lme4); library(performance); library(jsonlite)})
d <- utils::read.csv(args[[1]], colClasses = c(fit = "character", school = "character"))
out <- list()
for (label in unique(d$fit)) {
  one <- d[d$fit == label, ]
  xs <- grep("^x[0-9]+$", names(one), value = TRUE)
  xs <- xs[colSums(!is.na(one[xs])) == nrow(one)]
  rhs <- if (length(xs)) paste(xs, collapse = " + ") else "1"
  re <- paste(c("1", slopes), collapse = " + ")
  fit <- lme4::lmer(stats::as.formula(paste("y ~", rhs, "+ (", re, "| school)")), data = one,
                    REML = TRUE)
  vc <- as.data.frame(lme4::VarCorr(fit))
  r2 <- performance::r2_nakagawa(fit)
  if (length(slopes)) {
    school_vc <- attr(lme4::VarCorr(fit)$school, "correlation")
    sds <- attr(lme4::VarCorr(fit)$school, "stddev")
    extra <- list(sd_slope = unname(sds[slopes]), cor = unname(school_vc))
  } else {
    extra <- list()
  }
  out[[label]] <- c(extra, list(
    beta = unname(lme4::fixef(fit)[xs]),
    sd_school = vc$sdcor[vc$grp == "school" & vc$var1 == "(Intercept)" & is.na(vc$var2)],
    sigma = vc$sdcor[vc$grp == "Residual"],
    r2_marginal = unname(r2$R2_marginal), r2_conditional = unname(r2$R2_conditional),
    lme4 = as.character(utils::packageVersion("lme4")),
    performance = as.character(utils::packageVersion("performance"))))
}
writeLines(jsonlite::toJSON(out, auto_unbox = TRUE, digits = NA), args[[2]])
