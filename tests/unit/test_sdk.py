"""The stateless SDK on the mock provider (in memory)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any, ClassVar

import pytest

import atlas_tasks as atlas
from atlas_tasks.auth.tokens import token_hash, token_valid
from atlas_tasks.constants import PRESHARED_KEY_ENV, SIGNING_SECRET_ENV
from atlas_tasks.providers.base import ProviderContext
from atlas_tasks.providers.mock import MockProvider, secret_digest
from atlas_tasks.specs import JobRequest


@pytest.fixture(autouse=True)
def _fresh_mock() -> Iterator[None]:
    MockProvider.reset()
    yield
    MockProvider.reset()


def test_spawn_returns_a_running_mock_compute() -> None:
    compute = atlas.spawn_compute(
        provider="mock",
        gpu="h100",
        gpu_count=2,
        image="img:1",
        name="atlas-a",
        ports=[(8000, "http"), (22, "tcp")],
        region_hints=["US-TX-3", "EU"],
    )
    assert compute.id.startswith("mock-") and len(compute.id) == len("mock-") + 11
    assert compute.provider == "mock"
    assert compute.status == atlas.ComputeStatus.RUNNING
    assert compute.public_ip == "203.0.113.1"
    assert [p.model_dump() for p in compute.ports] == [
        {
            "internal": 8000,
            "external": 8000,
            "protocol": "http",
            "url": f"https://{compute.id}-8000.mock.local",
        },
        {"internal": 22, "external": 22, "protocol": "tcp", "url": "tcp://203.0.113.1:22"},
    ]
    assert (compute.gpu_type, compute.gpu_count, compute.cost_per_hour) == ("h100", 2, 0.0)
    assert (compute.region, compute.image, compute.name) == ("US-TX-3", "img:1", "atlas-a")
    assert compute.created_at is not None and compute.created_at.tzinfo is not None
    assert compute.auth is None


def test_ids_are_unique() -> None:
    ids = {atlas.spawn_compute(provider="mock").id for _ in range(50)}
    assert len(ids) == 50


def test_request_object_and_fields_merge() -> None:
    request = atlas.ComputeRequest(gpu="h100", image="img")
    compute = atlas.spawn_compute(request, provider="mock", name="merged")
    assert (compute.gpu_type, compute.image, compute.name) == ("h100", "img", "merged")
    assert atlas.spawn_compute({"image": "from-dict"}, provider="mock").image == "from-dict"


def test_bearer_token_returned_once_and_env_injected() -> None:
    compute = atlas.spawn_compute(
        provider="mock", gpu="h100", image="img", auth="bearer", env={"MODEL": "llama"}
    )
    auth = compute.auth
    assert auth is not None and auth.scheme == "bearer"
    assert auth.token is not None and len(auth.token) >= 43
    assert auth.hash == token_hash(auth.token)
    assert auth.header == f"Authorization: Bearer {auth.token}"
    env = compute.raw["env"]
    assert env["MODEL"] == "llama"
    # The pod got the token (the mock records only its digest, never the raw value).
    assert env[PRESHARED_KEY_ENV] == secret_digest(auth.token)
    assert token_valid(auth.token, auth.hash)

    again = atlas.get_compute(compute.id, provider="mock")
    assert again.auth is None
    assert auth.token not in again.model_dump_json()
    listed = atlas.list_compute(provider="mock")
    assert auth.token not in "".join(c.model_dump_json() for c in listed)


def test_each_spawn_mints_a_new_token() -> None:
    a = atlas.spawn_compute(provider="mock", auth="bearer")
    b = atlas.spawn_compute(provider="mock", auth="bearer")
    assert a.auth and b.auth and a.auth.token != b.auth.token


def test_signed_url_secret_injected() -> None:
    compute = atlas.spawn_compute(provider="mock", image="img", auth="signed_url")
    assert compute.auth is not None and compute.auth.scheme == "signed_url"
    secret = compute.auth.token
    assert secret is not None and len(secret) >= 32
    env = compute.raw["env"]
    assert env[SIGNING_SECRET_ENV] == secret_digest(secret)
    assert PRESHARED_KEY_ENV not in env


def test_pre_minted_secret_is_used() -> None:
    provider = atlas.get_provider("mock")
    req = atlas.ComputeRequest(auth="bearer")
    compute = provider.spawn_compute(req, secret="x" * 43)
    assert compute.auth is not None and compute.auth.token == "x" * 43
    assert compute.raw["env"][PRESHARED_KEY_ENV] == secret_digest("x" * 43)


def test_lifecycle_and_filters() -> None:
    a = atlas.spawn_compute(provider="mock", gpu="h100", name="a", region_hints=["r1"])
    b = atlas.spawn_compute(provider="mock", gpu="a100_80g", name="b", region_hints=["r2"])

    def ids(computes: list[atlas.Compute]) -> set[str]:
        return {c.id for c in computes}

    assert ids(atlas.list_compute(provider="mock")) == {a.id, b.id}
    assert ids(atlas.list_compute(provider="mock", gpu="h100")) == {a.id}
    assert ids(atlas.list_compute(provider="mock", gpu="A100_80G")) == {b.id}
    assert ids(atlas.list_compute(provider="mock", region="r2")) == {b.id}
    assert ids(atlas.list_compute(provider="mock", name="a", gpu="h100")) == {a.id}
    assert ids(atlas.list_compute(provider="mock", name="a", gpu="a100_80g")) == set()

    atlas.stop(a.id, provider="mock")
    assert atlas.get_compute(a.id, provider="mock").status == "stopped"
    assert ids(atlas.list_compute(provider="mock", status="stopped")) == {a.id}
    atlas.start(a.id, provider="mock")
    assert atlas.get_compute(a.id, provider="mock").status == "running"
    atlas.terminate(a.id, provider="mock")
    assert atlas.get_compute(a.id, provider="mock").status == "terminated"
    assert ids(atlas.list_compute(provider="mock", status=atlas.ComputeStatus.RUNNING)) == {b.id}


def test_unknown_ids_are_not_found() -> None:
    for call in (atlas.get_compute, atlas.stop, atlas.start, atlas.terminate):
        with pytest.raises(atlas.NotFoundError) as info:
            call("mock-missing", provider="mock")
        assert info.value.provider == "mock"
        assert "mock-missing" in str(info.value)


def test_bad_input_names_the_field() -> None:
    cases: list[tuple[Any, str]] = [
        (lambda: atlas.spawn_compute(provider="mock", gpu="nope"), "gpu"),
        (lambda: atlas.spawn_compute(provider="mock", ports=[(0, "http")]), "ports"),
        (lambda: atlas.spawn_compute(provider="mock", colour="red"), "colour"),
        (lambda: atlas.get_compute("", provider="mock"), "id"),
        (lambda: atlas.terminate(None, provider="mock"), "id"),  # type: ignore[arg-type]
        (lambda: atlas.list_compute(provider="mock", status="sleeping"), "status"),
        (lambda: atlas.list_compute(provider="mock", gpu="nope"), "gpu"),
        (lambda: atlas.run_job(provider="mock", input=1), "endpoint"),
        (
            lambda: atlas.run_job(provider="mock", endpoint="e", mode="later"),  # type: ignore[arg-type]
            "mode",
        ),
        (lambda: atlas.get_job("j", endpoint="", provider="mock"), "endpoint"),
        (lambda: atlas.spawn_compute(provider="nimbus"), "provider"),
    ]
    for call, field in cases:
        with pytest.raises(atlas.ValidationError) as info:
            call()
        assert info.value.field == field, (field, info.value)
        assert info.value.kind == "validation"


def test_async_job_and_get_cancel() -> None:
    job = atlas.run_job(provider="mock", endpoint="ep1", input={"prompt": "hi"})
    assert job.id.startswith("job-")
    assert job.status == atlas.JobStatus.COMPLETED
    assert job.output == {"echo": {"prompt": "hi"}}
    assert (job.execution_time_ms, job.delay_time_ms, job.endpoint) == (0, 0, "ep1")
    assert atlas.get_job(job.id, endpoint="ep1", provider="mock").output == job.output
    atlas.cancel_job(job.id, endpoint="ep1", provider="mock")
    assert atlas.get_job(job.id, endpoint="ep1", provider="mock").status == "cancelled"
    with pytest.raises(atlas.NotFoundError):
        atlas.get_job(job.id, endpoint="other-endpoint", provider="mock")
    with pytest.raises(atlas.NotFoundError):
        atlas.cancel_job("job-missing", endpoint="ep1", provider="mock")


def test_sync_job() -> None:
    job = atlas.run_job(provider="mock", endpoint="ep", input=[1, 2], mode="sync", timeout_ms=5_000)
    assert job.status == "completed" and job.output == {"echo": [1, 2]}


def test_job_request_object_keeps_its_mode() -> None:
    request = JobRequest(endpoint="ep", input="x", mode="sync", timeout_ms=1000)
    job = atlas.run_job(request, provider="mock")
    assert job.raw["request"]["mode"] == "sync"
    overridden = atlas.run_job(request, provider="mock", mode="async")
    assert overridden.raw["request"]["mode"] == "async"


def test_sync_job_hard_timeout() -> None:
    slow = atlas.get_provider("mock", latency_s=0.5)
    started = time.monotonic()
    with pytest.raises(atlas.AtlasTimeoutError) as info:
        atlas.run_job(provider=slow, endpoint="ep", input=1, mode="sync", timeout_ms=100)
    elapsed = time.monotonic() - started
    assert elapsed < 0.4
    assert info.value.kind == "timeout"
    assert info.value.provider == "mock"
    assert "100 ms" in str(info.value)


def test_sync_job_errors_propagate_from_the_worker_thread() -> None:
    class Broken(MockProvider):
        def run_job(self, request: JobRequest) -> atlas.Job:
            raise atlas.AtlasError("quota", kind="rate_limited", provider="mock", status=429)

    with pytest.raises(atlas.RateLimitedError, match="quota"):
        atlas.run_job(provider=Broken(), endpoint="ep", mode="sync", timeout_ms=2000)


def test_async_job_is_not_bound_by_the_sync_deadline() -> None:
    slow = atlas.get_provider("mock", latency_s=0.2)
    job = atlas.run_job(provider=slow, endpoint="ep", input=1, timeout_ms=50)
    assert job.status == "completed"


def test_stream_job_yields_the_output_once() -> None:
    job = atlas.run_job(provider="mock", endpoint="ep", input="tok")
    stream = atlas.stream_job(job.id, endpoint="ep", provider="mock")
    assert list(stream) == [{"echo": "tok"}]
    with pytest.raises(atlas.NotFoundError):
        list(atlas.stream_job("job-missing", endpoint="ep", provider="mock"))


def test_list_gpu_types_and_capabilities() -> None:
    (entry,) = atlas.list_gpu_types(provider="mock")
    assert (entry.id, entry.canonical, entry.display_name) == ("mock-h100", "h100", "Mock H100")
    assert (entry.memory_gb, entry.lowest_price_per_hour, entry.stock) == (80, 0.0, "high")
    expected = frozenset(
        {
            "spot",
            "serverless",
            "network_volumes",
            "http_proxy",
            "raw_tcp",
            "webhooks",
            "job_stream_reads",
        }
    )
    assert atlas.capabilities("mock") == expected
    assert atlas.capabilities(MockProvider) == expected
    assert atlas.capabilities(MockProvider()) == expected


def test_capabilities_uses_default_provider(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ATLAS_DEFAULT_PROVIDER", "mock")
    from atlas_tasks.config import reset_settings

    reset_settings()
    assert "serverless" in atlas.capabilities()


def test_non_atlas_exceptions_are_wrapped() -> None:
    class Buggy(MockProvider):
        name: ClassVar[str] = "buggy"

        def get_compute(self, compute_id: str) -> atlas.Compute:
            raise KeyError("status")

        def list_compute(self, **filters: Any) -> list[atlas.Compute]:
            return [atlas.Compute.model_validate({"id": 1})]  # malformed "cloud answer"

    with pytest.raises(atlas.UnknownError) as info:
        atlas.get_compute("x", provider=Buggy())
    assert isinstance(info.value.__cause__, KeyError)
    with pytest.raises(atlas.ProviderError, match="malformed provider response"):
        atlas.list_compute(provider=Buggy())


def test_stream_errors_are_wrapped_mid_iteration() -> None:
    class Flaky(MockProvider):
        def stream_job(self, job_id: str, *, endpoint: str) -> Iterator[Any]:
            yield 1
            raise ConnectionResetError("peer reset")

    stream = atlas.stream_job("j", endpoint="e", provider=Flaky())
    assert next(stream) == 1
    with pytest.raises(atlas.AtlasError, match="peer reset"):
        next(stream)


def test_memory_state_is_shared_between_instances() -> None:
    a = MockProvider(ProviderContext())
    b = MockProvider(ProviderContext())
    compute = a.spawn_compute(atlas.ComputeRequest(name="shared"))
    assert b.get_compute(compute.id).name == "shared"
    MockProvider.reset()
    with pytest.raises(atlas.NotFoundError):
        b.get_compute(compute.id)


def test_memory_state_is_thread_safe() -> None:
    provider = MockProvider()

    def spawn_many() -> None:
        for _ in range(50):
            c = provider.spawn_compute(atlas.ComputeRequest())
            provider.stop(c.id)

    threads = [threading.Thread(target=spawn_many) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(provider.list_compute(status="stopped")) == 200


def test_bad_mock_state_option() -> None:
    with pytest.raises(atlas.ValidationError) as info:
        atlas.get_provider("mock", state="disk")
    assert info.value.field == "state"
