"""Fixtures shared by every test folder. The tiny builders (make_tokenizer, toy_rows, toy_task, tiny_model,
byte_tokenizer, bundled_random_model) are plain functions in tests/helpers.py: `from tests.helpers import ...`
(tests/ is a package, so pytest puts the repository root on the import path; no test edits sys.path)."""

import importlib.util
import sys
from types import ModuleType

import pytest
import torch

from tests.helpers import SCRIPTS


@pytest.fixture(scope="session", autouse=True)
def converted_models_cache(tmp_path_factory):
    """One cache of converted checkpoints (SmolLM2) for the whole session, in a temporary folder: tests never
    read or write the user's cache, and the GGUF is converted once, whichever test (or notebook kernel) asks first."""
    from iclgd_lens.sources.packaged_models import CACHE_ENV

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(CACHE_ENV, str(tmp_path_factory.mktemp("converted-models")))
        yield


@pytest.fixture(scope="module")
def tiny():
    """The bundled tiny-icl on the CPU, loaded once per test module."""
    from iclgd_lens import load_model

    return load_model("tiny-icl", device="cpu")


@pytest.fixture
def one_thread():
    """Torch on one thread for the test, restored after it."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def script():
    """Import a script of scripts/ by its file path (the scripts are not a package): `script("train_tiny_icl")`
    gives the module, imported once per session under the script's own name."""
    loaded: dict[str, ModuleType] = {}

    def load(name: str) -> ModuleType:
        if name not in loaded:
            spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module  # as a plain import would: dataclasses and pickling look the module up
            try:
                spec.loader.exec_module(module)
            except BaseException:
                del sys.modules[name]
                raise
            loaded[name] = module
        return loaded[name]

    return load
