"""Two saved tiny-icl results (seeds 0 and 1) that the views, plots and the report read."""

import pytest

from iclgd_lens import compare, load_task


@pytest.fixture(scope="module")
def saved(tiny, tmp_path_factory):
    """Two saved synth-sst2 results, s0 and s1, made once per test module."""
    root = tmp_path_factory.mktemp("views")
    task = load_task("synth-sst2")
    for seed in (0, 1):
        compare(
            tiny,
            task,
            k=6,
            seed=seed,
            lr=0.3,
            n_eval=8,
            baselines=("no_training",),
            out=root / f"s{seed}",
            progress=False,
        )
    return root
