"""Built on Results and the core: the papers' protocol (sweeps, learning-rate search, executors), aggregation
into the papers' tables with bootstrap intervals."""
