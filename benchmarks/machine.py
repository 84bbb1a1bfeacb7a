"""The machine while timing: this process's resident memory (peak per stage) and the CPU time other processes use.

Timing needs a quiet machine: the benchmark samples the CPU time of other processes and refuses to start when they
keep more than half a core busy (`--allow-busy` times anyway and prints the load beside the numbers).
"""

from __future__ import annotations

import ctypes
import gc
import os
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import torch

BUSY_CORES = 0.5  # other processes' CPU use above which timing is refused (or flagged)

Sample = tuple[float, int, int]  # (monotonic seconds, all CPUs' busy ticks, this process's ticks)


class Monitor:
    """Samples, in a background thread, this process's resident memory (peak per `stage`) and the CPU time that
    other processes use (from /proc/stat less this process's own), so that a timing taken on a busy machine says so.
    """

    def __init__(self, interval_s: float = 0.05, load_every_s: float = 1.0) -> None:
        self.interval_s, self.load_every_s = interval_s, load_every_s
        self.peak_rss = 0
        self.others_cores: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Monitor:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    @contextmanager
    def stage(self, name: str) -> Iterator[dict]:
        """Wall seconds and peak resident bytes of the block (CUDA: peak allocated bytes too), printed as it ends."""
        out: dict = {}
        release_free_memory()
        self.peak_rss = rss_bytes()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        yield out
        if torch.cuda.is_available():
            torch.cuda.synchronize()
            out["peak_cuda_bytes"] = torch.cuda.max_memory_allocated()
        out["seconds"] = time.perf_counter() - start
        out["peak_rss_bytes"] = max(self.peak_rss, rss_bytes())
        print(f"bench: {name}: {out['seconds']:.1f} s, peak {gib(out['peak_rss_bytes'])}", file=sys.stderr, flush=True)

    def _run(self) -> None:
        last = cpu_sample()
        while not self._stop.wait(self.interval_s):
            self.peak_rss = max(self.peak_rss, rss_bytes())
            if time.monotonic() - last[0] >= self.load_every_s:
                current = cpu_sample()
                self.others_cores.append(others_cores(last, current))
                last = current


def check_quiet(allow_busy: bool, seconds: float = 2.0) -> float:
    """Other processes' CPU use over `seconds`; refuses to go on above BUSY_CORES unless `allow_busy`."""
    before = cpu_sample()
    time.sleep(seconds)
    load = others_cores(before, cpu_sample())
    if load > BUSY_CORES and not allow_busy:
        sys.exit(
            f"bench: other processes keep {load:.1f} cores busy: timings would measure them too. Wait until they "
            "finish, or pass --allow-busy to time anyway (the load is then printed beside the numbers)."
        )
    return load


def others_cores(before: Sample, after: Sample) -> float:
    """Cores kept busy by other processes between two samples."""
    ticks = os.sysconf("SC_CLK_TCK")
    seconds = after[0] - before[0]
    return max(0.0, ((after[1] - before[1]) - (after[2] - before[2])) / ticks / seconds)


def cpu_sample() -> Sample:
    return time.monotonic(), busy_jiffies(), own_jiffies()


def busy_jiffies() -> int:
    """All CPUs' non-idle time since boot (user, nice, system, irq, softirq, steal), in clock ticks."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    return sum(values[:3]) + sum(values[5:8])


def own_jiffies() -> int:
    """This process's CPU time (all its threads, user + system), in clock ticks."""
    with open("/proc/self/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def release_free_memory() -> None:
    """Hand freed heap memory back to the OS (glibc keeps it otherwise), so that a stage's resident peak counts its
    own allocations and the live data, not what an earlier stage freed."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: the peak may include memory freed earlier
        pass


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def gib(b: float) -> str:
    return f"{b / 2**30:.2f} GiB"
