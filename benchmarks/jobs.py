"""Training throughput of one process on every core against one process per core (`ablation --jobs`).

`python -m deepnoise_tf.ablation --protocol ...` trains its (design, seed) units `--jobs` at a time,
one process each with an equal share of the cores (`deepnoise_tf/ablation_jobs.py`). This measures
why: the plain step of `benchmarks/train.py` (64 px, width 1/8, batch 32 by default: the CPU
recipe's model) in three layouts, each timed by `train.py` itself (median step over `--steps`):

- `one process, all cores`: one `train.py` with `--intra_op_threads` = the cores;
- `one process, one core`: the same with one thread;
- `one process per core`: that many one-thread `train.py` at once, started together; their
  images/s add up.

The line to follow is `jobs_benchmark_summary ... gain=X`: the images/s of one process per core over
those of one process on all cores, i.e. how much sooner a protocol of many trainings ends.

    python benchmarks/jobs.py --steps 24   # ~2 min on 2 cores
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import _report

HERE = Path(__file__).resolve().parent
RATE = re.compile(r"train_benchmark mode=plain .*?step_images_per_s=([0-9.]+)")


def train_command(arguments, threads: int) -> list[str]:
    """`benchmarks/train.py` timing the plain step alone with `threads` TensorFlow threads."""
    return [
        sys.executable, str(HERE / "train.py"), "--settings", arguments.setting, "--modes",
        "plain", "--steps", str(arguments.steps), "--warmup", "2", "--intra_op_threads",
        str(threads), "--inter_op_threads", "1", "--data_root", arguments.data_root, "--no_append",
    ]  # fmt: skip


def images_per_second(output: str) -> float:
    """The plain step's images/s that `train.py` printed."""
    match = RATE.search(output)
    if match is None:
        raise RuntimeError(f"benchmarks/train.py printed no plain-step rate:\n{output[-2000:]}")
    return float(match.group(1))


def run_together(commands: list[list[str]]) -> list[float]:
    """Starts every command at once and returns each one's images/s."""
    processes = [
        subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for command in commands
    ]
    outputs = [process.communicate()[0] for process in processes]
    for process, output in zip(processes, outputs, strict=True):
        if process.returncode:
            raise RuntimeError(
                f"benchmarks/train.py failed ({process.returncode}):\n{output[-2000:]}"
            )
    return [images_per_second(output) for output in outputs]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--setting", default="64:0.125:32", help="size:width:batch (train.py's)")
    parser.add_argument("--steps", type=int, default=24, help="timed steps of each train.py run")
    parser.add_argument("--cores", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--data_root", default=str(HERE.parent / "runs" / "benchmarks"))
    _report.add_output_arguments(parser)
    arguments = parser.parse_args(argv)
    start = time.perf_counter()
    loads = [_report.load_average()]
    [all_cores] = run_together([train_command(arguments, arguments.cores)])
    [one_core] = run_together([train_command(arguments, 1)])
    per_core = run_together([train_command(arguments, 1)] * arguments.cores)
    loads.append(_report.load_average())
    gain = sum(per_core) / all_cores
    rows = [
        ("one process, all cores", 1, arguments.cores, f"{all_cores:.1f}", "1.00"),
        ("one process, one core", 1, 1, f"{one_core:.1f}", f"{one_core / all_cores:.2f}"),
        ("one process per core", arguments.cores, 1, " + ".join(f"{rate:.1f}" for rate in per_core),
         f"{gain:.2f}"),
    ]  # fmt: skip
    total = time.perf_counter() - start
    body = _report.table(("layout", "processes", "threads each", "images/s", "vs all cores"), rows)
    bullets = [
        f"- setting {arguments.setting} (size:width:batch), plain step, median of {arguments.steps} "
        f"steps per run; load (1m/5m/15m) before {loads[0]}, after {loads[1]}; {total:.0f} s",
    ]
    print("\n".join(body), flush=True)
    print(
        f"jobs_benchmark_summary setting={arguments.setting} cores={arguments.cores} "
        f"all_cores={all_cores:.1f}img/s one_core={one_core:.1f}img/s "
        f"per_core_total={sum(per_core):.1f}img/s gain={gain:.2f} total_s={total:.0f}",
        flush=True,
    )
    _report.publish(
        arguments, f"Protocol jobs: one process per core ({_report.timestamp()[:10]})", bullets,
        body, script=__file__, argv=argv,
    )  # fmt: skip


if __name__ == "__main__":
    main()
