"""The provider conformance suite, shipped in the package (fsspec style).

Any provider, built in or third party, proves it honours the contract with a three-line
test class::

    import pytest
    from atlas_tasks.testing.conformance import ProviderConformance

    class TestMyProvider(ProviderConformance):
        @pytest.fixture
        def provider(self):
            return MyProvider(ProviderContext(api_key="...", base_url="http://127.0.0.1:8710"))

Fixtures a provider may override (all are ordinary pytest fixtures on the class):

``provider`` (required)
    The Provider instance under test. The default raises ``NotImplementedError``.
``gpu`` / ``image`` / ``spawn_fields``
    What to spawn: a canonical GPU the provider offers (default ``"h100"``), an image, and
    extra ComputeRequest fields (``cloud_type``, ``region_hints``...; default none).
``pod_env``
    A callable ``(provider, compute) -> dict[str, str]`` returning the env the pod was
    created with. The default reads ``compute.raw["env"]`` or ``compute.raw["request"]["env"]``
    (refetching the compute when the spawn answer has neither). A secret value may be
    reported raw or as ``"sha256:" + token_hash(value)`` (the mock never keeps raw secrets).
``unknown_id``
    An id in the provider's format that does not exist (default ``"atlas-conformance-missing-…"``).
``endpoint``
    A serverless endpoint to run jobs on, for providers declaring ``"serverless"``.
``name_prefix``
    Prefix of the names of resources the suite creates (default ``"atlas-conformance-"``).

Every resource the suite spawns is terminated at teardown, even when a test fails.

Optional operations: stop/start and the GPU catalog may answer ``UnsupportedError``; the
suite then checks that the refusal is honest (nothing changed, start refused too, the error
names the provider) instead of skipping. Nothing is ever skipped; providers without the
``"serverless"`` capability must answer job calls with ``UnsupportedError``.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from atlas_tasks import constants, sdk
from atlas_tasks.auth.tokens import token_hash
from atlas_tasks.errors import AtlasError, NotFoundError, UnsupportedError, ValidationError
from atlas_tasks.providers.base import Provider
from atlas_tasks.specs import (
    Capability,
    Compute,
    ComputeStatus,
    GpuType,
    Job,
    JobStatus,
    build_compute_request,
    build_job_request,
)

PodEnv = Callable[[Provider, Compute], dict[str, str]]


def default_pod_env(provider: Provider, compute: Compute) -> dict[str, str]:
    """The env recorded in ``compute.raw``, refetching if absent.

    Looked up at ``env`` (RunPod, mock), ``request.env`` (mock) and ``config.env`` (Fly).
    """
    for candidate in (compute, None):
        current = candidate or provider.get_compute(compute.id)
        raw = current.raw or {}
        env = raw.get("env")
        for parent in ("request", "config"):
            if not isinstance(env, dict) and isinstance(raw.get(parent), dict):
                env = raw[parent].get("env")
        if isinstance(env, dict):
            return {str(k): str(v) for k, v in env.items()}
    raise AssertionError(
        f"{provider.name}: the pod env is not visible in compute.raw; override the "
        "`pod_env` fixture to tell the conformance suite how to read it"
    )


def carries_secret(value: str | None, secret: str) -> bool:
    """Whether an env value is ``secret`` itself or its ``sha256:<hex>`` digest."""
    return value is not None and value in (secret, f"sha256:{token_hash(secret)}")


class ProviderConformance:
    """Base class of the conformance tests; subclass it and override ``provider``."""

    # ------------------------------------------------------------------ fixtures
    @pytest.fixture
    def provider(self) -> Provider:
        """The provider under test: every subclass must override this fixture."""
        raise NotImplementedError(
            f"{type(self).__name__} must override the `provider` fixture "
            "(return the Provider instance to test)"
        )

    @pytest.fixture
    def gpu(self) -> str:
        """A canonical GPU name the provider offers."""
        return "h100"

    @pytest.fixture
    def image(self) -> str:
        """The container image to spawn."""
        return "test/image:latest"

    @pytest.fixture
    def spawn_fields(self) -> dict[str, Any]:
        """Extra ComputeRequest fields for every spawn (region, cloud type...)."""
        return {}

    @pytest.fixture
    def name_prefix(self) -> str:
        """Prefix of the resource names the suite creates."""
        return "atlas-conformance-"

    @pytest.fixture
    def unknown_id(self) -> str:
        """An id, in the provider's format, that exists nowhere."""
        return f"atlas-conformance-missing-{secrets.token_hex(6)}"

    @pytest.fixture
    def endpoint(self) -> str:
        """A serverless endpoint id, used when the provider declares ``serverless``."""
        return "atlas-conformance-endpoint"

    @pytest.fixture
    def pod_env(self) -> PodEnv:
        """How to read the env a pod was created with (see :func:`default_pod_env`)."""
        return default_pod_env

    @pytest.fixture
    def spawn(
        self,
        provider: Provider,
        gpu: str,
        image: str,
        spawn_fields: dict[str, Any],
        name_prefix: str,
    ) -> Iterator[Callable[..., Compute]]:
        """``spawn(**fields) -> Compute``; everything spawned is terminated at teardown."""
        created: list[str] = []

        def _spawn(**fields: Any) -> Compute:
            data: dict[str, Any] = {"gpu": gpu, "image": image, **spawn_fields}
            data.setdefault("name", f"{name_prefix}{secrets.token_hex(4)}")
            data.update(fields)
            compute = provider.spawn_compute(build_compute_request(**data))
            created.append(compute.id)
            return compute

        yield _spawn
        for compute_id in created:
            try:
                provider.terminate(compute_id)
            except AtlasError:
                pass  # already gone (the test terminated it) or the cloud is down

    # ------------------------------------------------------------------ capabilities
    def test_capabilities_are_known_strings(self, provider: Provider) -> None:
        known = {c.value for c in Capability}
        caps = provider.capabilities()
        assert isinstance(caps, frozenset)
        assert caps == type(provider).capabilities()
        for cap in caps:
            assert isinstance(cap, str) and cap in known, f"unknown capability {cap!r}"

    # ------------------------------------------------------------------ lifecycle
    def test_spawn_get_list_terminate(
        self, provider: Provider, spawn: Callable[..., Compute], name_prefix: str
    ) -> None:
        name = f"{name_prefix}{secrets.token_hex(4)}"
        compute = spawn(name=name, ports=[(8000, "http")])
        assert isinstance(compute, Compute)
        assert isinstance(compute.id, str) and compute.id
        assert compute.provider == provider.name
        assert compute.status in set(ComputeStatus)
        # The orchestrator finds pods by name after a failed create: names must survive.
        assert compute.name == name

        fetched = provider.get_compute(compute.id)
        assert fetched.id == compute.id
        assert fetched.provider == provider.name
        assert fetched.name == compute.name

        everything = provider.list_compute()
        assert compute.id in {c.id for c in everything}

        by_name = provider.list_compute(name=compute.name)
        assert compute.id in {c.id for c in by_name}
        assert all(c.name == compute.name for c in by_name)
        assert provider.list_compute(name=f"{compute.name}-nope") == []

        by_status = provider.list_compute(status=fetched.status)
        assert compute.id in {c.id for c in by_status}
        assert all(c.status == fetched.status for c in by_status)
        other = next(s for s in ComputeStatus if s != fetched.status)
        assert compute.id not in {c.id for c in provider.list_compute(status=other)}

        assert provider.terminate(compute.id) is None
        try:
            after = provider.get_compute(compute.id)
        except NotFoundError:
            pass  # clouds that forget terminated resources conform too
        else:
            assert after.status == ComputeStatus.TERMINATED
        running = provider.list_compute(status=ComputeStatus.RUNNING)
        assert compute.id not in {c.id for c in running}

    def test_stop_and_start(self, provider: Provider, spawn: Callable[..., Compute]) -> None:
        compute = spawn()
        try:
            provider.stop(compute.id)
        except UnsupportedError:
            # Optional operation, honestly refused: the resource is untouched and start is
            # refused the same way (a provider cannot start what it cannot stop).
            assert provider.get_compute(compute.id).status != ComputeStatus.STOPPED
            with pytest.raises(UnsupportedError):
                provider.start(compute.id)
            return
        assert provider.get_compute(compute.id).status == ComputeStatus.STOPPED
        provider.start(compute.id)
        assert provider.get_compute(compute.id).status in (
            ComputeStatus.RUNNING,
            ComputeStatus.PROVISIONING,
        )

    def test_find_compute_by_name(
        self, provider: Provider, spawn: Callable[..., Compute], name_prefix: str
    ) -> None:
        compute = spawn()
        assert compute.name
        found = provider.find_compute_by_name(compute.name)
        assert found is not None and found.id == compute.id
        assert provider.find_compute_by_name(f"{name_prefix}absent-{secrets.token_hex(4)}") is None
        provider.terminate(compute.id)
        assert provider.find_compute_by_name(compute.name) is None

    # ------------------------------------------------------------------ auth
    def test_bearer_handle_and_env(
        self, provider: Provider, spawn: Callable[..., Compute], pod_env: PodEnv
    ) -> None:
        compute = spawn(auth="bearer", env={"ATLAS_CONFORMANCE": "yes"})
        handle = compute.auth
        assert handle is not None and handle.scheme == "bearer"
        assert handle.token is not None and len(handle.token) >= 32
        assert handle.hash == token_hash(handle.token)
        assert handle.header == f"Authorization: Bearer {handle.token}"

        env = pod_env(provider, compute)
        assert carries_secret(env.get(constants.PRESHARED_KEY_ENV), handle.token)
        assert env.get("ATLAS_CONFORMANCE") == "yes"

        # The raw token is handed out once: a later read must not reveal it.
        again = provider.get_compute(compute.id)
        assert again.auth is None or again.auth.token is None

    def test_signed_url_secret_injected(
        self, provider: Provider, spawn: Callable[..., Compute], pod_env: PodEnv
    ) -> None:
        compute = spawn(auth="signed_url")
        assert compute.auth is not None and compute.auth.scheme == "signed_url"
        secret = compute.auth.token
        assert secret and len(secret) >= 32
        env = pod_env(provider, compute)
        assert carries_secret(env.get(constants.SIGNING_SECRET_ENV), secret)
        assert constants.PRESHARED_KEY_ENV not in env

    def test_no_auth_means_no_secret(
        self, provider: Provider, spawn: Callable[..., Compute], pod_env: PodEnv
    ) -> None:
        compute = spawn()
        assert compute.auth is None
        env = pod_env(provider, compute)
        assert constants.PRESHARED_KEY_ENV not in env
        assert constants.SIGNING_SECRET_ENV not in env

    # ------------------------------------------------------------------ errors
    def test_unknown_id_is_not_found(self, provider: Provider, unknown_id: str) -> None:
        with pytest.raises(NotFoundError) as info:
            provider.get_compute(unknown_id)
        assert info.value.kind == "not_found"
        assert info.value.provider == provider.name
        with pytest.raises(NotFoundError):
            provider.terminate(unknown_id)

    def test_bad_gpu_is_a_validation_error(self, provider: Provider, image: str) -> None:
        with pytest.raises(ValidationError) as info:
            sdk.spawn_compute(provider=provider, gpu="nope", image=image)
        assert info.value.kind == "validation"
        assert info.value.field == "gpu"

    def test_unknown_request_field_is_a_validation_error(
        self, provider: Provider, image: str, gpu: str
    ) -> None:
        with pytest.raises(ValidationError) as info:
            sdk.spawn_compute(provider=provider, gpu=gpu, image=image, gpus=2)
        assert info.value.field == "gpus"

    # ------------------------------------------------------------------ catalog and jobs
    def test_list_gpu_types(self, provider: Provider) -> None:
        try:
            types = provider.list_gpu_types()
        except UnsupportedError as exc:
            # Optional operation, honestly refused: the error must name the provider.
            assert exc.provider == provider.name
            return
        assert isinstance(types, list)
        for entry in types:
            assert isinstance(entry, GpuType)
            assert entry.provider == provider.name
            assert entry.id

    def test_jobs_match_the_serverless_capability(self, provider: Provider, endpoint: str) -> None:
        request = build_job_request(endpoint=endpoint, input={"prompt": "hi"})
        if Capability.SERVERLESS.value not in provider.capabilities():
            with pytest.raises(UnsupportedError):
                provider.run_job(request)
            return
        job = provider.run_job(request)
        assert isinstance(job, Job) and job.id
        assert job.provider == provider.name
        fetched = provider.get_job(job.id, endpoint=endpoint)
        assert fetched.id == job.id
        assert fetched.status in set(JobStatus)
        with pytest.raises(NotFoundError):
            provider.get_job(f"missing-{secrets.token_hex(6)}", endpoint=endpoint)


__all__ = ["PodEnv", "ProviderConformance", "carries_secret", "default_pod_env"]
