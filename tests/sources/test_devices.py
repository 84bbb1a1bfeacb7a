"""`sources/devices.py`: dtype names, the default device and the CPU threads this process may use."""

import os

import pytest
import torch

from iclgd_lens.sources.devices import DTYPES, available_threads, default_device, resolve_dtype


def test_dtype_names_resolve_and_an_unknown_one_is_refused():
    assert [resolve_dtype(name) for name in DTYPES] == [torch.float32, torch.float16, torch.bfloat16]
    assert resolve_dtype(torch.float16) is torch.float16
    with pytest.raises(ValueError, match="unknown dtype 'fp16'; use one of"):
        resolve_dtype("fp16")


def test_the_default_device_and_threads_are_this_machines():
    assert default_device() == ("cuda" if torch.cuda.is_available() else "cpu")
    assert available_threads() == len(os.sched_getaffinity(0)) >= 1
