"""``FlyMachinesProvider``: the facade over Fly Machines in one Fly app.

Each method is one resource call delegated to :mod:`.machines`; translation lives in
:mod:`.translate`, the API client, app and token resolution in :mod:`.client`, HTTP
(pooling, retries, hooks) in :mod:`atlas_tasks.providers.http`.

Example::

    from atlas_tasks.providers import get_provider
    from atlas_tasks.specs import build_compute_request

    fly = get_provider("fly", api_key="...", app="my-gpu-app")   # or ATLAS_FLY_APP
    machine = fly.spawn_compute(build_compute_request(
        gpu="a100_80g", image="vllm/vllm-openai", ports=[(8000, "http")], name="atlas-demo",
        region_hints=["ord"], provider_opts={"memory_mb": 65536}))
    machine.ports[0].url   # https://my-gpu-app.fly.dev (Fly routes by app; see .translate)

``spawn_compute`` returns once the machine is ``started`` (status ``running``) or after
``wait_timeout_s`` (provider option or ``provider_opts``; default 60 s, 0 = do not wait),
in which case it is still ``provisioning``.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any, ClassVar

from atlas_tasks.errors import validation_error
from atlas_tasks.providers.base import ProviderContext
from atlas_tasks.providers.common import HttpProvider
from atlas_tasks.providers.fly_machines import machines, translate
from atlas_tasks.providers.fly_machines.client import FlyClient
from atlas_tasks.specs import (
    Capability,
    Compute,
    ComputeRequest,
    GpuType,
)


class FlyMachinesProvider(HttpProvider):
    """Fly.io Machines (``provider="fly"``).

    Args:
        context: token, base URL and options. Options read: ``app`` (the Fly app, else
            ``ATLAS_FLY_APP``) and ``wait_timeout_s`` (create's wait for ``started``).

    Attributes:
        sleep: every backoff sleep goes through it; replace it in tests.
        rand: jitter source in [0, 1) for retry backoff.
    """

    name: ClassVar[str] = "fly"
    CAPABILITIES: ClassVar[frozenset[Capability]] = frozenset(
        {
            Capability.HTTP_PROXY,
            Capability.RAW_TCP,
            Capability.GLOBAL_NETWORKING,
        }
    )

    def __init__(self, context: ProviderContext | None = None) -> None:
        super().__init__(context)
        self.rand: Callable[[], float] = random.random
        # Late-bound: replacing provider.sleep/rand later (tests) still applies.
        self.client = FlyClient(self.context, self.late_sleep, lambda: self.rand())

    def __repr__(self) -> str:
        return (
            f"FlyMachinesProvider(base_url={self.client.base_url!r}, "
            f"app={self.client.default_app!r})"
        )

    def close(self) -> None:
        """Close the pooled HTTP client."""
        self.client.close()

    @property
    def wait_timeout_s(self) -> float:
        """Seconds a create waits for ``started`` (option ``wait_timeout_s``, default 60)."""
        value = self.context.options.get("wait_timeout_s")
        if value is None:
            return machines.DEFAULT_WAIT_TIMEOUT_S
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            raise validation_error(
                "wait_timeout_s", "must be a number of seconds >= 0", provider=self.name
            )
        return float(value)

    # ------------------------------------------------------------------ machines
    def create_compute(self, request: ComputeRequest) -> Compute:
        """``POST /v1/apps/{app}/machines`` (duplicate-safe), then wait for ``started``.

        Raises:
            ValidationError: bad request fields, or no app configured (field ``app``).
        """
        body = translate.machine_create_body(request)  # validates before any network call
        app_override, wait = translate.atlas_options(request)
        app = self.client.app(app_override)
        api = self.client.api
        machine = machines.create(
            api,
            app,
            body,
            max_retries=api.max_retries,
            wait_timeout_s=self.wait_timeout_s if wait is None else wait,
        )
        return translate.machine_to_compute(machine, app, self.client.default_app)

    def get_compute(self, compute_id: str) -> Compute:
        """``GET /v1/apps/{app}/machines/{id}``; ``NotFoundError`` when unknown."""
        app, machine_id = self._locate(compute_id)
        machine = machines.get(self.client.api, app, machine_id)
        return translate.machine_to_compute(machine, app, self.client.default_app)

    def list_all_compute(self, *, region: str | None = None) -> list[Compute]:
        """Machines of the app (destroyed ones excluded by Fly; ``region`` asked of Fly).

        Raises:
            ValidationError: no app configured.
        """
        app = self.client.app()
        default = self.client.default_app
        return [
            translate.machine_to_compute(m, app, default)
            for m in machines.list_machines(self.client.api, app, region=region)
        ]

    def find_compute_by_name(self, name: str) -> Compute | None:
        """The not-destroyed machine of the app named exactly ``name``, or None."""
        app = self.client.app()
        machine = machines.find_by_name(self.client.api, app, name)
        if machine is None:
            return None
        return translate.machine_to_compute(machine, app, self.client.default_app)

    def stop(self, compute_id: str) -> None:
        """``POST .../stop``, then wait (up to ``wait_timeout_s``) for ``stopped``."""
        app, machine_id = self._locate(compute_id)
        machines.stop(self.client.api, app, machine_id, self.wait_timeout_s)

    def start(self, compute_id: str) -> None:
        """``POST .../start`` (returns while the machine is ``starting``)."""
        app, machine_id = self._locate(compute_id)
        machines.start(self.client.api, app, machine_id)

    def terminate(self, compute_id: str) -> None:
        """``DELETE .../{id}?force=true``; ``NotFoundError`` on 404."""
        app, machine_id = self._locate(compute_id)
        machines.destroy(self.client.api, app, machine_id)

    # ------------------------------------------------------------------ catalog and apps
    def list_gpu_types(self) -> list[GpuType]:
        """Fly's GPU kinds from atlas's catalog (no prices: Fly has no catalog API)."""
        return translate.gpu_catalog()

    def create_app(self, name: str | None = None, org: str | None = None) -> Any:
        """``POST /v1/apps``: create ``name`` (default: the provider's app) in ``org``
        (default ``ATLAS_FLY_ORG``).

        Raises:
            ValidationError: no app name or no org.
        """
        app = self.client.app(name)
        org = org or self.context.settings.fly_org
        if not org:
            raise validation_error(
                "org", "no Fly organization: pass org=... or set ATLAS_FLY_ORG", provider=self.name
            )
        return machines.create_app(self.client.api, app, org)

    # ------------------------------------------------------------------ helpers
    def _locate(self, compute_id: str) -> tuple[str, str]:
        app, machine_id = translate.split_compute_id(compute_id, self.client.default_app)
        return self.client.app(app), machine_id


__all__ = ["FlyMachinesProvider"]
