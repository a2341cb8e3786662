"""``atlas-tasks demo``: the seed's transient-pod scenario on real local parts.

It starts a private ``redis-server`` (or reuses ``ATLAS_REDIS_URL`` when set), the fake
cloud, a Celery worker and beat as real processes, then:

1. three users open GPU sessions: alice keeps touching, bob and carol go idle on short TTLs;
2. a fourth ``atlas-`` pod is created behind the orchestrator's back (an orphan) and a pod
   without the prefix is created by "another team";
3. it prints the cluster-wide event timeline while the reaper and the idle clock work;
4. alice leaves (``stop_tracked``); the fake cloud must end holding exactly the foreign pod.

Exit status 0 when the cloud ends as expected, 1 otherwise.
"""

from __future__ import annotations

import json
import os
import threading
import time
from typing import Any

import httpx
from rich.console import Console
from rich.table import Table

from atlas_tasks.events import session_channel_pattern

# The fake cloud behind the local stack needs Starlette and uvicorn: `atlas-tasks demo`
# imports this module through the CLI, which names the [testing] extra when they are missing.
from atlas_tasks.redis_conn import client_for_url, pubsub_client_for_url
from atlas_tasks.sessions.records import SessionStatus
from atlas_tasks.testing.localstack import LocalCluster

console = Console(highlight=False, soft_wrap=True)

IMAGE = "ghcr.io/acme/realtime-inference:latest"
USERS = {  # name: (idle_ttl_ms, keeps touching)
    "alice": (3000, True),
    "bob": (2500, False),
    "carol": (4500, False),
}
STYLE = {"status": "cyan", "terminating": "yellow", "terminate_failed": "red"}


class Timeline:
    """Prints every compute event of the cluster (pattern subscription) as it happens."""

    def __init__(self, redis_url: str, names: dict[str, str]) -> None:
        self.names = names
        self.start = time.monotonic()
        self.client = client_for_url(redis_url, decode_responses=True)
        self.pubsub = pubsub_client_for_url(redis_url, decode_responses=True).pubsub(
            ignore_subscribe_messages=True
        )
        self.pubsub.psubscribe(session_channel_pattern())
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stopping.is_set():
            message = self.pubsub.get_message(timeout=0.2)
            if not message:
                continue
            _, _, body = str(message["data"]).partition("|")
            try:
                event = json.loads(body)
            except ValueError:
                continue
            if event["type"] == "heartbeat":
                continue
            self.show(event)

    def show(self, event: dict[str, Any]) -> None:
        """Print one event as a timeline line (time, user, type, detail)."""
        data = event.get("data", {})
        if data.get("user_id") is not None:  # the spawning event names the user
            self.names.setdefault(event["session_id"], str(data["user_id"]))
        who = self.names.get(event["session_id"], event["session_id"])
        detail = data.get("status") or ""
        if data.get("reason"):
            detail += f" (reason: {data['reason']})" if detail else f"reason: {data['reason']}"
        if data.get("compute"):
            ports = data["compute"].get("ports") or []
            if ports:
                detail += f"  {ports[0].get('url')}"
        if data.get("error"):
            detail += f"  error: {data['error'].get('message')}"
        t = time.monotonic() - self.start
        style = STYLE.get(event["type"], "white")
        console.print(
            f"  [dim]t+{t:5.1f}s[/]  [bold]{who:<8}[/] [{style}]{event['type']:<11}[/] {detail}"
        )

    def close(self) -> None:
        """Stop following events and join the thread."""
        self.stopping.set()
        self.thread.join(2)
        self.pubsub.close()
        self.client.close()


def run() -> int:
    """Play the scenario; returns the process exit status."""
    from atlas_tasks import orchestrator

    console.rule("[bold]atlas_tasks demo: transient per-user GPU sessions")
    console.print(
        "Starting a private Redis, the fake cloud (RunPod wire format), a Celery "
        "worker and beat ..."
    )
    cluster = LocalCluster(
        redis_url=os.environ.get("ATLAS_REDIS_URL") or None,
        reap_interval_ms=1000,
        orphan_grace_ms=2000,
        orphan_scan_interval_ms=1000,
    )
    ok = False
    timeline: Timeline | None = None
    try:
        cluster.start()
        console.print(
            f"  redis  {cluster.redis_url}\n  cloud  {cluster.cloud.url}\n"
            f"  worker pid {cluster.workers[0].pid}, beat pid "
            f"{cluster.beat.pid if cluster.beat else '-'}\n"
        )
        names: dict[str, str] = {}
        timeline = Timeline(cluster.redis_url, names)

        console.rule("1. three users open sessions")
        sessions = {}
        for user, (ttl, _) in USERS.items():
            s = orchestrator.spawn(
                provider="runpod",
                gpu="h100",
                image=IMAGE,
                ports=[(8000, "http")],
                auth="bearer",
                user_id=user,
                idle_ttl_ms=ttl,
            )
            names[s.id] = user
            sessions[user] = s
            console.print(
                f"  spawn enqueued for [bold]{user}[/]: session {s.id}, idle TTL "
                f"{ttl / 1000:g}s, token {s.token[:6] if s.token else ''}… "
                "(handed to the browser once, never stored)"
            )
        for user, s in sessions.items():
            compute = s.wait(timeout=60)
            console.print(
                f"  [green]{user} running[/] on pod {compute.id} at {compute.ports[0].url}"
            )

        console.rule("2. pods created behind the orchestrator's back")
        headers = {"Authorization": f"Bearer {cluster.cloud.api_key}"}
        body = {"image": IMAGE, "gpu": {"id": "NVIDIA H100 80GB HBM3", "count": 1}}
        rogue = httpx.post(
            f"{cluster.cloud.runpod_rest_url}/v2/pods",
            headers=headers,
            json={**body, "name": "atlas-rogue0001"},
        ).json()
        foreign = httpx.post(
            f"{cluster.cloud.runpod_rest_url}/v2/pods",
            headers=headers,
            json={**body, "name": "team-b-training-run"},
        ).json()
        names[rogue["id"]] = "rogue-pod"
        names["rogue0001"] = "rogue-pod"
        console.print(f"  orphan   {rogue['id']} named atlas-rogue0001 (prefix, untracked)")
        console.print(f"  foreign  {foreign['id']} named team-b-training-run (no prefix)\n")

        console.rule("3. alice keeps touching; bob and carol go idle")
        deadline = time.monotonic() + 30
        idle = [sessions["bob"].id, sessions["carol"].id]
        with console.status("waiting for idle sessions and the orphan to be reaped") as status:
            while time.monotonic() < deadline:
                orchestrator.touch(sessions["alice"].id)
                live = {p["id"] for p in cluster.cloud.live_pods()}
                done = [orchestrator.info(i).status == SessionStatus.TERMINATED for i in idle]
                status.update(
                    f"alice touching · idle terminated {sum(done)}/2 · orphan "
                    f"{'reaped' if rogue['id'] not in live else 'alive'} · "
                    f"{len(live)} pods live at the cloud"
                )
                if all(done) and rogue["id"] not in live:
                    break
                time.sleep(0.5)
        alice = orchestrator.info(sessions["alice"].id)
        console.print(
            f"  alice is still [green]{alice.status}[/] after "
            f"{(time.monotonic() - timeline.start):.1f}s, beyond her "
            f"{USERS['alice'][0] / 1000:g}s TTL, because she kept touching\n"
        )

        console.rule("4. alice leaves: stop_tracked")
        orchestrator.stop_tracked(sessions["alice"].id)
        end = time.monotonic() + 20
        while (
            time.monotonic() < end
            and orchestrator.info(sessions["alice"].id).status != SessionStatus.TERMINATED
        ):
            time.sleep(0.2)
        time.sleep(0.5)
        ok = _report(cluster, foreign["id"], sessions)
    except Exception as exc:  # show the cause, then shut down cleanly
        console.print(f"[red]demo failed: {exc}[/]")
        console.print(cluster.logs())
    finally:
        if timeline is not None:
            timeline.close()
        console.print("\nShutting down worker, beat, fake cloud and Redis ...")
        cluster.stop()
    console.print("[bold green]demo ok[/]" if ok else "[bold red]demo: unexpected end state[/]")
    return 0 if ok else 1


def _report(cluster: Any, foreign_id: str, sessions: dict[str, Any]) -> bool:
    from atlas_tasks import orchestrator

    state = cluster.cloud.state()
    table = Table(title="fake cloud at the end")
    for column in ("pod", "name", "status"):
        table.add_column(column)
    for pod in state["pods"]:
        table.add_row(pod["id"], pod.get("name", ""), pod.get("status", ""))
    console.print(table)
    totals = state["totals"]
    console.print(
        f"  creates {totals.get('creates', 0)}, deletes {totals.get('deletes', 0)}, "
        f"tracked sessions left {len(orchestrator.list_ids())}"
    )
    live = [p["id"] for p in state["pods"]]
    expected = live == [foreign_id]
    all_ended = all(
        orchestrator.info(s.id).status == SessionStatus.TERMINATED for s in sessions.values()
    )
    return expected and all_ended and not orchestrator.list_ids()
