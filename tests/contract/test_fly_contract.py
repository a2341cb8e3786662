"""Fly Machines: our provider's requests and the fake cloud's answers, held to Fly's
definition (``fly-machines-openapi.json``, converted from Fly's Jan-2024 swagger) plus
``fly-supplement.json`` (what Fly added since: ``guest.gpus``, the valid ``gpu_kind``s,
``DELETE ?force``, ``/wait`` 408).

Two directions: the provider's real traffic (create, wait, get, list, stop, start,
destroy, errors) through a transport that validates every exchange; and the fake cloud
answering requests shaped like Fly's documented ones (flyctl-style bodies, a bad field,
an unknown app or machine, a wait that times out).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from atlas_tasks.errors import NotFoundError, UnauthorizedError, ValidationError
from atlas_tasks.providers.base import ProviderContext
from atlas_tasks.providers.fly_machines import FlyMachinesProvider
from atlas_tasks.providers.fly_machines import translate as fly_translate
from atlas_tasks.specs import ComputeStatus, build_compute_request
from atlas_tasks.testing.fakecloud import FakeCloud
from atlas_tasks.testing.fakecloud.fly_machines import DEFAULT_APP, fly_base_url, fly_state
from tests.contract.provider_traffic import CheckedTransport, checked_client
from tests.contract.spec_check import SpecChecker, load_spec_dict

SPEC = "fly-machines-openapi.json"
SUPPLEMENT: dict[str, Any] = load_spec_dict("fly-supplement.json")
ERROR = {"$ref": "#/components/schemas/ErrorResponse"}
ERROR_RESPONSE = {"description": "Error", "content": {"application/json": {"schema": ERROR}}}


def with_supplement(document: dict[str, Any]) -> None:
    """Amend the Jan-2024 definition with what Fly published since (fly-supplement.json),
    and check request bodies strictly.

    Why each change:

    * ``guest.gpus``/``max_memory_mb``/``persist_rootfs``, the config and create fields and
      ``DELETE ?force``/``?kill`` exist in Fly's Go client and docs but not in the swagger
      the definition was converted from; without them valid traffic would be flagged.
    * ``gpu_kind`` gets the enum of kinds flyctl accepts, so a wrong kind fails here.
    * ``/wait`` may answer 408 (Fly's docs), which the swagger omits.
    * 200s declared as ``content: {}`` (the swagger conversion's "no schema") lose that
      empty map: openapi-core reads it as "a body is required but no media type is
      allowed", which no answer can satisfy, while OpenAPI means "not described".
    * Every operation gets a ``default`` ``ErrorResponse``: Fly answers any failure (404
      unknown app or machine, 412, 401...) with ``{"error": "..."}``, while the swagger
      declares only some; this keeps error bodies checked instead of unmatched.
    * Request schemas (create, config, guest) reject unknown properties: Fly's decoder
      silently drops unknown fields, so a misspelt or invented field is a bug on our side
      even though Fly would answer 200.
    """
    schemas = document["components"]["schemas"]
    guest = schemas["api.MachineGuest"]
    guest["properties"].update(SUPPLEMENT["guest_fields_added"])
    guest["properties"]["gpu_kind"] = {"type": "string", "enum": SUPPLEMENT["gpu_kinds"]}
    config = schemas["api.MachineConfig"]
    for name in SUPPLEMENT["config_fields_added"]:
        config["properties"].setdefault(name, {})
    create = schemas["CreateMachineRequest"]
    create["properties"].update(SUPPLEMENT["create_fields_added"])
    for schema in (guest, config, create):
        schema["additionalProperties"] = False
    delete = document["paths"]["/apps/{app_name}/machines/{machine_id}"]["delete"]
    for name, schema in SUPPLEMENT["delete_query_params_added"].items():
        delete["parameters"].append(
            {"in": "query", "name": name, "required": False, "schema": schema}
        )
    wait = document["paths"]["/apps/{app_name}/machines/{machine_id}/wait"]["get"]
    for status in SUPPLEMENT["wait_statuses_added"]:
        wait["responses"][status] = ERROR_RESPONSE
    for item in document["paths"].values():
        for operation in item.values():
            if isinstance(operation, dict) and "responses" in operation:
                for response in operation["responses"].values():
                    if response.get("content") == {}:
                        del response["content"]
                operation["responses"].setdefault("default", ERROR_RESPONSE)


@pytest.fixture
def checker() -> SpecChecker:
    # The fake mounts Fly under /fly; the definition's server is .../v1.
    return SpecChecker.for_spec(SPEC, strip_prefix="/fly/v1", patch=with_supplement)


def provider(
    cloud: FakeCloud, checker: SpecChecker, api_key: str | None = None
) -> FlyMachinesProvider:
    ctx = ProviderContext(
        api_key=api_key or cloud.api_key,
        base_url=fly_base_url(cloud.url),
        transport=CheckedTransport(checker),
        options={"app": DEFAULT_APP},
    )
    fly = FlyMachinesProvider(ctx)
    fly.sleep = lambda _s: None
    return fly


def test_provider_traffic_matches_the_definition(cloud: FakeCloud, checker: SpecChecker) -> None:
    fly = provider(cloud, checker)
    compute = fly.spawn_compute(
        build_compute_request(
            gpu="a100_80g",
            gpu_count=2,
            image="ghcr.io/acme/infer:1",
            name="atlas-fc-1",
            ports=[(8000, "http"), (9000, "tcp")],
            env={"ATLAS_PRESHARED_KEY": "t0k"},
            region_hints=["ord"],
            provider_opts={
                "skip_service_registration": False,
                "config": {"restart": {"policy": "no"}, "auto_destroy": False},
                "guest": {"kernel_args": ["quiet"]},
                "metadata": {"team": "ml"},
            },
        )
    )
    assert compute.status == ComputeStatus.RUNNING and compute.gpu_type == "a100_80g"
    assert fly.get_compute(compute.id).name == "atlas-fc-1"
    assert [c.id for c in fly.list_compute(name="atlas-fc-1")] == [compute.id]
    fly.stop(compute.id)
    fly.start(compute.id)
    for gpu in ("a100_40g", "l40s", "a10"):
        other = fly.spawn_compute(build_compute_request(gpu=gpu, image="i", name=f"atlas-fc-{gpu}"))
        fly.terminate(other.id)
    fly.terminate(compute.id)
    with pytest.raises(NotFoundError):
        fly.get_compute("0123456789abcd")
    with pytest.raises(NotFoundError):
        fly.terminate("0123456789abcd")
    fly.close()
    assert checker.checked >= 20
    checker.assert_clean()


def test_provider_error_answers_match_the_definition(
    cloud: FakeCloud, checker: SpecChecker
) -> None:
    with pytest.raises(UnauthorizedError):
        provider(cloud, checker, api_key="wrong").list_compute()
    fly = provider(cloud, checker)
    with pytest.raises(NotFoundError, match="Could not find App"):
        fly.get_compute("no-such-app/0123456789abcd")
    fly.close()
    assert checker.checked >= 2
    checker.assert_clean()


def test_our_field_lists_are_the_definitions() -> None:
    schemas = load_spec_dict(SPEC)["components"]["schemas"]
    assert fly_translate.CREATE_FIELDS == set(schemas["CreateMachineRequest"]["properties"]) | set(
        SUPPLEMENT["create_fields_added"]
    )
    assert fly_translate.CONFIG_FIELDS == set(schemas["api.MachineConfig"]["properties"]) | set(
        SUPPLEMENT["config_fields_added"]
    )
    assert fly_translate.GUEST_FIELDS == set(schemas["api.MachineGuest"]["properties"]) | set(
        SUPPLEMENT["guest_fields_added"]
    )


def test_a_field_outside_the_definition_is_caught(checker: SpecChecker) -> None:
    # The checks can fail: a request with an invented guest field or a wrong gpu_kind.
    request = httpx.Request(
        "POST",
        f"http://x/fly/v1/apps/{DEFAULT_APP}/machines",
        json={"config": {"image": "i", "guest": {"gpu_kind": "a100-80gb", "gpu_count": 1}}},
    )
    errors = checker.request_errors(request)
    assert errors and any("a100-80gb" in e for e in errors)
    with pytest.raises(ValidationError):
        fly_translate.machine_create_body(
            build_compute_request(gpu="l40s", image="i", provider_opts={"guest": {"gpu_count": 1}})
        )


# ---------------------------------------------------------------- fake cloud, documented shapes
@pytest.fixture
def api(cloud: FakeCloud, checker: SpecChecker) -> Iterator[httpx.Client]:
    with checked_client(fly_base_url(cloud.url), checker, cloud.api_key) as client:
        yield client


def test_fake_answers_documented_requests_per_the_definition(
    cloud: FakeCloud, api: httpx.Client, checker: SpecChecker
) -> None:
    url = f"/v1/apps/{DEFAULT_APP}/machines"
    body = {
        "name": "docs-1",
        "region": "ord",
        "config": {
            "image": "flyio/fastify-functions",
            "env": {"APP_ENV": "production"},
            "guest": {
                "cpu_kind": "performance",
                "cpus": 8,
                "memory_mb": 32768,
                "gpu_kind": "l40s",
                "gpus": 1,
            },
            "services": [
                {
                    "protocol": "tcp",
                    "internal_port": 8080,
                    "ports": [
                        {"port": 443, "handlers": ["tls", "http"]},
                        {"port": 80, "handlers": ["http"], "force_https": True},
                    ],
                }
            ],
            "restart": {"policy": "on-failure"},
            "metadata": {"team": "ml"},
        },
    }
    created = api.post(url, json=body)
    assert created.status_code == 200
    machine = created.json()
    mid, instance_id = machine["id"], machine["instance_id"]
    assert api.get(f"{url}/{mid}/wait", params={"state": "started", "timeout": 5}).json() == {
        "ok": True
    }
    assert api.get(f"{url}/{mid}").json()["config"]["guest"]["gpus"] == 1
    assert len(api.get(url, params={"region": "ord"}).json()) == 1
    assert (
        api.post(f"{url}/{mid}/stop", json={"signal": "SIGINT", "timeout": "5s"}).status_code == 200
    )
    assert (
        api.get(
            f"{url}/{mid}/wait",
            params={"state": "stopped", "instance_id": instance_id, "timeout": 5},
        ).status_code
        == 200
    )
    assert api.post(f"{url}/{mid}/start").status_code == 200
    assert api.delete(f"{url}/{mid}", params={"force": "true"}).status_code == 200
    listed = api.get(url, params={"include_deleted": "true"}).json()
    assert [m["state"] for m in listed] == ["destroyed"]
    assert checker.checked == 9  # create, 2 waits, get, 2 lists, stop, start, delete
    checker.assert_clean()


def test_fake_error_answers_match_the_definition(
    cloud: FakeCloud, api: httpx.Client, checker: SpecChecker
) -> None:
    url = f"/v1/apps/{DEFAULT_APP}/machines"
    fly_state(cloud.ctx).boot_delay_s = 30
    machine = api.post(url, json={"config": {"image": "x"}}).json()
    timed_out = api.get(f"{url}/{machine['id']}/wait", params={"state": "started", "timeout": 1})
    assert timed_out.status_code == 408
    assert api.get(f"{url}/0123456789abcd").status_code == 404
    assert api.get("/v1/apps/nope/machines").status_code == 404
    bad = api.post(url, json={"config": {"image": "x", "guest": {"memory_mb": 1000}}})
    assert bad.status_code == 400 and "memory" in bad.json()["error"]
    assert checker.checked == 5
    checker.assert_clean()


@pytest.mark.parametrize(
    "body",
    [
        {"config": {"image": "x"}, "nme": "typo"},
        {"config": {"image": "x", "enviroment": {"A": "b"}}},
        {"config": {"image": "x", "guest": {"gpu_count": 1}}},
        {"config": {"image": "x", "guest": {"gpu_kind": "a100-80gb"}}},
    ],
)
def test_fake_rejects_fields_outside_the_definition(
    api: httpx.Client, body: dict[str, Any]
) -> None:
    answer = api.post(f"/v1/apps/{DEFAULT_APP}/machines", json=body)
    assert answer.status_code == 400
    assert set(answer.json()) == {"error"} and isinstance(answer.json()["error"], str)


def test_fake_restarts_a_machine_per_the_definition(
    api: httpx.Client, checker: SpecChecker
) -> None:
    # Machines_restart is in the definition; the fake answered it with its own 404.
    url = f"/v1/apps/{DEFAULT_APP}/machines"
    mid = api.post(url, json={"config": {"image": "x"}}).json()["id"]
    assert (
        api.get(f"{url}/{mid}/wait", params={"state": "started", "timeout": 5}).status_code == 200
    )
    restarted = api.post(f"{url}/{mid}/restart", params={"timeout": "10s"})
    assert restarted.status_code == 200 and restarted.json() == {"ok": True}
    assert (
        api.get(f"{url}/{mid}/wait", params={"state": "started", "timeout": 5}).status_code == 200
    )
    api.post(f"{url}/{mid}/stop")
    api.get(f"{url}/{mid}/wait", params={"state": "stopped", "timeout": 5})
    refused = api.post(f"{url}/{mid}/restart")
    assert refused.status_code == 400 and "not started" in refused.json()["error"]
    assert api.post(f"{url}/0123456789abcd/restart").status_code == 404
    assert checker.checked == 8  # create, 3 waits, 2 restarts, stop, 404
    checker.assert_clean()


def test_fake_lists_and_deletes_apps_per_the_definition(
    api: httpx.Client, checker: SpecChecker
) -> None:
    # Apps_list and Apps_delete are in the definition; the fake answered both 405.
    assert (
        api.post("/v1/apps", json={"app_name": "atlas-apps-1", "org_slug": "acme"}).status_code
        == 201
    )
    mid = api.post("/v1/apps/atlas-apps-1/machines", json={"config": {"image": "x"}}).json()["id"]
    listed = api.get("/v1/apps", params={"org_slug": "acme"})
    assert listed.status_code == 200
    assert listed.json() == {
        "total_apps": 1,
        "apps": [{"id": "atlas-apps-1", "name": "atlas-apps-1", "network": {}, "machine_count": 1}],
    }
    assert api.get("/v1/apps", params={"org_slug": "personal"}).json()["total_apps"] == 1
    deleted = api.delete("/v1/apps/atlas-apps-1")
    assert deleted.status_code == 202 and deleted.content == b""
    assert api.get("/v1/apps", params={"org_slug": "acme"}).json()["total_apps"] == 0
    assert api.get("/v1/apps/atlas-apps-1/machines").status_code == 404
    assert api.delete("/v1/apps/atlas-apps-1").status_code == 404
    assert mid
    assert checker.checked == 8
    checker.assert_clean()
