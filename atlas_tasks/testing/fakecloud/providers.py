"""The fake cloud's providers, each behind one small protocol, kept in one list.

A fake provider is what :class:`FakeProvider` describes — its routes, how ``/_admin/reset``
clears it, its block of ``/_admin/state`` and how ``age`` backdates one of its resources —
and :data:`PROVIDERS` lists them in route order. The app mounts every provider's routes,
``reset`` / ``snapshot`` / ``age`` walk the list, so adding a provider is one module and one
entry here, not edits across the app, the admin API and the server.

RunPod's block stays at the top level of ``/_admin/state`` (``pods``, ``totals``...; its
``snapshot_key`` is ``None``) because every existing test reads it there; the others nest
under their name (``lambda_labs``, ``vast``, ``fly``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from starlette.routing import Route

from atlas_tasks.testing.fakecloud import (
    fly_logs,
    fly_machines,
    runpod_rest,
    runpod_runtime,
)
from atlas_tasks.testing.fakecloud import lambda_labs as lambda_api
from atlas_tasks.testing.fakecloud import vast as vast_api
from atlas_tasks.testing.fakecloud.common import FakeCloudContext


class FakeProvider(Protocol):
    """One provider of the fake cloud."""

    @property
    def name(self) -> str:
        """Name (``runpod``, ``lambda_labs``...), also the ``age`` selector."""
        ...

    @property
    def snapshot_key(self) -> str | None:
        """Key of its block in ``/_admin/state``; ``None`` merges it into the top level."""
        ...

    def routes(self, ctx: FakeCloudContext) -> list[Route]:
        """Its Starlette routes, bound to ``ctx``."""
        ...

    def reset(self, ctx: FakeCloudContext) -> None:
        """Forget its resources (part of ``/_admin/reset``)."""
        ...

    def snapshot(self, ctx: FakeCloudContext) -> dict[str, Any] | None:
        """Its block of ``/_admin/state`` (``None``: it has none)."""
        ...

    def age(self, ctx: FakeCloudContext, resource_id: str, seconds: float) -> bool:
        """Backdate one resource's creation and boot by ``seconds``; False if unknown."""
        ...


@dataclass(frozen=True)
class ModuleProvider:
    """A :class:`FakeProvider` made of a provider module's functions."""

    name: str
    snapshot_key: str | None
    build_routes: Callable[[FakeCloudContext], list[Route]]
    reset_state: Callable[[FakeCloudContext], None] = lambda ctx: None
    snapshot_state: Callable[[FakeCloudContext], dict[str, Any] | None] = lambda ctx: None
    age_resource: Callable[[FakeCloudContext, str, float], bool] = lambda ctx, rid, s: False

    def routes(self, ctx: FakeCloudContext) -> list[Route]:
        """See :class:`FakeProvider`."""
        return self.build_routes(ctx)

    def reset(self, ctx: FakeCloudContext) -> None:
        """See :class:`FakeProvider`."""
        self.reset_state(ctx)

    def snapshot(self, ctx: FakeCloudContext) -> dict[str, Any] | None:
        """See :class:`FakeProvider`."""
        return self.snapshot_state(ctx)

    def age(self, ctx: FakeCloudContext, resource_id: str, seconds: float) -> bool:
        """See :class:`FakeProvider`."""
        return self.age_resource(ctx, resource_id, seconds)


# ---- RunPod: REST v2 and the serverless runtime share the pod state and the job store ----


def _runpod_routes(ctx: FakeCloudContext) -> list[Route]:
    # REST v2 first: an endpoint id must never shadow a management path.
    return [*runpod_rest.build_routes(ctx), *runpod_runtime.build_routes(ctx)]


def _runpod_reset(ctx: FakeCloudContext) -> None:
    ctx.state.reset()
    ctx.jobs.reset()


def _runpod_snapshot(ctx: FakeCloudContext) -> dict[str, Any]:
    state, jobs = ctx.state, ctx.jobs
    now = time.monotonic()
    with state.lock:
        live = [p.admin_view() for p in state.pods.values() if p.desired_status != "TERMINATED"]
        dead = [p.admin_view() for p in state.pods.values() if p.desired_status == "TERMINATED"]
        endpoints: dict[str, Any] = {}
        for endpoint_id, calls in state.endpoint_calls.items():
            endpoints[endpoint_id] = {"calls": dict(calls), "jobs": {}}
        for job in jobs.jobs.values():
            entry = endpoints.setdefault(job.endpoint_id, {"calls": {}, "jobs": {}})
            current = job.status(now)
            entry["jobs"][current] = entry["jobs"].get(current, 0) + 1
        return {
            "pods": live,
            "terminated_pods": dead,
            "totals": {"live_pods": len(live), **dict(state.totals)},
            "routes": dict(state.routes),
            "endpoints": endpoints,
            "templates": len(state.templates),
            "network_volumes": len(state.volumes),
            "runpod_endpoints": len(state.endpoints),
        }


def age_pod(ctx: FakeCloudContext, pod_id: str, seconds: float) -> dict[str, Any] | None:
    """Backdate a RunPod pod (terminated ones included); its admin view, None if unknown."""
    with ctx.state.lock:
        pod = ctx.state.pods.get(pod_id)
        if pod is None:
            return None
        pod.created_at -= seconds
        pod.last_started_at -= seconds
        pod.boot_until -= seconds
        return pod.admin_view()


def _fly_age(ctx: FakeCloudContext, machine_id: str, seconds: float) -> bool:
    fly = fly_machines.fly_state(ctx)
    with fly.lock:
        machine = fly.machines.get(machine_id)
        if machine is None:
            return False
        machine.created_at -= seconds
        machine.updated_at -= seconds
        machine.pending = [(at - seconds, state) for at, state in machine.pending]
        return True


#: Every provider of the fake cloud, in route order (admin routes come after all of them).
PROVIDERS: list[FakeProvider] = [
    ModuleProvider(
        "runpod",
        None,
        _runpod_routes,
        _runpod_reset,
        _runpod_snapshot,
        lambda ctx, rid, s: age_pod(ctx, rid, s) is not None,
    ),
    ModuleProvider(
        "lambda_labs",
        "lambda_labs",
        lambda_api.build_routes,
        lambda_api.reset,
        lambda_api.snapshot,
        lambda_api.age_instance,
    ),
    ModuleProvider(
        "vast",
        "vast",
        vast_api.build_routes,
        vast_api.reset,
        vast_api.snapshot,
        vast_api.age_instance,
    ),
    # Fly's logs API is its own provider module, mounted before the Machines API; its
    # buffers are cleared through DELETE /_admin/fly/logs, not the global reset.
    ModuleProvider("fly_logs", None, fly_logs.build_routes),
    ModuleProvider(
        "fly",
        "fly",
        fly_machines.build_routes,
        fly_machines.reset,
        fly_machines.admin_snapshot,
        _fly_age,
    ),
]


def provider_named(name: str) -> FakeProvider:
    """The provider called ``name``.

    Raises:
        KeyError: no such provider (the message lists the known ones).
    """
    for provider in PROVIDERS:
        if provider.name == name:
            return provider
    raise KeyError(f"unknown fake provider {name!r}; known: {', '.join(p.name for p in PROVIDERS)}")


__all__ = ["PROVIDERS", "FakeProvider", "ModuleProvider", "age_pod", "provider_named"]
