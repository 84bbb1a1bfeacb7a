"""`make bench`: the toolkit's whole `compare` against a naive pipeline written the reference's way, one module per
job (README.md). Run it as `python -m benchmarks` from the repository root."""
