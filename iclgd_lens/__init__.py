"""iclgd-lens: does in-context learning change a model's internals the way gradient descent does?

The public names load lazily, so that `iclgd-lens --help` answers without importing torch.
"""

from importlib import import_module

_PUBLIC = {
    "Delta": "deltas",
    "Episode": "episodes",
    "Record": "recording",
    "Result": "results",
    "Task": "tasks",
    "available_tasks": "tasks",
    "build_episode": "episodes",
    "compare": "comparison",
    "fit": "deltas",
    "load_model": "models",
    "load_task": "tasks",
    "record": "recording",
    "untrained_copy": "models",
}

__all__ = sorted(_PUBLIC)


def __getattr__(name: str):
    if name not in _PUBLIC:
        raise AttributeError(f"module 'iclgd_lens' has no attribute {name!r}")
    return getattr(import_module(f"iclgd_lens.{_PUBLIC[name]}"), name)


def __dir__() -> list[str]:
    return __all__
