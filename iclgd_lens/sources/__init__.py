"""Where models and tasks come from: the hub, local files and folders, packages on the registry, the bundled
tiny-icl and the synthetic tasks. `load_model`, `load_task` and `available_tasks` (in `dispatch`) know them all.

The names load lazily, so that the command line can read the task lists without importing torch.
"""

from iclgd_lens.lazy import lazy_exports

_PUBLIC = {
    "available_tasks": "dispatch",
    "check_model_source": "dispatch",
    "load_model": "dispatch",
    "load_task": "dispatch",
    "model_source": "dispatch",
    "Task": "task",
    "HUB_TASKS": "hub_tasks",
    "SYNTHETIC_TASKS": "synthetic_tasks",
    "EXTRA_LABEL_WORDS": "synthetic_tasks",
    "synthetic_task": "synthetic_tasks",
    "TINY_ICL_DIR": "bundled",
    "load_bundled": "bundled",
    "model_config": "bundled",
    "save_bundled": "bundled",
    "BUNDLED_DIR": "bundled",
    "export_neox": "neox_export",
    "build_tokenizer": "tokenizers",
}

__all__ = sorted(_PUBLIC)
__getattr__, __dir__ = lazy_exports(__name__, _PUBLIC)
