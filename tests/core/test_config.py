"""CompareConfig: one source of truth for a comparison's options, checked before anything loads."""

import json
import subprocess
import sys

import pytest

from iclgd_lens import CompareConfig, Result, compare
from tests.helpers import tiny_model, toy_task


def test_unknown_option_names_the_closest_field():
    with pytest.raises(TypeError, match="unknown comparison option 'baseline'; did you mean 'baselines'"):
        CompareConfig.build(baseline=("no_training",))
    with pytest.raises(TypeError, match="unknown comparison option 'learning_rate'; the options are"):
        compare(None, None, learning_rate=1e-3)  # refused before the model or task is looked at


def test_choices_resolve_the_preset_with_each_override():
    config = CompareConfig(preset="reference", position="prediction")
    assert config.choices.position == "prediction" and config.choices.precision == "fp16-mixed"
    assert CompareConfig().choices.position == "prediction" and CompareConfig().choices.separator == "eos"
    with pytest.raises(ValueError, match="permutation 5 does not exist in the reference code"):
        CompareConfig(preset="reference", permutation=5)
    with pytest.raises(ValueError, match="unknown position 'middle'"):
        CompareConfig(position="middle")


def test_build_replaces_fields_of_a_given_config():
    base = CompareConfig(k=8, lr=0.1, baselines=())
    changed = CompareConfig.build(base, lr=0.2)
    assert (changed.k, changed.lr, changed.baselines) == (8, 0.2, ()) and base.lr == 0.1


def test_config_importing_no_torch():
    code = (
        "import sys; from iclgd_lens.core.config import CompareConfig; CompareConfig(k=4); "
        "print('torch' in sys.modules)"
    )
    assert (
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
        == "False"
    )


def test_a_config_or_its_fields_give_the_same_result_and_result_json_holds_the_config(tmp_path):
    model, task = tiny_model(), toy_task()
    options = dict(k=4, seed=1, lr=0.05, n_eval=4, baselines=(), methods=("gd",), position="first_option")
    by_name = compare(model, task, **options, progress=False)
    config = CompareConfig(**options)
    by_config = compare(model, task, config, out=tmp_path / "run", progress=False)
    without_config = [json.dumps(r.to_json() | {"config": None}, sort_keys=True) for r in (by_name, by_config)]
    assert without_config[0] == without_config[1]
    recorded = Result.load(tmp_path / "run").config
    assert CompareConfig.from_json(recorded).to_json() == config.to_json()
    assert recorded["position"] == "first_option" and recorded["n_eval"] == 4
    assert (recorded["lr_lcgd"], recorded["lr_lcgd_rule"]) == (None, "not run")  # no LCGD lr reported as used
    assert {"model", "task", "effective_k", "gd_k", "trained_parameters", "dtype", "versions"} <= set(recorded)
