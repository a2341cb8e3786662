"""The fleet rate budget: 4 worker processes against a fake cloud that enforces a quota.

Four real worker processes each run a spawn / list / terminate loop through the RunPod
provider client (``create_compute``, ``list_compute``, ``terminate``: three REST v2
requests per iteration) against one fake cloud whose API key may send ``QUOTA`` requests
per minute. The same work runs twice in the same run, each against a fresh fake cloud
(a fresh quota window) and a flushed Redis:

* **without the budget** (``ATLAS_RATE_BUDGET=false``): every process retries its own 429s
  (``Retry-After`` honoured, capped by ``ATLAS_HTTP_MAX_BACKOFF_S``);
* **with the budget** (``ATLAS_RATE_BUDGET=true``): every request takes a token from the
  Redis bucket shared by the four processes, sized from the answers' ``RateLimit-Policy``,
  drained by ``RateLimit`` and paused fleet-wide by an exhausted window or a 429.

Reported: 429 answers the fake cloud sent, failed operations (a 429 after the retries ran
out), and the wall time from the common start to the last worker's end, with ratios.

Scale: the issue's set-up is 60 requests/minute per key; this runs at 600/minute with the
work scaled by the same factor (4 × 70 iterations × 3 requests = 840 requests, 1.4 × the
minute's quota, so each run must cross one quota window), because the quota window is a
minute either way and ten times fewer requests would measure mostly process start-up.
Each run takes a little over a minute; the whole benchmark about 2.5 minutes.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import redis

from atlas_tasks.testing.fakecloud import FakeCloud
from bench.common import Report

NAME = "rate_budget"
WORKERS = 4
QUOTA = 600  # requests per minute per key (the 60, scaled ×10)
ITERATIONS = 70  # per worker; 3 requests each
QUICK_ITERATIONS = 55

# Runs in each worker process: builds the provider from ATLAS_* settings, waits for the
# common start, loops, and prints one JSON line of counts.
WORKER = """
import json, sys, time
from atlas_tasks.config import AtlasSettings
from atlas_tasks.errors import AtlasError
from atlas_tasks.providers.registry import get_provider
from atlas_tasks.specs import build_compute_request

start_at, iterations, tag = float(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
seen = {"429": 0, "requests": 0}

def hook(info):
    seen["requests"] += 1
    if info.status == 429:
        seen["429"] += 1

provider = get_provider("runpod", settings=AtlasSettings(), hooks=(hook,))
failed = 0
while time.time() < start_at:
    time.sleep(0.002)
for i in range(iterations):
    try:
        pod = provider.create_compute(build_compute_request(
            gpu="h100", image="busybox", name=f"bench-{tag}-{i}"))
        provider.list_compute()
        provider.terminate(pod.id)
    except AtlasError as exc:
        failed += 1
        print(f"iteration {i}: {exc}", file=sys.stderr)
provider.close()
print(json.dumps({"429": seen["429"], "requests": seen["requests"], "failed": failed,
                  "end": time.time()}))
"""


def _redis_server(tmp: Path) -> tuple[subprocess.Popen[bytes], str]:
    """A throw-away redis-server on a free loopback port, its files in ``tmp``."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server is not on PATH")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    proc = subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(tmp),
            "--save",
            "",
            "--appendonly",
            "no",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            if redis.Redis.from_url(url).ping():
                return proc, url
        except (redis.RedisError, OSError):
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("redis-server did not start")


def _phase(redis_url: str, *, budget: bool, iterations: int) -> dict[str, Any]:
    """One run of the four workers against a fresh fake cloud; counts and wall time."""
    redis.Redis.from_url(redis_url).flushall()
    with FakeCloud(rate_limit_per_minute=QUOTA) as cloud:
        env = {
            **os.environ,
            **cloud.env(),
            "ATLAS_REDIS_URL": redis_url,
            "ATLAS_RATE_BUDGET": "true" if budget else "false",
            "ATLAS_RATE_BUDGET_MAX_WAIT_S": "120",
        }
        # Started together once every interpreter has imported atlas_tasks.
        start_at = time.time() + 6.0
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", WORKER, str(start_at), str(iterations), f"w{n}"],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for n in range(WORKERS)
        ]
        results = []
        for proc in procs:
            out, err = proc.communicate(timeout=300)
            if proc.returncode != 0:
                raise RuntimeError(f"worker failed: {err[-2000:]}")
            results.append(json.loads(out.strip().splitlines()[-1]))
        totals = cloud.state()["totals"]
    return {
        "budget": budget,
        "wall_s": round(max(r["end"] for r in results) - start_at, 2),
        "429_seen_by_workers": sum(r["429"] for r in results),
        "429_sent_by_cloud": int(totals.get("rate_limited", 0)),
        "requests_sent": sum(r["requests"] for r in results),
        "failed_iterations": sum(r["failed"] for r in results),
        "pods_created": int(totals.get("creates", 0)),
        "per_worker": results,
    }


def run(quick: bool = False) -> Report:
    """Run the rate-budget benchmark (both modes, same run)."""
    report = Report(NAME)
    iterations = QUICK_ITERATIONS if quick else ITERATIONS
    with tempfile.TemporaryDirectory() as tmp:
        server, url = _redis_server(Path(tmp))
        try:
            naive = _phase(url, budget=False, iterations=iterations)
            shared = _phase(url, budget=True, iterations=iterations)
        finally:
            server.terminate()
            server.wait(10)
    work = f"{WORKERS} workers × {iterations} × (spawn, list, terminate), quota {QUOTA}/min/key"
    n429, b429 = shared["429_sent_by_cloud"], naive["429_sent_by_cloud"]
    report.add(
        "429 answers, shared budget",
        n429,
        "count",
        baseline=b429,
        baseline_label="per-process retries",
        ratio=(n429 / b429) if b429 else None,
        note=work,
    )
    report.add(
        "total time, shared budget",
        shared["wall_s"],
        "s",
        baseline=naive["wall_s"],
        baseline_label="per-process retries",
        note="common start → last worker done",
    )
    report.add(
        "requests sent (attempts), shared budget",
        shared["requests_sent"],
        "count",
        baseline=naive["requests_sent"],
        baseline_label="per-process retries",
    )
    report.add(
        "failed iterations (429 after retries), shared budget",
        shared["failed_iterations"],
        "count",
        baseline=naive["failed_iterations"],
        baseline_label="per-process retries",
    )
    report.details = {"without_budget": naive, "with_budget": shared}
    return report


def main() -> None:
    """``python -m bench.bench_rate_budget``: run once and print the figures as JSON."""
    report = run()
    print(
        json.dumps(
            {
                "figures": [f.as_dict() for f in report.figures],  # noqa: T201
                "details": report.details,
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
