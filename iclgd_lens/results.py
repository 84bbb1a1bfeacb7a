"""Result of one comparison: numbers, DataFrame views, and an atomic save/load of everything needed to recompute.

Folder layout (README "Result folder"):
- result.json: config, accuracy, metrics, per_head and baselines (each with the same layout as the top level);
- records.safetensors: per setting ("zs", "icl", "gd", "lcgd", "<baseline>/<setting>") the recorded tensors,
  plus "labels", "query_len", and W_O for per-head outputs ("model/W_O", "<baseline>/model/W_O", and
  "<setting>/W_O" for a setting that trained W_O);
- episode.json: every token id (demonstrations, ICL prefix, queries, label tokens) and recorded positions.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from safetensors.torch import load_file, save_file
from torch import Tensor

from iclgd_lens.episodes import Episode
from iclgd_lens.recording import Record
from iclgd_lens.scoring import METRICS, PER_HEAD_METRICS, check_metric

RESULT_FILES = ("result.json", "records.safetensors", "episode.json")


@dataclass
class Result:
    config: dict
    scores: dict[str, dict]  # "model" and each baseline -> {accuracy, metrics, per_head}
    records: dict[str, Record]  # "zs", "icl", "gd", ..., "no_training/zs", ...
    W_O: dict[str, Tensor]  # "model", "<baseline>/model", and "<setting>" where that setting trained W_O
    labels: Tensor
    episode: Episode

    @property
    def accuracy(self) -> dict[str, float]:
        return self.scores["model"]["accuracy"]

    @property
    def metrics(self) -> dict:
        return self.scores["model"]["metrics"]

    @property
    def methods(self) -> list[str]:
        return list(self.config["methods"])

    def _columns(self) -> list[tuple[str, str, str]]:
        """(column label, model key, method) for every method on the trained model and each baseline."""
        return [
            (method if model == "model" else f"{model}/{method}", model, method)
            for model in self.scores
            for method in self.methods
        ]

    def summary(self) -> pd.DataFrame:
        """Metric x (method, and method on each baseline): one mean number each; accuracies as extra rows."""
        table = {}
        for column, model, method in self._columns():
            m = self.scores[model]["metrics"][method]
            values = {name: m[name] if name == "rec2ftp" else m[name]["mean"] for name in METRICS if name in m}
            if method == "lcgd" and "alpha" in self.scores[model]["metrics"]:
                values["alpha"] = self.scores[model]["metrics"]["alpha"]["mean"]
            acc = self.scores[model]["accuracy"]
            values |= {"acc_zs": acc["zs"], "acc_icl": acc["icl"], "acc_ft": acc[method]}
            table[column] = values
        return pd.DataFrame(table).reindex([*METRICS, "acc_zs", "acc_icl", "acc_ft"]).dropna(how="all")

    def per_layer(self, metric: str) -> pd.DataFrame:
        """Layer x (method, and method on each baseline)."""
        check_metric(metric, tuple(m for m in METRICS if m != "rec2ftp"))
        table = {}
        for column, model, method in self._columns():
            metrics = self.scores[model]["metrics"]
            if metric == "alpha":
                if method == "lcgd" and "alpha" in metrics:
                    table[column] = metrics["alpha"]["per_layer"]
            else:
                table[column] = metrics[method][metric]["per_layer"]
        frame = pd.DataFrame(table)
        frame.index.name = "layer"
        return frame

    def per_head(self, metric: str, method: str = "gd") -> pd.DataFrame:
        """[layer x head] for one method, e.g. per_head("simam_delta", "lcgd") or ("simaou", "no_training/gd")."""
        check_metric(metric, PER_HEAD_METRICS)
        model, _, name = method.rpartition("/")
        model = model or "model"
        if model not in self.scores or name not in self.methods:
            raise ValueError(f"unknown method {method!r}; choose from {[c for c, _, _ in self._columns()]}")
        per_head = self.scores[model]["per_head"]
        values = per_head["alpha"] if metric == "alpha" else per_head[name][metric]
        frame = pd.DataFrame(values)
        frame.index.name, frame.columns.name = "layer", "head"
        return frame

    def to_json(self) -> dict:
        main = self.scores["model"]
        return {
            "config": self.config,
            **main,
            "baselines": {name: s for name, s in self.scores.items() if name != "model"},
        }

    def save(self, folder: str | Path, overwrite: bool = False) -> Path:
        """Write the result folder atomically: files go to a temporary sibling that replaces `folder` at once."""
        folder = Path(folder)
        check_output_folder(folder, overwrite)
        folder.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
        staging.chmod(0o777 & ~_umask())
        try:
            tensors = {"labels": self.labels, "query_len": self.records["zs"].query_len.clone()}
            for setting, record in self.records.items():
                tensors |= {f"{setting}/{k}": v for k, v in record.tensors().items()}
            tensors |= {f"{setting}/W_O": w for setting, w in self.W_O.items()}
            save_file({k: v.contiguous().cpu() for k, v in tensors.items()}, staging / "records.safetensors")
            positions = {s: r.position.tolist() for s, r in self.records.items() if "/" not in s}
            self.episode.save(staging / "episode.json", record_positions=positions)
            (staging / "result.json").write_text(json.dumps(self.to_json(), indent=1, allow_nan=True))
            if folder.exists():
                shutil.rmtree(folder)
            staging.rename(folder)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> "Result":
        folder = Path(folder)
        missing = [f for f in RESULT_FILES if not (folder / f).is_file()]
        if missing:
            raise FileNotFoundError(f"{str(folder)!r} is not a result folder: {missing} missing")
        data = json.loads((folder / "result.json").read_text())
        tensors = load_file(folder / "records.safetensors")
        W_O = {k.removesuffix("/W_O"): v for k, v in tensors.items() if k.endswith("/W_O")}
        settings = sorted({k.rsplit("/", 1)[0] for k in tensors if "/" in k and not k.endswith("/W_O")})
        records = {
            s: Record.from_tensors({k[len(s) + 1 :]: v for k, v in tensors.items() if k.rsplit("/", 1)[0] == s})
            for s in settings
        }
        scores = {"model": {k: data[k] for k in ("accuracy", "metrics", "per_head")}} | data["baselines"]
        episode = Episode.from_json(json.loads((folder / "episode.json").read_text()))
        return cls(data["config"], scores, records, W_O, tensors["labels"], episode)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def check_output_folder(folder: Path, overwrite: bool) -> None:
    if (folder / "result.json").exists() and not overwrite:
        raise FileExistsError(
            f"{str(folder)!r} already holds a result; choose another folder or pass overwrite=True (--overwrite)"
        )
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(f"{str(folder)!r} exists and is not a folder; choose another output path")
