"""Audit plugin: run any tests in the tagged layout under :class:`SlotChecker` and list
every cross-slot step they sent (an audit aid, not a test: it fails nothing).

    .venv/bin/python -m pytest -p tests.support.slots_audit tests/unit/test_x.py

Every test then sees ``registry_shards == 16`` (what ``redis+cluster://`` implies), so
tests asserting untagged key names may fail; the report at the end of the session (also
written to ``$SLOTS_AUDIT_OUT`` when set) is what counts: each cross-slot step once, with
the first test that sent it. Keys built inside Lua from ARGV are not seen (see
:mod:`tests.support.slots`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator

import pytest
import redis

from atlas_tasks.config import AtlasSettings
from tests.support.slots import SlotChecker

_found: dict[str, str] = {}


def _shape(text: str) -> str:
    # Ids differ from call to call; the shape of a step is what the report lists.
    return re.sub(r"(?<=[:{])[0-9a-f-]{8,}|(?<=:)[A-Za-z0-9_-]*\d[A-Za-z0-9_-]*", "<id>", text)


@pytest.fixture(autouse=True)
def _slots_audit(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(AtlasSettings, "registry_shards", property(lambda self: 16))
    if "redis_server" not in request.fixturenames:
        yield
        return
    server = request.getfixturevalue("redis_server")
    client = redis.Redis.from_url(server.url, decode_responses=True)
    checker = SlotChecker(client)
    with checker.installed(monkeypatch):
        yield
    for violation in checker.violations:
        _found.setdefault(_shape(str(violation)), request.node.nodeid)
    for name in checker.keyless:
        _found.setdefault(f"keyless script {name} (fine if it touches no key)", request.node.nodeid)
    client.close()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """The report: each cross-slot step shape, and the first test that sent it."""
    lines = [f"{step}\n    first seen in {test}" for step, test in sorted(_found.items())]
    terminalreporter.section(f"cross-slot steps: {len(lines)}")
    for line in lines:
        terminalreporter.write_line(line)
    out = os.environ.get("SLOTS_AUDIT_OUT")
    if out:
        with open(out, "w") as handle:
            handle.write("\n".join(lines) + "\n")
