"""Shared helpers of the benchmarks: figures, percentiles, paired timing, Redis stats, RSS.

Every benchmark reports :class:`Figure` rows. A figure compares a measured value with a
baseline measured *in the same run* (this machine is small and shared, so absolute numbers
drift from run to run while same-run ratios stay meaningful), and may carry a target.
"""

from __future__ import annotations

import os
import platform
import random
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import redis


@dataclass
class Figure:
    """One reported number.

    Attributes:
        bench: benchmark name (``touch``, ``reaper``...).
        name: what was measured.
        value: the measured value, in ``unit``.
        unit: ``us``, ``ms``, ``s``, ``B``, ``ops/s``, ``x``, ``count``...
        baseline: the same-run baseline value (same unit), if any.
        baseline_label: what the baseline is.
        ratio: ``value / baseline`` (or the figure's own ratio when ``unit == "x"``).
        target: human-readable target, e.g. ``ratio <= 1.3``.
        ok: whether the target was met (None when there is no target).
        note: anything a reader needs to interpret the number.
    """

    bench: str
    name: str
    value: float
    unit: str
    baseline: float | None = None
    baseline_label: str = ""
    ratio: float | None = None
    target: str = ""
    ok: bool | None = None
    note: str = ""

    def as_dict(self) -> dict[str, Any]:
        """JSON-safe dict."""
        return asdict(self)


@dataclass
class Report:
    """What one benchmark returns: its figures plus free-form details for the JSON."""

    bench: str
    figures: list[Figure] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    def add(self, name: str, value: float, unit: str, **kwargs: Any) -> Figure:
        """Append a figure (``ratio`` is computed from ``baseline`` unless given)."""
        baseline = kwargs.get("baseline")
        if kwargs.get("ratio") is None and baseline:
            kwargs["ratio"] = value / baseline
        fig = Figure(self.bench, name, value, unit, **kwargs)
        self.figures.append(fig)
        return fig


# --------------------------------------------------------------------------- statistics


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..100) of a non-empty sequence."""
    if not values:
        raise ValueError("percentile of an empty sequence")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def median(values: Sequence[float]) -> float:
    """The median (mean of the two middle values for even lengths)."""
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def distribution(values: Sequence[float]) -> dict[str, float]:
    """count, min, p50, p95, p99, max."""
    return {
        "count": len(values),
        "min": min(values),
        "p50": percentile(values, 50),
        "p95": percentile(values, 95),
        "p99": percentile(values, 99),
        "max": max(values),
    }


def paired_rounds(
    ops: dict[str, Callable[[int], None]], *, rounds: int, batch: int
) -> dict[str, list[float]]:
    """Time each op over ``batch`` calls, ``rounds`` times, in a shuffled order per round.

    Returns seconds per call for each round and op. Interleaving every op in every round
    means a burst of noise from another process hits all ops alike, so per-round ratios
    against the baseline stay meaningful on a busy machine.
    """
    out: dict[str, list[float]] = {name: [] for name in ops}
    names = list(ops)
    for _ in range(rounds):
        random.shuffle(names)
        for name in names:
            fn = ops[name]
            start = time.perf_counter()
            fn(batch)
            out[name].append((time.perf_counter() - start) / batch)
    return out


def paired_ratio(samples: dict[str, list[float]], name: str, baseline: str) -> float:
    """Median over rounds of ``name / baseline`` (both measured in the same round)."""
    return median([a / b for a, b in zip(samples[name], samples[baseline], strict=True)])


# --------------------------------------------------------------------------- redis


def command_calls(client: redis.Redis) -> dict[str, int]:
    """``INFO commandstats`` as command → calls (script-internal calls included)."""
    stats = client.info("commandstats")
    return {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in stats.items()}


def command_delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    """Calls made between two :func:`command_calls` snapshots, minus the INFO itself."""
    delta = {k: after.get(k, 0) - before.get(k, 0) for k in after}
    delta["info"] = delta.get("info", 0) - 1
    return {k: v for k, v in sorted(delta.items()) if v > 0}


def count_commands(
    client: redis.Redis, fn: Callable[[], Any]
) -> tuple[dict[str, int], dict[str, int]]:
    """Run ``fn``; return (commands this process sent, every command Redis executed).

    The first counts round trips by wrapping redis-py's ``send_command`` (so an EVALSHA
    counts once); the second is the ``INFO commandstats`` delta, which also counts each
    ``redis.call`` made inside a Lua script.
    """
    from redis.connection import AbstractConnection

    sent: dict[str, int] = {}
    original = AbstractConnection.send_command

    def counting(self: AbstractConnection, *args: Any, **kwargs: Any) -> None:
        name = str(args[0]).lower() if args else "?"
        sent[name] = sent.get(name, 0) + 1
        original(self, *args, **kwargs)

    before = command_calls(client)
    AbstractConnection.send_command = counting  # type: ignore[method-assign]
    try:
        fn()
    finally:
        AbstractConnection.send_command = original  # type: ignore[method-assign]
    after = command_calls(client)
    return sent, command_delta(before, after)


def used_memory(client: redis.Redis) -> int:
    """``INFO memory`` ``used_memory`` in bytes."""
    return int(client.info("memory")["used_memory"])


# --------------------------------------------------------------------------- processes


def group_rss_kb(pgid: int) -> int:
    """Sum of VmRSS (kB) over every process in process group ``pgid`` (Linux /proc)."""
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                stat = fh.read()
            # Field 5 is pgrp; the command name (field 2) may contain spaces, so split
            # after its closing parenthesis.
            fields = stat[stat.rindex(")") + 2 :].split()
            if int(fields[2]) != pgid:
                continue
            with open(f"/proc/{entry}/status") as fh:
                for line in fh:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
                        break
        except (OSError, ValueError, IndexError):
            continue  # the process ended while we looked
    return total


def cpu_seconds(pid: int) -> float:
    """utime + stime of one process, in seconds (0 if it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            stat = fh.read()
    except OSError:
        return 0.0
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def group_cpu_seconds(pgid: int) -> float:
    """CPU seconds used so far by every live process of process group ``pgid``."""
    total = 0.0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                stat = fh.read()
            fields = stat[stat.rindex(")") + 2 :].split()
            if int(fields[2]) == pgid:
                total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, ValueError, IndexError):
            continue
    return total


# --------------------------------------------------------------------------- environment


def machine_info() -> dict[str, Any]:
    """nproc, load, memory, Python, redis-server version, date (UTC)."""
    exe = shutil.which("redis-server")
    version = ""
    if exe:
        out = subprocess.run([exe, "--version"], capture_output=True, text=True, check=False)
        version = out.stdout.strip()
    mem_kb = 0
    try:
        with open("/proc/meminfo") as fh:
            mem_kb = int(fh.readline().split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return {
        "date_utc": datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S"),
        "nproc": os.cpu_count(),
        "loadavg": list(os.getloadavg()),
        "mem_total_mb": mem_kb // 1024,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "redis_server": version,
    }


@contextmanager
def atlas_env(**values: str) -> Iterator[None]:
    """Temporarily set ``ATLAS_*`` variables and reset atlas settings/Redis clients."""
    from atlas_tasks.config import reset_settings
    from atlas_tasks.redis_conn import reset_redis_clients

    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    reset_settings()
    reset_redis_clients()
    try:
        yield
    finally:
        for key, old in saved.items():
            if old is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = old
        reset_settings()
        reset_redis_clients()


def redis_now_ms(client: redis.Redis) -> int:
    """Redis server time in ms (the registry's clock)."""
    sec, usec = client.time()
    return int(sec) * 1000 + int(usec) // 1000


def machine_cpu_seconds() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far, all cores (``/proc/stat``).

    Busy is everything but idle and iowait; the delta of two readings over their wall time
    tells how close to CPU-bound the machine was (``busy / wall`` out of ``nproc``).
    """
    with open("/proc/stat") as fh:
        fields = [int(x) for x in fh.readline().split()[1:]]
    tick = os.sysconf("SC_CLK_TCK")
    total = sum(fields[:8])  # user nice system idle iowait irq softirq steal
    idle = fields[3] + fields[4]
    return (total - idle) / tick, total / tick
