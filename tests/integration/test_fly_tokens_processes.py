"""Single-flight ``fly tokens create`` across processes sharing one Redis."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from atlas_tasks.sealing import generate_key

pytestmark = pytest.mark.integration

FAKE_FLY = """\
import os, sys, time
with open(os.environ["FAKE_FLY_LOG"], "a") as log:
    log.write(" ".join(sys.argv[1:]) + "\\n")
time.sleep(0.7)
print(f"FlyV1 cli-{os.getpid()}")
"""

# Each process waits for the go file, then resolves the token once and prints the result.
RESOLVE = """\
import json, os, sys, time
from atlas_tasks.fly.tokens import FlyTokens
go = sys.argv[1]
tokens = FlyTokens()
open(f"{go}.ready.{os.getpid()}", "w").close()
while not os.path.exists(go):
    time.sleep(0.005)
r = tokens.resolve("my-app")
print(json.dumps({"token": r.token, "source": r.source}))
"""


def test_cli_runs_once_across_processes(tmp_path: Path, redis_url: str) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fly = bin_dir / "fly"
    fly.write_text(f"#!{sys.executable}\n{FAKE_FLY}")
    fly.chmod(fly.stat().st_mode | stat.S_IXUSR)
    log = tmp_path / "calls.log"
    log.touch()
    go = tmp_path / "go"
    env = {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        "FAKE_FLY_LOG": str(log),
        "ATLAS_REDIS_URL": redis_url,
        "ATLAS_SECRET_KEY": generate_key(),
        "ATLAS_FLY_TOKEN_STORE": "redis",
        "ATLAS_FLY_CONFIG_FILE_ENABLED": "false",
    }
    env.pop("FLY_API_TOKEN", None)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", RESOLVE, str(go)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(5)
    ]
    deadline = time.monotonic() + 30  # every interpreter started and waits at the line
    while len(list(tmp_path.glob("go.ready.*"))) < len(procs) and time.monotonic() < deadline:
        time.sleep(0.02)
    go.touch()
    outputs = []
    for proc in procs:
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
        outputs.append(json.loads(out.strip().splitlines()[-1]))
    assert log.read_text().splitlines() == ["tokens create readonly -a my-app"]
    assert len({o["token"] for o in outputs}) == 1
    assert outputs[0]["token"].startswith("FlyV1 cli-")
    assert {o["source"] for o in outputs} == {"cli"}
