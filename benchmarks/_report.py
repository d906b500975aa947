"""What every benchmark script does the same way: timing calls, the machine line, tables, sections.

The benchmarks are scripts (`python benchmarks/<name>.py`), so their folder is on `sys.path` and they
import this module as `_report`. Rows carry the 1/5/15-minute load averages of when they were measured:
the development machine's 2 cores are shared, and a row timed under load is slower for reasons of its
own.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shlex
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

DEFAULT_OUTPUT = Path(__file__).resolve().parents[1] / "BENCHMARKS.md"


def time_calls(call, steps: int, warmup: int = 1) -> tuple[float, float]:
    """(seconds of the first call, which includes tracing/compilation; seconds per later call).

    `call` must block until its work is done (e.g. end in `.numpy()`), or only dispatch is timed.
    """
    start = time.perf_counter()
    call()
    first = time.perf_counter() - start
    for _ in range(max(warmup - 1, 0)):
        call()
    start = time.perf_counter()
    for _ in range(steps):
        call()
    return first, (time.perf_counter() - start) / steps


def time_interleaved(
    calls: Mapping[str, Callable[[], object]], rounds: int, warmup: int = 1, clock=time.perf_counter
) -> tuple[dict[str, float], dict[str, list[float]]]:
    """Times several calls in rounds, one call of each per round, so that load hits them alike.

    On shared cores a background job that starts halfway through a sequential run slows whichever
    mode runs then; interleaved, it slows every mode's calls of those rounds, and the per-mode
    median over rounds (`median`) drops them. The order rotates by one each round so that no call
    always follows the same one. Each call must block until its work is done.

    Returns:
      (seconds of each call's first run, which includes tracing; per name, the seconds of its
      `rounds` timed calls, in round order), after `warmup` - 1 more untimed calls of each.
    """
    names = list(calls)
    first = {}
    for name in names:
        start = clock()
        calls[name]()
        first[name] = clock() - start
    for _ in range(max(warmup - 1, 0)):
        for name in names:
            calls[name]()
    seconds = {name: [] for name in names}
    for index in range(rounds):
        shift = index % len(names)
        for name in names[shift:] + names[:shift]:
            start = clock()
            calls[name]()
            seconds[name].append(clock() - start)
    return first, seconds


def median(values: Sequence[float]) -> float:
    """The median (mean of the middle two for an even count)."""
    ordered = sorted(values)
    middle = len(ordered) // 2
    if len(ordered) % 2:
        return ordered[middle]
    return (ordered[middle - 1] + ordered[middle]) / 2


def add_output_arguments(parser: argparse.ArgumentParser) -> None:
    """`--output` (default BENCHMARKS.md) and `--no_append` (also `--no-append`): print only."""
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument(
        "--no_append", "--no-append", dest="no_append", action="store_true", help="print only"
    )


def names(parser: argparse.ArgumentParser, text: str, valid: Sequence[str], what: str) -> list[str]:
    """Comma-separated `text` as a list, each one of `valid`, else a parser error naming them."""
    chosen = [name for name in text.split(",") if name]
    if unknown := sorted(set(chosen) - set(valid)):
        parser.error(f"unknown {what} {unknown}; choose from {list(valid)}")
    return chosen


def load_average() -> str:
    """`os.getloadavg()` as "1m/5m/15m" (how busy the shared cores were)."""
    return "/".join(f"{value:.2f}" for value in os.getloadavg())


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo, else what `platform` knows."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_line(**versions: str) -> str:
    """`- machine: <host>, <cpu>, N logical CPUs; Python x, <name> <version>, ...`."""
    parts = [f"Python {platform.python_version()}"]
    parts += [f"{name} {version}" for name, version in versions.items()]
    return (
        f"- machine: {platform.node() or 'unknown'}, {cpu_name()}, {os.cpu_count()} logical CPUs; "
        + ", ".join(parts)
    )


def command(script: str, argv: Sequence[str] | None = None, prefix: Sequence[str] = ()) -> str:
    """The command line that reproduces this run, e.g. `python benchmarks/train.py --steps 2`."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    return shlex.join([*prefix, "python", f"benchmarks/{Path(script).name}", *arguments])


def timestamp() -> str:
    return datetime.datetime.now().strftime("%Y-%m-%d %H:%M")


def table(header: Sequence[str], rows: Iterable[Sequence]) -> list[str]:
    """A markdown table; floats keep the formatting the caller gave them (pass strings)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return lines


def append_section(
    path: Path | str, title: str, bullets: Sequence[str], body: Sequence[str]
) -> None:
    """Appends `## title`, the bullet lines and the body (tables, notes) to BENCHMARKS.md."""
    path = Path(path)
    lines = [] if path.exists() else ["# Benchmarks", ""]
    lines += ["", f"## {title}", "", *bullets, "", *body, ""]
    with open(path, "a", encoding="utf-8") as handle:
        handle.write("\n".join(lines))


def publish(arguments, title, bullets, body, *, script, argv, versions=None, prefix=()) -> None:
    """Appends the section unless `--no_append`: the machine and command lines, then `bullets`.

    Silent, so that the summary line a script prints stays its last line of output.

    `script`, `argv` and `prefix` (e.g. an environment assignment) give the command line;
    `versions` maps library names to the versions printed on the machine line.
    """
    if arguments.no_append:
        return
    head = [machine_line(**(versions or {})), f"- command: `{command(script, argv, prefix)}`"]
    append_section(arguments.output, title, [*head, *bullets], body)
