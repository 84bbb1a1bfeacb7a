"""The papers' protocol: run plans (`plan`), sweeps and their executors (`sweep`), the papers' tables (`tables`),
bootstrap intervals (`bootstrap`, `coverage`), the multiplicity policy (`multiplicity`), published numbers
(`published`), generated findings (`findings`) and pooled per-layer statistics (`pooled`)."""
