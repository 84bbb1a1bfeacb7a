"""iclgd-lens: does in-context learning change a model's internals the way gradient descent does?

The public names load lazily, so that `iclgd-lens --help` answers without importing torch.
"""

from iclgd_lens.lazy import lazy_exports

_PUBLIC = {
    "CompareConfig": "core.config",
    "Delta": "core.deltas",
    "Episode": "core.episodes",
    "MethodContext": "core.methods",
    "Prompts": "core.recording",
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
    "register_method": "core.methods",
    "available_methods": "core.methods",
    "separator_text": "core.presets",
    "untrained_copy": "core.baselines",
}

__all__ = sorted(_PUBLIC)
__getattr__, __dir__ = lazy_exports(__name__, _PUBLIC)
