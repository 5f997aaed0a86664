"""The credible mass of every interval bayesfed computes and prints: one constant.

Highest-density intervals of posterior summaries, central intervals of predictive
replications and the report's labels all take their level from :data:`PROB` (ArviZ 1.x's
default is 89%; bayesfed asks for 94%, the level PyMC's and ArviZ's earlier defaults used).
"""

#: Credible mass of every interval.
PROB = 0.94

#: :data:`PROB` as printed: ``"94%"``.
PERCENT = f"{PROB:.0%}"
