"""`--quiet` silences the GGUF conversion's own progress bar, which transformers draws with plain tqdm."""

from transformers import modeling_gguf_pytorch_utils as gguf_utils

from iclgd_lens.sources.hf_models import quiet_transformers


def test_the_gguf_bar_is_silenced_unless_asked_for(capfd):
    original = gguf_utils.tqdm
    with quiet_transformers():
        list(gguf_utils.tqdm(range(3), desc="de-quantizing"))
    assert capfd.readouterr().err == ""
    with quiet_transformers(gguf_bar=True):
        list(gguf_utils.tqdm(range(3), desc="de-quantizing"))
    assert "de-quantizing" in capfd.readouterr().err
    assert gguf_utils.tqdm is original  # restored after each block
