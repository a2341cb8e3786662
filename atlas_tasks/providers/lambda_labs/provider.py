"""``LambdaLabsProvider``: GPU VMs on Lambda Cloud (launch, get, list, terminate, catalog).

Example::

    from atlas_tasks.providers import get_provider
    from atlas_tasks.specs import build_compute_request

    lam = get_provider("lambda_labs", api_key="...")        # + ATLAS_LAMBDA_LABS_SSH_KEY_NAME
    vm = lam.spawn_compute(build_compute_request(
        gpu="h100", image="vllm/vllm-openai", ports=[(8000, "tcp")], name="atlas-demo"))
    vm.status            # provisioning ("booting") until Lambda reports "active"

What Lambda does not have, and how it shows here:

* No stop/start: :meth:`stop`/:meth:`start` raise ``UnsupportedError`` (terminate only).
* No spot market: ``spot=True`` is a ``ValidationError`` on field ``spot``.
* No containers: the image, env and ports ride in the launch's ``user_data`` (see
  :func:`.translate.user_data`); get/list cannot report the ports afterwards.
* No creation time on instances: the reaper ages Lambda orphans from when it first saw
  them (``atlas:reaper:orphan-first-seen``).
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar
from urllib.parse import quote

from atlas_tasks.errors import AtlasError, validation_error
from atlas_tasks.providers.common import SingleApiProvider
from atlas_tasks.providers.http import create_once
from atlas_tasks.providers.lambda_labs import translate
from atlas_tasks.providers.lambda_labs.client import LambdaClient
from atlas_tasks.specs import (
    Capability,
    Compute,
    ComputeRequest,
    ComputeStatus,
    GpuType,
)

logger = logging.getLogger(__name__)

PROVIDER = translate.PROVIDER


class LambdaLabsProvider(SingleApiProvider):
    """Lambda Labs (``provider="lambda_labs"``): on-demand GPU VMs.

    Args:
        context: API key, base URL (see :mod:`.client`) and ``options["ssh_key_name"]``.

    Attributes:
        sleep: every backoff sleep goes through it; replace it in tests.
    """

    name: ClassVar[str] = PROVIDER
    CAPABILITIES: ClassVar[frozenset[Capability]] = frozenset({Capability.RAW_TCP})

    def make_client(self) -> LambdaClient:
        """Lambda's API client (see :mod:`.client`)."""
        return LambdaClient(self.context, self.late_sleep)

    # ------------------------------------------------------------------ instances
    def ssh_key_name(self, request: ComputeRequest) -> str:
        """The one SSH key name for a launch: ``provider_opts`` > context option > settings.

        Raises:
            ValidationError: field ``provider_opts.ssh_key_name`` when none is configured.
        """
        for candidate in (
            request.provider_opts.get("ssh_key_name"),
            self.context.options.get("ssh_key_name"),
            self.context.settings.lambda_labs_ssh_key_name,
        ):
            if isinstance(candidate, str) and candidate.strip():
                return candidate.strip()
        raise validation_error(
            "provider_opts.ssh_key_name",
            "Lambda requires exactly one SSH key name per launch: set "
            "ATLAS_LAMBDA_LABS_SSH_KEY_NAME or pass provider_opts={'ssh_key_name': ...}",
            provider=PROVIDER,
        )

    def create_compute(self, request: ComputeRequest) -> Compute:
        """Pick a region, ``POST /instance-operations/launch``, then read the instance.

        Launch is not idempotent. The HTTP layer retries it only on 429 and connect
        failures; after a failure that may have launched (5xx, read timeout) the instance
        is looked up by ``request.name`` before launching again (at most
        ``http_max_retries`` more times). Without a name the error is raised instead.

        Raises:
            ValidationError: no GPU, ``spot=True``, a template or network volume, no SSH
                key, a GPU count Lambda does not sell, ``provider_opts`` keys that are not
                launch fields (or that atlas sets itself).
            ProviderError: insufficient capacity (message starts ``insufficient capacity``).
        """
        if not request.gpu:
            raise validation_error(
                "gpu", "Lambda rents GPU machines: gpu is required", provider=PROVIDER
            )
        if request.spot:
            raise validation_error("spot", "Lambda Labs has no spot instances", provider=PROVIDER)
        if request.template_id:
            raise validation_error("template_id", "Lambda Labs has no templates", provider=PROVIDER)
        if request.network_volume_id:
            raise validation_error(
                "network_volume_id",
                "Lambda attaches file systems by name: pass "
                "provider_opts={'file_system_names': [name]}",
                provider=PROVIDER,
            )
        ssh_key = self.ssh_key_name(request)
        # Bad provider_opts, env or a name Lambda would refuse fail before any call.
        translate.launch_opts(request)
        translate.check_name(request)
        translate.user_data(request)
        type_name = translate.instance_type_name(request.gpu, request.gpu_count)
        types = translate.instance_types(self.client.call("GET", "/instance-types").data)
        region = translate.choose_region(types, type_name, request.region_hints)
        body = translate.launch_body(
            request, type_name=type_name, region=region, ssh_key_name=ssh_key
        )
        http = self.client.http

        def launch() -> str:
            answer = self.client.call(
                "POST", "/instance-operations/launch", json=body, idempotent=False
            )
            return translate.launched_id(answer.data)

        launched = create_once(
            launch,
            name=request.name,
            find_by_name=self.find_compute_by_name,
            max_retries=http.max_retries,
            sleep=self.late_sleep,
            backoff=http.backoff_delay,
            label=PROVIDER,
            action="launch",
            kind="instance",
        )
        if isinstance(launched, Compute):
            return self._with_ports(launched, request)
        return self._after_launch(launched, request, type_name, region)

    def _after_launch(
        self, instance_id: str, request: ComputeRequest, type_name: str, region: str
    ) -> Compute:
        try:
            return self._with_ports(self.get_compute(instance_id), request)
        except AtlasError as err:
            # The VM exists and bills: answer with what we know rather than fail the spawn.
            logger.warning("lambda_labs: read of new instance %s failed: %s", instance_id, err)
            return Compute(
                id=instance_id,
                provider=PROVIDER,
                status=ComputeStatus.PROVISIONING,
                gpu_type=request.gpu,
                gpu_count=request.gpu_count,
                region=region,
                image=request.image,
                name=request.name,
                raw={"id": instance_id, "instance_type": {"name": type_name}},
            )

    @staticmethod
    def _with_ports(compute: Compute, request: ComputeRequest) -> Compute:
        # Only the create answer knows the workload's ports and image (see module doc).
        return compute.model_copy(
            update={
                "ports": translate.tcp_ports(compute.public_ip, request.ports),
                "image": request.image,
            }
        )

    def get_compute(self, compute_id: str) -> Compute:
        """``GET /instances/{id}``; ``NotFoundError`` when unknown."""
        answer = self.client.call("GET", _instance_path(compute_id))
        return translate.instance_to_compute(translate.instance_from_get(answer.data))

    def list_all_compute(self, *, region: str | None = None) -> list[Compute]:
        """``GET /instances`` (Lambda's list takes no filters)."""
        answer = self.client.call("GET", "/instances")
        return [
            translate.instance_to_compute(item)
            for item in translate.instances_from_list(answer.data)
        ]

    def terminate(self, compute_id: str) -> None:
        """``POST /instance-operations/terminate``; ``NotFoundError`` for unknown ids.

        Terminating is safe to repeat, so the call is retried like a GET.
        """
        instance_id = _check_id(compute_id)
        answer = self.client.call(
            "POST",
            "/instance-operations/terminate",
            json={"instance_ids": [instance_id]},
            idempotent=True,
        )
        data = answer.data.get("data") if isinstance(answer.data, dict) else None
        done = data.get("terminated_instances") if isinstance(data, dict) else None
        if isinstance(done, list) and not any(
            isinstance(i, dict) and i.get("id") == instance_id for i in done
        ):
            raise self.not_found(f"instance {instance_id}")

    # ------------------------------------------------------------------ catalog
    def list_gpu_types(self) -> list[GpuType]:
        """``GET /instance-types``: every size with its price (cents → dollars per hour)
        and stock from the number of regions with capacity."""
        return translate.gpu_types_from_body(self.client.call("GET", "/instance-types").data)


def _check_id(instance_id: Any) -> str:
    if not isinstance(instance_id, str) or not instance_id.strip():
        raise validation_error("compute_id", "must be a non-empty string", provider=PROVIDER)
    return instance_id.strip()


def _instance_path(instance_id: Any) -> str:
    return f"/instances/{quote(_check_id(instance_id), safe='')}"


__all__ = ["LambdaLabsProvider"]
