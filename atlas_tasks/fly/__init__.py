"""Fly.io platform ops: app discovery, ``fly deploy`` as a Celery task, log tailing, tokens.

Caller side (web process; enqueues, never runs flyctl)::

    from atlas_tasks import fly

    fly.discover_apps("/srv/project")              # [("api", "/srv/project/api"), ...]
    ticket = fly.enqueue_deploy("/srv/project", "api")
    for event in fly.subscribe_deploy(ticket):     # replay + live; ends after "exit"
        if event.type == "line":
            print(event.data["line"])
        elif event.type == "exit":
            ok = event.data["ok"]

    for entry in fly.subscribe_logs("api"):        # starts the app's streamer if needed
        print(entry.timestamp, entry.message)

    fly.tokens.get("api"); fly.tokens.set_manual("api", "FlyV1 ...")

Worker side: the tasks ``atlas.fly.deploy`` and ``atlas.fly.logs_poll`` (queue ``fly``,
:mod:`atlas_tasks.tasks.fly`). :func:`stream_deploy` runs a deploy in this process.

Modules, one shape like every feature: ``client`` (caller side: enqueue, subscribe),
``service`` (the Celery-free logic of deploys and of the single-instance logs streamer),
``store`` (Redis keys, records and Lua). Beside them: ``apps`` (fly.toml), ``deploy`` (the
flyctl runner), ``logs`` (logs API client), ``tokens`` (the token chain) and
``token_storage`` (Redis / file / memory backends).
"""

from __future__ import annotations

from atlas_tasks.fly import tokens
from atlas_tasks.fly.apps import discover_apps
from atlas_tasks.fly.client import (
    enqueue_deploy,
    new_ticket,
    start_log_streamer,
    stream_deploy,
    subscribe_deploy,
    subscribe_logs,
)
from atlas_tasks.fly.deploy import DeployResult, run_deploy
from atlas_tasks.fly.logs import LogEntry, LogPage, LogsClient
from atlas_tasks.fly.token_storage import (
    FileTokenStorage,
    MemoryTokenStorage,
    RedisTokenStorage,
    TokenRecord,
    TokenStorage,
    check_app,
)
from atlas_tasks.fly.tokens import FlyTokens

__all__ = [
    "DeployResult",
    "FileTokenStorage",
    "FlyTokens",
    "LogEntry",
    "LogPage",
    "LogsClient",
    "MemoryTokenStorage",
    "RedisTokenStorage",
    "TokenRecord",
    "TokenStorage",
    "check_app",
    "discover_apps",
    "enqueue_deploy",
    "new_ticket",
    "run_deploy",
    "start_log_streamer",
    "stream_deploy",
    "subscribe_deploy",
    "subscribe_logs",
    "tokens",
]
