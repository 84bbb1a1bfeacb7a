"""iclgd-lens: does in-context learning change a model's internals the way gradient descent does?

The public names load lazily, so that `iclgd-lens --help` answers without importing torch.
"""

from importlib import import_module

_PUBLIC = {
    "CompareConfig": "core.config",
    "Delta": "core.deltas",
    "Episode": "core.episodes",
    "Record": "core.recording",
    "Result": "core.results",
    "Task": "sources.task",
    "available_tasks": "sources.dispatch",
    "build_episode": "core.episodes",
    "compare": "core.comparison",
    "episode_accuracy": "core.accuracy",
    "fit": "core.finetuning",
    "load_model": "sources.dispatch",
    "load_task": "sources.dispatch",
    "record": "core.recording",
    "record_settings": "core.accuracy",
    "separator_text": "core.presets",
    "untrained_copy": "core.baselines",
}

__all__ = sorted(_PUBLIC)


def __getattr__(name: str):
    if name not in _PUBLIC:
        raise AttributeError(f"module 'iclgd_lens' has no attribute {name!r}")
    return getattr(import_module(f"iclgd_lens.{_PUBLIC[name]}"), name)


def __dir__() -> list[str]:
    return __all__
