# The event-time model by REML with lme4: timings and estimates, for bench/event_time_scale.py.
#
# Usage: Rscript bench/r/event_time_lme4.R DATA.csv OUT.json
#   DATA.csv  columns y (outcome), school, cohort, and the fixed-effect columns, numeric and
#             already coded as bayesfed codes them (bench/event_time_scale.py writes it from
#             bayesfed.event_design): the pupil predictors (sen as treatment dummies against
#             "none"), federated (the federated-vs-matched gap), lead_m2 (federated x year -2)
#             and effect_0 .. effect_K (federated x years since founding k); year -1 is the
#             reference (no column)
#   OUT.json  timings (seconds, wall clock) and estimates (outcome units)
#
# The model: y ~ every fixed-effect column + factor(cohort) + (1 | school) + (1 | school:cohort),
# REML, lme4's default optimiser and checks: the frequentist twin of bayesfed's event-time
# model (cohort effects against the first cohort, school and school-by-cohort intercepts).

args <- commandArgs(trailingOnly = TRUE)
if (length(args) < 2) stop("usage: Rscript event_time_lme4.R DATA.csv OUT.json")
now <- function() proc.time()[["elapsed"]]

start <- now()
suppressMessages(library(lme4))
loaded <- now()
classes <- c(school = "character", cohort = "integer")
pupils <- if (requireNamespace("data.table", quietly = TRUE)) {
  data.table::fread(args[[1]], colClasses = classes, data.table = FALSE, showProgress = FALSE)
} else {
  utils::read.csv(args[[1]], colClasses = classes)
}
read <- now()
fixed <- setdiff(names(pupils), c("y", "school", "cohort"))
form <- stats::as.formula(paste("y ~", paste(c(fixed, "factor(cohort)"), collapse = " + "),
                                "+ (1 | school) + (1 | school:cohort)"))
fit <- lme4::lmer(form, data = pupils, REML = TRUE)
fitted <- now()

coefs <- summary(fit)$coefficients
vc <- as.data.frame(lme4::VarCorr(fit))
event <- fixed[grepl("^(lead_|effect_)", fixed)]
out <- list(
  peer = "lme4", version = as.character(utils::packageVersion("lme4")),
  r_version = R.version.string,
  n_pupils = nrow(pupils), n_schools = length(unique(pupils$school)),
  n_cells = nrow(unique(pupils[c("school", "cohort")])),
  load_s = loaded - start, read_s = read - loaded, fit_s = fitted - read,
  estimate = as.list(coefs[c("federated", event), "Estimate"]),
  se = as.list(coefs[c("federated", event), "Std. Error"]),
  sd_school = vc$sdcor[vc$grp == "school"],
  sd_cell = vc$sdcor[vc$grp == "school:cohort"],
  sigma = vc$sdcor[vc$grp == "Residual"],
  # the optimiser's own verdict; lme4's checks (e.g. "very large eigenvalue", which the
  # Hessian's scale triggers with millions of rows) are kept apart, in messages
  converged = identical(as.integer(fit@optinfo$conv$opt), 0L),
  messages = as.list(fit@optinfo$conv$lme4$messages)
)
jsonlite::write_json(out, args[[2]], auto_unbox = TRUE, digits = NA, pretty = TRUE)
