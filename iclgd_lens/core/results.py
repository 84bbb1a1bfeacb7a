"""Result of one comparison: numbers, DataFrame views, and an atomic save/load of everything needed to recompute.

Folder layout (docs/reference/result-format.md):
- result.json: config, accuracy, metrics, per_head and baselines (each with the same layout as the top level);
- records.safetensors: per setting ("zs", "icl", "gd", "lcgd", "<baseline>/<setting>") the recorded tensors,
  plus "labels", "query_len", and W_O and b_O ("model/W_O", "<baseline>/model/W_O", and "<setting>/W_O" for a
  setting that trained W_O; b_O alike), each value stored once (the metadata's "aliases" name the rest). Two
  tensors are stored only in part and rebuilt exactly on load: a setting's `attn_out` is left out where it equals
  `attention_output(z, W_O, b_O)` bit for bit (the metadata's "derived" lists those settings), and `scores` keep
  each query's own keys only, [sum of query_len, layer, head] (the metadata's "packed" lists them);
- episode.json: every token id (demonstrations, ICL prefix, queries, label tokens) and recorded positions;
- deltas.safetensors: the trained model's learned weight changes per method ("gd/blocks.3.attn.W_K", ...), so that
  attribution and attention views need no refit;
- control-<kind>/ (with a label control): the same comparison with the demonstrations' labels shuffled or reversed,
  a result folder of its own.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from html import escape
from pathlib import Path

import pandas as pd
import torch
from jaxtyping import Float, Int
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor

from iclgd_lens.backend import LensModel, stacked_output_weights
from iclgd_lens.core.deltas import PARAMETER_GROUPS, Delta
from iclgd_lens.core.episodes import Episode
from iclgd_lens.core.metrics import REFERENCE_EPS
from iclgd_lens.core.recording import Record, attention_output
from iclgd_lens.core.scoring import METRICS, PER_HEAD_METRICS, Scores, check_metric, score
from iclgd_lens.files import check_format, check_output, replaced_atomically

REQUIRED_FILES = ("result.json", "records.safetensors", "episode.json")
RESULT_FILES = (*REQUIRED_FILES, "deltas.safetensors")  # the trained model's GD/LCGD deltas (older results: none)
RESULT_FORMAT = "iclgd-lens result 2"  # result.json's "format": marks a folder this toolkit wrote
READABLE_FORMATS = ("iclgd-lens result 1", RESULT_FORMAT)  # 1: attn_out and padded scores stored in full
ALIASES = "aliases"  # records.safetensors metadata: JSON {name: the stored name of an equal tensor}
DERIVED = "derived"  # records.safetensors metadata: JSON [settings whose attn_out is rebuilt from z, W_O and b_O]
PACKED = "packed"  # records.safetensors metadata: JSON [settings whose scores hold each query's own keys only]
# The largest |ΔW_O| / max |W_O| at which a model still counts as the result's: fp16 rounding is 5e-4, another
# checkpoint of the same shape differs by O(1).
MODEL_MATCH_TOLERANCE = 1e-2
# The model's shape as result.json's config records it ("architecture"), read the same on either backend.
ARCHITECTURE = ("n_layers", "n_heads", "d_model", "d_head", "d_vocab")
CONTROL_PREFIX = "control-"  # a label control's own result folder inside the result's: control-shuffled/


@dataclass
class Result:
    """One comparison (`compare` returns it; `Result.load` reads a saved one): its config, the scores of the model
    and of each baseline, every setting's recording, the output weights, labels, the episode, the trained model's
    deltas and any label control's own result. `summary()` and `per_layer()` lay the scores out."""

    config: dict
    scores: dict[str, Scores]  # "model" and each baseline
    records: dict[str, Record]  # "zs", "icl", "gd", ..., "no_training/zs", ...
    W_O: dict[str, Tensor]  # "model", "<baseline>/model", and "<setting>" where that setting trained W_O
    labels: Tensor
    episode: Episode
    deltas: dict[str, Delta] = field(default_factory=dict)  # method -> the trained model's learned delta
    controls: dict[str, Result] = field(default_factory=dict)  # label control -> the same comparison under it
    b_O: dict[str, Tensor] = field(default_factory=dict)  # as W_O: the attention output's bias

    def output_weights(self, setting: str) -> tuple[Tensor, Tensor | None]:
        """W_O and b_O of `setting` ("gd", "no_training/icl", ...): its own where it trained them, else its model's."""
        return setting_output_weights(self.W_O, self.b_O, setting)

    @property
    def accuracy(self) -> dict[str, float]:
        return self.scores["model"].accuracy

    @property
    def metrics(self) -> dict:
        return self.scores["model"].metrics

    @property
    def methods(self) -> list[str]:
        return list(self.config["methods"])

    def lr_of(self, method: str, subject: str = "model") -> float:
        """The learning rate `method` trained with on `subject` ("model" or a baseline): as its scores record it
        (a matched update size's searched lr); for results before that, the config's (before `lr_lcgd`: GD's for
        both; a method registered with an "lr" option: that)."""
        recorded = self.scores[subject].lr if subject in self.scores else {}
        if method in recorded:
            return float(recorded[method])
        options = self.config.get("method_options", {}).get(method, {})
        if "lr" in options:
            return float(options["lr"])
        lcgd = self.config.get("lr_lcgd") if method == "lcgd" else None
        return self.config["lr"] if lcgd is None else lcgd

    def check_model(self, model: LensModel) -> None:
        """Refuse a model that is not the one this result was computed on: its architecture (as result.json records
        it; results before that: the saved W_O's shape) and its weights, fingerprinted by the attention output
        weights W_O the result saved (equal up to the result's precision: fp16-mixed rounds them)."""
        where = (
            f"the model ({model.cfg.model_name}) is not the one this result was computed on ({self.config['model']})"
        )
        recorded = self.config.get("architecture", {})
        differ = [
            f"{name} {getattr(model.cfg, name, None)} (the result's {value})"
            for name, value in recorded.items()
            if getattr(model.cfg, name, None) != value
        ]
        saved = self.W_O["model"]
        W_O, _ = stacked_output_weights(model)
        if differ or W_O.shape != saved.shape:
            shown = differ or [f"W_O {tuple(W_O.shape)} (the result's {tuple(saved.shape)})"]
            raise ValueError(f"{where}: it has {', '.join(shown)}; give the result's model with --model")
        gap = float((W_O - saved).abs().max() / saved.abs().max().clamp_min(1e-30))
        if gap > MODEL_MATCH_TOLERANCE:
            raise ValueError(
                f"{where}: same shapes, other weights (its attention output weights W_O differ from the "
                f"saved ones by up to {gap:.2g} of their largest value); give the result's model with "
                "--model"
            )

    @property
    def scoring_arithmetic(self) -> tuple[float | None, torch.dtype]:
        """What scoring this result's records again needs: the metric arithmetic's eps (the reference's, or None:
        exact) and the recording's dtype (for the rounding-level layers)."""
        eps = REFERENCE_EPS if self.config.get("arithmetic") == "reference" else None
        return eps, getattr(torch, self.config.get("dtype", "float32"))

    def crossed(self, kind: str, icl: str) -> Result:
        """A cross-paired label control on the trained model: ICL and the methods on different demonstration labels.
        `icl="true"`: ICL with the true labels against every method trained on label control `kind`'s; `icl=kind`:
        ICL on `kind`'s labels against the methods trained on the true ones. The matched control (both on `kind`'s
        labels) cannot say whose use of the labels moved a similarity; the cross pairs can (docs/science.md, "Label
        controls"). ZS sees no demonstration: the same run on both sides. Scored like compare's own comparison;
        the model only, no baselines; the methods' update norms and lrs are their side's."""
        if kind not in self.controls or icl not in ("true", kind):
            raise ValueError(
                f"no cross pair ({kind!r}, ICL {icl!r}): this result's label controls are "
                f"{sorted(self.controls)}, and ICL's side is 'true' or the control's kind"
            )
        control = self.controls[kind]
        icl_side, method_side = (self, control) if icl == "true" else (control, self)
        records = {"zs": self.records["zs"], "icl": icl_side.records["icl"]}
        records |= {method: method_side.records[method] for method in self.methods}
        W_O = {"model": self.W_O["model"]} | {m: method_side.W_O[m] for m in self.methods if m in method_side.W_O}
        eps, dtype = self.scoring_arithmetic
        scores = score(records, self.labels, W_O, self.config["seed"], eps=eps, dtype=dtype)
        own = method_side.scores["model"]
        scores.update_norm, scores.lr = own.update_norm, own.lr
        config = self.config | {"baselines": [], "cross_pair": {"label_control": kind, "icl": icl}}
        b_O = {key: value for key, value in self.b_O.items() if key == "model"}
        b_O |= {m: method_side.b_O[m] for m in self.methods if m in method_side.b_O}
        return Result(
            config, {"model": scores}, records, W_O, self.labels, icl_side.episode, method_side.deltas, b_O=b_O
        )

    @property
    def trained_parameters(self) -> tuple[str, ...]:
        """The per-block parameters GD trained (results before `trained_parameters`: every weight and bias of the
        groups, the model's own or not)."""
        if "trained_parameters" in self.config:
            return tuple(self.config["trained_parameters"])
        return tuple(name for group in self.config["groups"] for name in PARAMETER_GROUPS[group])

    def _columns(self) -> list[tuple[str, Scores, str]]:
        """(column label, scores, method) for every method on the trained model, each baseline, and the trained model
        under each label control ("gd [shuffled]") and its cross pairs ("gd [ICL true, FT shuffled]")."""
        columns = [
            (method if model == "model" else f"{model}/{method}", scores, method)
            for model, scores in self.scores.items()
            for method in self.methods
        ]
        for kind, control in self.controls.items():
            columns += [(f"{method} [{kind}]", control.scores["model"], method) for method in self.methods]
            for icl in ("true", kind):
                crossed = self.crossed(kind, icl).scores["model"]
                columns += [(f"{method} [{cross_pair_name(kind, icl)}]", crossed, method) for method in self.methods]
        return columns

    def summary(self, subset: str | None = None) -> Summary:
        """Metric x (method, and method on each baseline): one mean number each; accuracies as extra rows.
        `subset="f2t"`: the same metrics on each method's f2t queries (when the result scored them). Printed, it
        shows every column and the notes on anything a reader could misread."""
        if subset is not None and subset not in self.scores["model"].subsets:
            raise ValueError(f"this result has no {subset!r} subset; run compare with subsets=({subset!r},)")
        table = {}
        for column, scores, method in self._columns():
            m = scores.subsets[subset][method]["metrics"] if subset else scores.metrics[method]
            values = {name: m[name] if name == "rec2ftp" else m[name]["mean"] for name in METRICS if name in m}
            if method == "lcgd" and "alpha" in scores.metrics and subset is None:
                values["alpha"] = scores.metrics["alpha"]["mean"]
            if subset:
                values["n"] = scores.subsets[subset][method]["n"]
            else:
                acc = scores.accuracy
                values |= {"acc_zs": acc["zs"], "acc_icl": acc["icl"], "acc_ft": acc[method]}
                values |= self._update_size(scores, method)
            table[column] = values
        order = [*METRICS, "n"] if subset else [*METRICS, "acc_zs", "acc_icl", "acc_ft", "lr", "norm_ratio"]
        present = {name for values in table.values() for name in values}
        frame = Summary(pd.DataFrame(table).reindex([name for name in order if name in present]))
        noted = [*self.scores.items(), *((f"{kind} labels", c.scores["model"]) for kind, c in self.controls.items())]
        frame.notes = [
            note if model == "model" else f"{model}: {note}"
            for model, scores in noted
            for note in scores.notes
            if subset is None or f"{subset} subset" in note
        ]
        return frame

    def _update_size(self, scores: Scores, method: str) -> dict[str, float]:
        """The column's learning rate and its update's ‖ΔW‖ over the trained model's for the same method (1: the
        same size); absent for results written before they were recorded."""
        out = {"lr": scores.lr[method]} if method in scores.lr else {}
        own, trained = scores.update_norm.get(method), self.scores["model"].update_norm.get(method)
        if own and trained:
            out["norm_ratio"] = own["total"] / trained["total"] if trained["total"] else float("nan")
        return out

    def per_layer(self, metric: str) -> pd.DataFrame:
        """Layer x (method, and method on each baseline)."""
        check_metric(metric, tuple(m for m in METRICS if m != "rec2ftp"))
        table = {}
        for column, scores, method in self._columns():
            metrics = scores.metrics
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
            choices = [f"{model}/{m}" if model != "model" else m for model in self.scores for m in self.methods]
            raise ValueError(f"unknown method {method!r}; choose from {choices}")
        per_head = self.scores[model].per_head
        values = per_head["alpha"] if metric == "alpha" else per_head[name][metric]
        frame = pd.DataFrame(values)
        frame.index.name, frame.columns.name = "layer", "head"
        return frame

    def to_json(self) -> dict:
        return {
            "format": RESULT_FORMAT,
            "config": self.config,
            **self.scores["model"].to_json(),
            "baselines": {name: s.to_json() for name, s in self.scores.items() if name != "model"},
        }

    def save(self, folder: str | Path, overwrite: bool = False) -> Path:
        """Write the result folder atomically: the files go to a hidden temporary sibling, which then takes the
        folder's place in one step (an interrupted save leaves the old result or the new one, complete)."""
        folder = Path(folder)
        check_output_folder(folder, overwrite)
        with replaced_atomically(folder, folder=True) as staging:
            for kind, control in self.controls.items():
                (staging / f"{CONTROL_PREFIX}{kind}").mkdir()
                control._write(staging / f"{CONTROL_PREFIX}{kind}")
            self._write(staging)  # result.json last: a folder holding it is complete
        return folder

    def _write(self, staging: Path) -> None:
        tensors = {"labels": self.labels, "query_len": self.records["zs"].query_len.clone()}
        derived, packed = [], []
        for setting, record in self.records.items():
            stored = record.tensors()
            W_O, b_O = self.output_weights(setting)
            if b_O is not None and torch.equal(attention_output(record.z, W_O, b_O), record.attn_out):
                del stored["attn_out"]
                derived.append(setting)
            packed_scores = pack_scores(record.scores, record.query_len)
            if torch.equal(unpack_scores(packed_scores, record.query_len), record.scores):
                stored["scores"] = packed_scores
                packed.append(setting)
            tensors |= {f"{setting}/{k}": v for k, v in stored.items()}
        weights = {f"{setting}/W_O": w for setting, w in self.W_O.items()}
        weights |= {f"{setting}/b_O": b for setting, b in self.b_O.items()}
        weights, aliases = stored_once(weights)
        metadata = {ALIASES: json.dumps(aliases), DERIVED: json.dumps(derived), PACKED: json.dumps(packed)}
        save_file(
            {k: v.contiguous().cpu() for k, v in (tensors | weights).items()},
            staging / "records.safetensors",
            metadata=metadata,
        )
        if self.deltas:
            changes = {f"{m}/{name}": t for m, d in self.deltas.items() for name, t in d.tensors.items()}
            save_file({k: v.detach().contiguous().cpu() for k, v in changes.items()}, staging / "deltas.safetensors")
        positions = {s: r.position.tolist() for s, r in self.records.items() if "/" not in s}
        self.episode.save(staging / "episode.json", record_positions=positions)
        (staging / "result.json").write_text(json.dumps(self.to_json(), indent=1, allow_nan=True))

    @classmethod
    def load(cls, folder: str | Path) -> Result:
        """Read a result folder back; a folder that is not a complete result gives a ValueError saying so."""
        folder = Path(folder)
        if not folder.is_dir():
            raise FileNotFoundError(f"{str(folder)!r} is not a folder; give a result folder written by compare")
        missing = [f for f in REQUIRED_FILES if not (folder / f).is_file()]
        if missing:
            raise ValueError(f"{str(folder)!r} is not a complete result folder: {missing} missing; re-run compare")
        data = check_format(folder, "result.json", (*READABLE_FORMATS, None), "result", "compare")
        try:
            tensors, derived, packed = read_records(folder / "records.safetensors")
            episode = Episode.from_json(json.loads((folder / "episode.json").read_text()))
            W_O = {k.removesuffix("/W_O"): v for k, v in tensors.items() if k.endswith("/W_O")}
            b_O = {k.removesuffix("/b_O"): v for k, v in tensors.items() if k.endswith("/b_O")}
            settings = sorted({k.rsplit("/", 1)[0] for k in tensors if "/" in k and not k.endswith(("/W_O", "/b_O"))})
            stored = {s: {k[len(s) + 1 :]: v for k, v in tensors.items() if k.rsplit("/", 1)[0] == s} for s in settings}
            for s in packed:
                stored[s]["scores"] = unpack_scores(stored[s]["scores"], stored[s]["query_len"])
            for s in derived:
                stored[s]["attn_out"] = attention_output(stored[s]["z"], *setting_output_weights(W_O, b_O, s))
            records = {s: Record.from_tensors(stored[s]) for s in settings}
            scores = {"model": Scores.from_json(data)}
            scores |= {name: Scores.from_json(s) for name, s in data["baselines"].items()}
            deltas: dict[str, Delta] = {}
            if (folder / "deltas.safetensors").is_file():
                for key, tensor in load_file(folder / "deltas.safetensors").items():
                    method, name = key.split("/", 1)
                    deltas.setdefault(method, Delta({})).tensors[name] = tensor
            controls = {
                sub.name.removeprefix(CONTROL_PREFIX): cls.load(sub)
                for sub in sorted(folder.glob(f"{CONTROL_PREFIX}*"))
                if sub.is_dir()
            }
            return cls(data["config"], scores, records, W_O, tensors["labels"], episode, deltas, controls, b_O)
        except (ValueError, KeyError, TypeError, OSError, SafetensorError) as error:
            raise ValueError(
                f"{str(folder)!r} holds a corrupt or incomplete result ({type(error).__name__}: {error}); "
                "re-run compare to write it again"
            ) from None


def cross_pair_name(kind: str, icl: str) -> str:
    """A cross pair's name (`Result.crossed`): "ICL true, FT shuffled" (the methods on the control's labels) or
    "ICL shuffled, FT true"."""
    return f"ICL {icl}, FT {kind if icl == 'true' else 'true'}"


OTHER_TASK_PREFIX = "model [FT on "  # every structured null's subject name begins so (`other_task_name`)


def other_task_name(task: str) -> str:
    """The structured null's subject name, "model [FT on synth-subj]": the methods' updates learned from another
    task's demonstrations on the same model (lenses --null-runs), read on this task's queries."""
    return f"{OTHER_TASK_PREFIX}{task}]"


def setting_output_weights(
    W_O: dict[str, Tensor], b_O: dict[str, Tensor], setting: str
) -> tuple[Tensor, Tensor | None]:
    """`setting`'s W_O and b_O from a result's weights, keyed "model", "<baseline>/model" and "[<baseline>/]<method>"
    where a method trained them; b_O is None in results that did not store it (format 1)."""
    model, _, name = setting.rpartition("/")
    prefix = f"{model}/" if model else ""
    own, base = prefix + name, prefix + "model"
    return W_O.get(own, W_O[base]), b_O.get(own, b_O.get(base))


def stored_once(tensors: dict[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, str]]:
    """The tensors with each value kept once (the untrained baselines share their re-initialised W_O), and the
    aliases {dropped name: the kept name equal to it}."""
    kept: dict[str, Tensor] = {}
    aliases: dict[str, str] = {}
    for name, tensor in tensors.items():
        same = next((k for k, t in kept.items() if t.shape == tensor.shape and torch.equal(t, tensor)), None)
        if same is None:
            kept[name] = tensor
        else:
            aliases[name] = same
    return kept, aliases


def read_records(path: Path) -> tuple[dict[str, Tensor], list[str], list[str]]:
    """records.safetensors with every aliased tensor under its own name again, the settings whose attn_out is
    derived, and those whose scores are packed."""
    with safe_open(path, "pt") as file:
        metadata = file.metadata() or {}
    tensors = load_file(path)
    tensors |= {name: tensors[kept] for name, kept in json.loads(metadata.get(ALIASES, "{}")).items()}
    return tensors, json.loads(metadata.get(DERIVED, "[]")), json.loads(metadata.get(PACKED, "[]"))


def pack_scores(
    scores: Float[Tensor, "n layer head max_query_len"], query_len: Int[Tensor, " n"]
) -> Float[Tensor, "keys layer head"]:
    """Each query's scores to its own keys only (query i's first query_len[i] columns), queries one after another."""
    own = torch.arange(scores.shape[-1])[None, :] < query_len[:, None]  # [n, max_query_len]
    return scores.permute(0, 3, 1, 2)[own]


def unpack_scores(
    packed: Float[Tensor, "keys layer head"], query_len: Int[Tensor, " n"]
) -> Float[Tensor, "n layer head max_query_len"]:
    """`pack_scores` undone: zero beyond each query's own keys, as the recording pads them."""
    width = int(query_len.max()) if len(query_len) else 0
    own = torch.arange(width)[None, :] < query_len[:, None]
    scores = packed.new_zeros(len(query_len), width, *packed.shape[1:])
    scores[own] = packed
    return scores.permute(0, 2, 3, 1).contiguous()


def _number(value: float) -> str:
    """Three decimals, or three significant digits below 0.01 (a learning rate, a tiny cosine), never a bare 0.000
    for a nonzero value."""
    return f"{value:.3f}" if value == 0 or abs(value) >= 0.01 or value != value else f"{value:.3g}"


class Summary(pd.DataFrame):
    """`Result.summary()`'s table: a DataFrame that prints every column, followed by its notes."""

    _metadata = ["notes"]

    @property
    def _constructor(self) -> type:
        return Summary

    def _table(self) -> str:
        with pd.option_context("display.max_columns", None, "display.width", 0, "display.float_format", _number):
            return pd.DataFrame.__repr__(self)

    def __repr__(self) -> str:
        return "\n".join([self._table(), *(f"note: {note}" for note in getattr(self, "notes", []))])

    def _repr_html_(self) -> str:
        with pd.option_context("display.max_columns", None, "display.float_format", _number):
            html = pd.DataFrame._repr_html_(self)
        items = "".join(f"<li>{escape(note)}</li>" for note in getattr(self, "notes", []))
        return html + (f"<ul>{items}</ul>" if items else "")


def is_result_folder(folder: Path) -> bool:
    """A folder this toolkit wrote: a result.json that is an iclgd-lens result, and nothing but result files and its
    label controls' result folders (control-<kind>/, each one such a folder)."""
    try:
        data = json.loads((folder / "result.json").read_text())
    except (OSError, ValueError):
        return False
    # A result.json written before the format field has config and metrics and no format; one with another
    # writer's format is not ours, whatever else it holds.
    earlier = isinstance(data, dict) and "format" not in data and {"config", "metrics"} <= set(data)
    ours = isinstance(data, dict) and (data.get("format") in READABLE_FORMATS or earlier)
    return ours and all(
        entry.name in RESULT_FILES
        or (entry.name.startswith(CONTROL_PREFIX) and entry.is_dir() and is_result_folder(entry))
        for entry in folder.iterdir()
    )


def check_output_folder(folder: Path, overwrite: bool) -> None:
    """Refuse, before any computation, every output folder whose content the toolkit did not write."""
    check_output(folder, "result", is_result_folder, overwrite)
