"""Devices, dtypes and CPU threads, readable without importing torch (the command line lists them in --help)."""

from __future__ import annotations

import os

DTYPES = ("float32", "float16", "bfloat16")


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_dtype(dtype):
    """A torch.dtype from its name ("float32", ...), or the dtype itself."""
    import torch

    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; use one of {list(DTYPES)}")
    return getattr(torch, dtype)


def available_threads() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1
