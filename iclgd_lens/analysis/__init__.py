"""Built on Results and the core, in three families that do not import each other sideways:

- `protocol`: the papers' protocol (run plans, sweeps and their executors, aggregation into the papers' tables,
  bootstrap intervals, the multiplicity policy, generated findings) and the pooled per-layer statistics the other
  two families report with;
- `heads`: per-head attribution of an update and of ICL, Dai et al.'s Kendall measure, attention patterns, function
  vectors;
- `lenses`: ICL's implicit weight update (per layer, chained, its transfer), task vectors, residual shifts, and
  their nulls.

`heads` and `lenses` are independent of each other; both may import `protocol` (docs/architecture.md).
"""
