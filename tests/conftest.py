import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))


import pytest  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def converted_models_cache(tmp_path_factory):
    """One cache of converted checkpoints (SmolLM2) for the whole session, in a temporary folder: tests never
    read or write the user's cache, and the GGUF is converted once, whichever test (or notebook kernel) asks first."""
    from iclgd_lens.sources.packaged_models import CACHE_ENV

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(CACHE_ENV, str(tmp_path_factory.mktemp("converted-models")))
        yield
