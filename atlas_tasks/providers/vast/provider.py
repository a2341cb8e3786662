"""``VastProvider``: rent Vast.ai marketplace offers as containers (spot via bids).

Example::

    from atlas_tasks.providers import get_provider
    from atlas_tasks.specs import build_compute_request

    vast = get_provider("vast", api_key="...")
    c = vast.spawn_compute(build_compute_request(
        gpu="rtx_4090", image="vllm/vllm-openai", ports=[(8000, "tcp")], name="atlas-demo",
        spot=True))
    c.ports[0].url       # tcp://<public ip>:<host port> once the container runs

A create is a search (``POST /bundles/``: the cheapest verified rentable offers for the GPU
and count) followed by renting one (``PUT /asks/{offer_id}/``). When the cheapest offer is
rented by someone else in between, the next one is tried (up to
:data:`.translate.MAX_OFFER_ATTEMPTS`). Renting is not idempotent: after a failure that
may have rented (5xx, read timeout) the instance is looked up by label (the request name)
before anything is rented again.
"""

from __future__ import annotations

import logging
from typing import ClassVar

from atlas_tasks.errors import AtlasError, ProviderError, validation_error
from atlas_tasks.providers.common import SingleApiProvider
from atlas_tasks.providers.http import create_once, is_maybe_created
from atlas_tasks.providers.vast import translate
from atlas_tasks.providers.vast.client import VastClient
from atlas_tasks.specs import (
    Capability,
    Compute,
    ComputeRequest,
    ComputeStatus,
    GpuType,
)

logger = logging.getLogger(__name__)

PROVIDER = translate.PROVIDER

#: Query parameters of instance reads (vast.py sends ``owner=me``).
OWNER = {"owner": "me"}


class VastProvider(SingleApiProvider):
    """Vast.ai (``provider="vast"``): marketplace GPU containers, on-demand or bid.

    Args:
        context: API key and base URL (see :mod:`.client`).

    Attributes:
        sleep: every backoff sleep goes through it; replace it in tests.
    """

    name: ClassVar[str] = PROVIDER
    CAPABILITIES: ClassVar[frozenset[Capability]] = frozenset({Capability.SPOT, Capability.RAW_TCP})

    def make_client(self) -> VastClient:
        """Vast's API client (see :mod:`.client`)."""
        return VastClient(self.context, self.late_sleep)

    # ------------------------------------------------------------------ instances
    def search_offers(self, request: ComputeRequest) -> list[dict[str, object]]:
        """Usable offers for ``request``, cheapest first (see :func:`.translate.rank_offers`)."""
        answer = self.client.call(
            "POST", "/bundles/", json=translate.search_query(request), idempotent=True
        )
        return translate.rank_offers(
            translate.offers_from_body(answer.data),
            spot=request.spot,
            region_hints=request.region_hints,
        )

    def create_compute(self, request: ComputeRequest) -> Compute:
        """Rent the cheapest matching offer (bid at its ``min_bid`` when ``spot``).

        Raises:
            ValidationError: no GPU or image, a template or network volume, or a GPU Vast
                does not offer. ``cloud_type`` is ignored: Vast is one marketplace, and
                "verified" hosts are always required.
            ProviderError: no matching offer, or every tried offer was taken (message
                starts ``insufficient capacity``).
        """
        if not request.image:
            raise validation_error("image", "required on Vast", provider=PROVIDER)
        if request.template_id:
            raise validation_error(
                "template_id",
                "not supported on Vast; pass provider_opts="
                "{'template_hash_id': ...} with an image instead",
                provider=PROVIDER,
            )
        if request.network_volume_id:
            raise validation_error(
                "network_volume_id", "Vast has no network volumes", provider=PROVIDER
            )
        translate.create_opts(request)  # bad provider_opts fail before any call
        offers = self.search_offers(request)
        if not offers:
            raise translate.no_offer_error(request)
        last: AtlasError | None = None
        for offer in offers[: translate.MAX_OFFER_ATTEMPTS]:
            body = translate.create_body(request, offer)
            try:
                created = self._rent(str(offer["id"]), body, request)
            except AtlasError as err:
                if is_maybe_created(err) or not translate.is_offer_gone(err):
                    raise
                logger.info("vast: offer %s was taken (%s); trying the next", offer["id"], err)
                last = err
                continue
            if isinstance(created, Compute):
                return created
            return self._after_create(created, request, offer)
        assert last is not None
        raise ProviderError(
            f"insufficient capacity: the {min(len(offers), translate.MAX_OFFER_ATTEMPTS)} "
            f"cheapest Vast offers for {request.gpu_count}x {translate.gpu_name(request.gpu or '')}"
            f" were rented by others first ({last.message})",
            provider=PROVIDER,
            status=last.status,
            raw=last.raw if isinstance(last.raw, dict) else None,
        ) from last

    def _rent(
        self, offer_id: str, body: dict[str, object], request: ComputeRequest
    ) -> Compute | str:
        """``PUT /asks/{offer_id}/`` duplicate-safely; the new id, or the found Compute."""
        http = self.client.http

        def rent() -> str:
            answer = self.client.call("PUT", f"/asks/{offer_id}/", json=body, idempotent=False)
            return translate.new_contract_id(answer.data)

        return create_once(
            rent,
            name=request.name,
            find_by_name=self.find_compute_by_name,
            max_retries=http.max_retries,
            sleep=self.late_sleep,
            backoff=http.backoff_delay,
            label=PROVIDER,
            kind="instance",
        )

    def _after_create(
        self, instance_id: str, request: ComputeRequest, offer: dict[str, object]
    ) -> Compute:
        try:
            return self.get_compute(instance_id)
        except AtlasError as err:
            # Rented and billing: answer with what we know; Vast lists new contracts late.
            logger.warning("vast: read of new instance %s failed: %s", instance_id, err)
            price = offer.get("min_bid" if request.spot else "dph_total")
            return Compute(
                id=instance_id,
                provider=PROVIDER,
                status=ComputeStatus.PROVISIONING,
                gpu_type=request.gpu,
                gpu_count=request.gpu_count,
                cost_per_hour=float(price) if isinstance(price, int | float) else None,
                image=request.image,
                name=request.name,
                raw={"id": instance_id, "offer": offer},
            )

    def get_compute(self, compute_id: str) -> Compute:
        """``GET /instances/{id}/``; ``NotFoundError`` when unknown or answered empty."""
        instance_id = self._id(compute_id)
        answer = self.client.call("GET", f"/instances/{instance_id}/", params=OWNER)
        item = translate.instance_from_get(answer.data)
        if item is None:
            raise self.not_found(f"instance {instance_id}")
        return translate.instance_to_compute(item)

    def list_all_compute(self, *, region: str | None = None) -> list[Compute]:
        """``GET /instances/`` (the label is the compute's name)."""
        answer = self.client.call("GET", "/instances/", params=OWNER)
        return [
            translate.instance_to_compute(item)
            for item in translate.instances_from_list(answer.data)
        ]

    def stop(self, compute_id: str) -> None:
        """``PUT /instances/{id}/ {"state": "stopped"}`` (the disk is kept and billed)."""
        self._set_state(compute_id, "stopped")

    def start(self, compute_id: str) -> None:
        """``PUT /instances/{id}/ {"state": "running"}``."""
        self._set_state(compute_id, "running")

    def terminate(self, compute_id: str) -> None:
        """``DELETE /instances/{id}/``; ``NotFoundError`` for unknown ids."""
        self.client.call("DELETE", f"/instances/{self._id(compute_id)}/")

    def _set_state(self, compute_id: str, state: str) -> None:
        self.client.call(
            "PUT", f"/instances/{self._id(compute_id)}/", json={"state": state}, idempotent=True
        )

    def _id(self, compute_id: object) -> str:
        """Vast ids are integers: anything else cannot exist there (``NotFoundError``)."""
        if not isinstance(compute_id, str) or not compute_id.strip():
            raise validation_error("compute_id", "must be a non-empty string", provider=PROVIDER)
        value = compute_id.strip()
        if not value.isdigit():
            raise self.not_found(f"instance {value!r} (Vast ids are numbers)")
        return value

    # ------------------------------------------------------------------ catalog
    def list_gpu_types(self) -> list[GpuType]:
        """GPU types on offer now, from one search of every verified rentable offer:
        cheapest on-demand and bid price per GPU, memory, stock by offer count."""
        answer = self.client.call(
            "POST", "/bundles/", json=translate.catalog_query(), idempotent=True
        )
        return translate.gpu_types_from_offers(translate.offers_from_body(answer.data))


__all__ = ["OWNER", "VastProvider"]
