"""The protocol's trainings side by side: one process per (design, seed), `--jobs N` at a time.

Why: at CPU scale one training hardly uses a second core. On the 2-core VM the plain training step
of the CPU recipe's model (64 px, width 1/8, batch 32) runs at 305 images/s on two threads and 270
on one, while two one-thread processes side by side run at 251 + 246 (BENCHMARKS.md, "Protocol
jobs", `benchmarks/jobs.py`): N trainings in N processes, each with cores/N threads, finish a
protocol of many trainings about 1.6 times sooner on 2 cores.

A unit writes only inside its own folder (`DIR/<design>/seed_<seed>/`): the parent makes each
design's data and fits its floors before, and scores the cached logits after
(`ablation_protocol.run_protocol`). Each unit gets a fresh process (spawned, not forked: TensorFlow's
runtime does not survive a fork), so no graph or thread pool is shared and a unit's memory is given
back when it ends. With one job everything runs in the calling process, as before.

This module imports no TensorFlow at the top: a worker sets its thread counts (and hides the
start-up lines, `quiet`) before TensorFlow starts.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import pathlib


@dataclasses.dataclass(frozen=True)
class Unit:
    """One (design, seed): the training steps `names` of `configs` in `root`, logged with `prefix`.

    `trainer`/`evaluator` None: `ablation_training`'s defaults (resolved in the worker, so that
    unpickling a unit imports no TensorFlow).
    """

    names: tuple[str, ...]
    configs: dict
    root: str
    prefix: str
    report_split: str
    trainer: object = None
    evaluator: object = None


def usable_cores() -> int:
    """The cores this process may run on (its affinity where the OS says, else the CPU count)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def threads_per_job(jobs: int, cores: int | None = None) -> int:
    """TensorFlow threads for each of `jobs` processes sharing `cores`: an equal share, at least 1."""
    if jobs < 1:
        raise ValueError(f"jobs must be at least 1, got {jobs}")
    return max(1, (usable_cores() if cores is None else cores) // jobs)


def run_unit(unit: Unit) -> None:
    """Trains (or finds cached) every step of `unit` in this process; frozen recipe as the protocol."""
    from deepnoise_tf import ablation_steps
    from deepnoise_tf.ablation_training import default_evaluator, default_trainer

    ablation_steps.run_steps(
        list(unit.names), unit.configs, pathlib.Path(unit.root), trainer=unit.trainer or default_trainer,
        evaluator=unit.evaluator or default_evaluator, report_split=unit.report_split,
        prefix=unit.prefix, frozen=True,
    )  # fmt: skip


def _worker(unit: Unit, threads: int, verbose: bool) -> str:
    """A spawned process's whole life: quiet start-up, `threads` TensorFlow threads, one unit."""
    from deepnoise_tf import quiet

    quiet.configure([quiet.VERBOSE_FLAG] if verbose else [])
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(threads)
    run_unit(unit)
    return unit.prefix


def run_units(units, *, jobs: int = 1, verbose: bool = False) -> None:
    """Runs every unit, `jobs` at a time (1: in this process, in order).

    A unit that fails fails the whole call once every started unit has ended; what the others
    finished stays cached, so a rerun resumes (`ablation_steps.run_steps`).
    """
    units = list(units)
    threads = threads_per_job(jobs)
    if jobs == 1 or len(units) <= 1:
        for unit in units:
            run_unit(unit)
        return
    context = multiprocessing.get_context("spawn")
    with context.Pool(processes=min(jobs, len(units)), maxtasksperchild=1) as pool:
        pending = [(unit, pool.apply_async(_worker, (unit, threads, verbose))) for unit in units]
        failures = []
        for unit, result in pending:
            try:
                result.get()
            except Exception as error:  # noqa: BLE001 - reported with its unit, then raised
                failures.append((unit, error))
        pool.close()
        pool.join()
    if failures:
        unit, error = failures[0]
        names = ", ".join(failed.prefix.rstrip(": ") for failed, _ in failures)
        raise RuntimeError(
            f"{len(failures)} of {len(units)} protocol units failed ({names}); the first: "
            f"{type(error).__name__}: {error}. Finished steps are cached: rerun to resume."
        ) from error
