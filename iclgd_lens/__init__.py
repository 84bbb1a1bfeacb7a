"""iclgd-lens: does in-context learning change a model's internals the way gradient descent does?"""

from iclgd_lens.compare import compare
from iclgd_lens.deltas import Delta, fit
from iclgd_lens.episodes import Episode, build_episode
from iclgd_lens.models import load_model, untrained_copy
from iclgd_lens.recording import Record, record
from iclgd_lens.results import Result
from iclgd_lens.tasks import Task, available_tasks, load_task

__all__ = [
    "Delta",
    "Episode",
    "Record",
    "Result",
    "Task",
    "available_tasks",
    "build_episode",
    "compare",
    "fit",
    "load_model",
    "load_task",
    "record",
    "untrained_copy",
]
