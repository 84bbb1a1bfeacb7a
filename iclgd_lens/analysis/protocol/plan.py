"""The papers' protocol: which (seed, permutation, lr) runs a sweep makes per task (docs/reproduction.md).

Light: no torch. The command line reads it for `--help` and checks a sweep against it before anything loads.
"""

from __future__ import annotations

from dataclasses import dataclass

PAPER_RUNS = 3  # Revisited: three (seed, permutation) runs per task
# Revisited's 1.3B settings (its committed logs: seed s with permutation 0, s + 1 with 1, s + 2 with 2).
PAPER_SETTINGS: dict[str, tuple[int, float]] = {  # task -> (first seed, learning rate)
    "sst2": (2, 5e-4),
    "sst5": (5, 1.6e-4),
    "mr": (5, 3e-3),
    "subj": (4, 3e-3),
    "agnews": (3, 0.2),
    "cb": (3, 0.08),
}
# Tasks that stand in for a paper task take its settings: the synthetic tasks, and the Rotten Tomatoes snippets
# (MR's sentences come from the same source; same template and label words).
PAPER_TASK_OF = {f"synth-{name}": name for name in PAPER_SETTINGS} | {"rt-snippets": "mr"}


@dataclass(frozen=True)
class Run:
    """One comparison of a sweep: saved as one result folder."""

    task: str
    seed: int
    permutation: int
    lr: float | None  # None: chosen by the learning-rate search
    paper: bool = False  # one of the papers' own (seed, permutation) runs

    @property
    def name(self) -> str:
        return f"{self.task}/seed{self.seed}-perm{self.permutation}"


def paper_task(task: str) -> str | None:
    """The paper task whose settings `task` takes, or None."""
    return task if task in PAPER_SETTINGS else PAPER_TASK_OF.get(task)


def plan_runs(tasks: list[str], runs: str, lr: str) -> list[Run]:
    """`runs`: "paper" (each task's paper seeds, permutations 0, 1, 2), "paper:N" (N runs that continue the
    papers' sequence: seed s + i with permutation i, the first three being the papers' own) or a count N (seeds
    0..N-1 with permutations 0..N-1). `lr`: "paper", "search" or a number. Errors name the task that cannot
    follow."""
    if not tasks:
        raise ValueError("give at least one task")
    if len(set(tasks)) != len(tasks):
        raise ValueError(f"tasks {tasks} repeat a task")
    from_paper = runs == "paper" or runs.startswith("paper:")
    n_runs = PAPER_RUNS
    if runs != "paper":
        try:
            n_runs = int(runs.removeprefix("paper:"))
        except ValueError:
            raise ValueError(f"--runs takes 'paper', 'paper:N' or a number of runs, got {runs!r}") from None
        if n_runs < 1:
            raise ValueError(f"--runs must be >= 1, got {runs}")
    fixed_lr = None
    if lr not in ("paper", "search"):
        try:
            fixed_lr = float(lr)
        except ValueError:
            raise ValueError(f"--lr takes 'paper', 'search' or a number, got {lr!r}") from None
        if not fixed_lr > 0 or fixed_lr == float("inf"):
            raise ValueError(f"--lr must be a positive finite number, got {lr}")
    plan = []
    for task in tasks:
        paper = paper_task(task)
        if paper is None and (from_paper or lr == "paper"):
            raise ValueError(
                f"task {task!r} has no paper setting (those exist for {sorted(PAPER_SETTINGS)}, their synth- "
                f"versions and rt-snippets); use --runs N and --lr search or a number for it"
            )
        first_seed, paper_lr = PAPER_SETTINGS[paper] if paper else (0, None)
        seed0 = first_seed if from_paper else 0
        run_lr = paper_lr if lr == "paper" else fixed_lr
        plan += [Run(task, seed0 + i, i, run_lr, from_paper and i < PAPER_RUNS) for i in range(n_runs)]
    return plan
