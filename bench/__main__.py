"""Run the benchmarks: ``python -m bench [--quick] [--only NAME ...]``.

Prints one rich table of every figure (value, same-run baseline, ratio, target) and
writes everything, with machine info, to ``bench/results.json``. Benchmarks are imported
lazily, so one that is missing (``bench_jobs`` is written separately) is skipped with a
note instead of breaking the run.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from bench.common import Figure, Report, machine_info

#: Run order: cheap in-process benchmarks first, cluster ones after.
BENCHMARKS = [
    "touch",
    "reaper",
    "events",
    "memory",
    "idle_latency",
    "spawn_burst",
    "jobs",
    "rate_budget",
    "cost_meter",
    "scale",
    "scale_cluster",
    "spawn_scale",
]
RESULTS_PATH = Path(__file__).with_name("results.json")


def _as_report(name: str, result: Any) -> Report:
    """Accept a Report, a list of Figures / dicts, or a dict (for ``bench_jobs``)."""
    if isinstance(result, Report):
        return result
    report = Report(name)
    rows: list[Any]
    if isinstance(result, dict) and "figures" in result:
        rows = list(result["figures"])
        report.details = {k: v for k, v in result.items() if k != "figures"}
    elif isinstance(result, dict):
        report.details = result
        rows = []
    else:
        rows = list(result or [])
    for row in rows:
        if isinstance(row, Figure):
            report.figures.append(row)
        elif isinstance(row, dict):
            known = {k: row[k] for k in Figure.__dataclass_fields__ if k in row}
            known.setdefault("bench", name)
            known.setdefault("name", str(row.get("metric", "?")))
            known.setdefault("value", float("nan"))
            known.setdefault("unit", "")
            report.figures.append(Figure(**known))
        elif hasattr(row, "as_dict"):
            report.figures.append(Figure(**row.as_dict()))
    return report


def _run_module(name: str, module: Any, quick: bool) -> Report:
    """Call ``module.run(quick=...)``; a module with only a CLI ``main(argv)`` (such as
    ``bench_jobs``) is run with ``--json <tmp>`` and its JSON becomes the details, with
    its ``ratios`` as figures."""
    if hasattr(module, "run"):
        return _as_report(name, module.run(quick=quick))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "out.json"
        argv = ["--json", str(path)] + (["--jobs", "100", "--noop", "100"] if quick else [])
        code = module.main(argv)
        data = json.loads(path.read_text()) if path.exists() else {}
    report = Report(name, details=data)
    for key, value in (data.get("ratios") or {}).items():
        if isinstance(value, int | float):
            report.add(key, float(value), "x", note="see bench/RESULTS.md section 7")
    if code:
        report.add("exit code", float(code), "count", ok=False)
    return report


def _fmt(value: float | None, unit: str = "") -> str:
    if value is None:
        return ""
    if value != value:  # NaN
        return "n/a"
    if unit == "x" or abs(value) < 10:
        text = f"{value:.2f}"
    elif abs(value) < 1000:
        text = f"{value:.1f}"
    else:
        text = f"{value:,.0f}"
    return f"{text} {unit}".strip()


def _table(reports: list[Report]) -> Table:
    table = Table(title="atlas_tasks benchmarks (ratios vs same-run baselines)")
    for col in ("bench", "figure", "value", "baseline", "ratio", "target", "ok"):
        table.add_column(col, overflow="fold")
    for report in reports:
        for f in report.figures:
            ok = "" if f.ok is None else ("[green]yes[/]" if f.ok else "[red]NO[/]")
            ratio = "" if f.ratio is None else f"{f.ratio:.2f}×"
            base = (
                f"{_fmt(f.baseline, f.unit)} {f.baseline_label}".strip()
                if (f.baseline is not None)
                else ""
            )
            table.add_row(f.bench, f.name, _fmt(f.value, f.unit), base, ratio, f.target, ok)
    return table


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the process exit code (1 if a benchmark crashed)."""
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes (under a minute)")
    parser.add_argument(
        "--only",
        action="append",
        choices=BENCHMARKS,
        metavar="NAME",
        help=f"run only this benchmark (repeatable): {', '.join(BENCHMARKS)}",
    )
    parser.add_argument("--output", type=Path, default=RESULTS_PATH, help="JSON output path")
    args = parser.parse_args(argv)
    console = Console()
    if not console.is_terminal:
        console = Console(width=170)  # logs and pipes: keep one figure per line
    info = machine_info()
    console.print(
        f"[bold]machine[/]: {info['nproc']} cpus, load {info['loadavg']}, "
        f"{info['redis_server'][:40]}, python {info['python']}"
    )
    reports: list[Report] = []
    notes: list[str] = []
    failed = False
    started = time.perf_counter()
    for name in args.only or BENCHMARKS:
        try:
            module = importlib.import_module(f"bench.bench_{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"bench.bench_{name}":
                note = f"{name}: skipped (bench/bench_{name}.py not present)"
                console.print(f"[yellow]{note}[/]")
                notes.append(note)
                continue
            raise
        console.print(f"[bold]running {name}[/] {'(quick)' if args.quick else ''}")
        t0 = time.perf_counter()
        try:
            report = _run_module(name, module, args.quick)
        except Exception:
            failed = True
            console.print(f"[red]{name} crashed[/]\n{traceback.format_exc()}")
            notes.append(f"{name}: crashed: {traceback.format_exc(limit=3)}")
            continue
        report.seconds = time.perf_counter() - t0
        console.print(f"  {name} done in {report.seconds:.1f}s")
        reports.append(report)
    console.print(_table(reports))
    total = time.perf_counter() - started
    console.print(f"total {total:.1f}s; JSON in {args.output}")
    for note in notes:
        console.print(f"[yellow]note[/]: {note}")
    payload = {
        "machine": info,
        "quick": args.quick,
        "total_seconds": round(total, 1),
        "notes": notes,
        "benchmarks": {
            r.bench: {
                "seconds": round(r.seconds, 1),
                "figures": [f.as_dict() for f in r.figures],
                "details": r.details,
            }
            for r in reports
        },
    }
    if args.only and args.output.exists():
        # Keep the other benchmarks' last results when only some were re-run.
        try:
            previous = json.loads(args.output.read_text())
            merged = previous.get("benchmarks", {})
            merged.update(payload["benchmarks"])
            payload["benchmarks"] = merged
        except (ValueError, OSError):
            pass
    args.output.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
