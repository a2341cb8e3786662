"""Lambda Cloud: our provider's requests and the fake cloud's answers, held to Lambda's
published OpenAPI definition 1.8.3 (``../shared/reference/specs/``).

Two directions:

* the provider's real traffic (launch, get, list, terminate, catalog, errors) through a
  transport that validates every exchange;
* the fake cloud answering requests shaped the way Lambda's own documentation and
  clients send them (minimal bodies, invalid ones, an unknown key, booting and
  preempted instances).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from atlas_tasks.config import AtlasSettings
from atlas_tasks.errors import NotFoundError, ProviderError, UnauthorizedError
from atlas_tasks.providers.base import ProviderContext
from atlas_tasks.providers.lambda_labs import LambdaLabsProvider
from atlas_tasks.specs import ComputeStatus, build_compute_request
from atlas_tasks.testing.fakecloud import FakeCloud
from atlas_tasks.testing.fakecloud.lambda_labs import DEFAULT_SSH_KEY, INSTANCE_TYPES
from tests.contract.provider_traffic import CheckedTransport, checked_client
from tests.contract.spec_check import SpecChecker, load_spec_dict

SPEC = "lambda-cloud-openapi-1.8.3.json"


@pytest.fixture
def checker() -> SpecChecker:
    # The fake cloud mounts Lambda under /lambda; the definition's paths start at /api/v1.
    return SpecChecker.for_spec(SPEC, strip_prefix="/lambda")


def provider(
    cloud: FakeCloud, checker: SpecChecker, api_key: str | None = None
) -> LambdaLabsProvider:
    ctx = ProviderContext(
        api_key=api_key or cloud.api_key,
        base_url=cloud.lambda_labs_url,
        transport=CheckedTransport(checker),
        settings=AtlasSettings(lambda_labs_ssh_key_name=DEFAULT_SSH_KEY),
    )
    lam = LambdaLabsProvider(ctx)
    lam.sleep = lambda _s: None
    return lam


def test_provider_traffic_matches_the_definition(cloud: FakeCloud, checker: SpecChecker) -> None:
    lam = provider(cloud, checker)
    request = build_compute_request(
        gpu="h100",
        image="ghcr.io/acme/infer:1",
        name="atlas-contract-1",
        ports=[(8000, "http")],
        env={"ATLAS_PRESHARED_KEY": "t0k"},
        provider_opts={"file_system_names": [], "hostname": "atlas-node-1"},
    )
    compute = lam.spawn_compute(request)
    assert compute.status == ComputeStatus.RUNNING
    assert lam.get_compute(compute.id).name == "atlas-contract-1"
    assert [c.id for c in lam.list_compute(name="atlas-contract-1")] == [compute.id]
    four = lam.spawn_compute(
        build_compute_request(gpu="a100_40g", image="i", name="atlas-contract-2")
    )
    assert four.gpu_type == "a100_40g"
    assert {t.id for t in lam.list_gpu_types()} >= {"gpu_1x_h100_sxm5", "gpu_8x_h100_sxm5"}
    lam.terminate(compute.id)
    lam.terminate(four.id)
    assert lam.get_compute(compute.id).status == ComputeStatus.TERMINATED
    with pytest.raises(NotFoundError):
        lam.get_compute("0" * 32)
    with pytest.raises(NotFoundError):
        lam.terminate("0" * 32)
    lam.close()
    # launch x2, instance-types x3 (2 launches + catalog), gets, list, terminates, 404s
    assert checker.checked >= 12
    checker.assert_clean()


def test_provider_error_answers_match_the_definition(
    cloud: FakeCloud, checker: SpecChecker
) -> None:
    with pytest.raises(UnauthorizedError):
        provider(cloud, checker, api_key="wrong-key").list_compute()
    # Capacity only known to the server: the catalog says free, the launch says no.
    lam = provider(cloud, checker)
    lam.list_gpu_types()
    cloud.fail_next(
        "POST /instance-operations/launch",
        400,
        body={
            "error": {
                "code": "instance-operations/launch/insufficient-capacity",
                "message": "Not enough capacity to fulfill launch request.",
            }
        },
    )
    with pytest.raises(ProviderError, match="insufficient capacity"):
        lam.spawn_compute(build_compute_request(gpu="a10", image="i", name="atlas-c3"))
    lam.close()
    assert checker.checked >= 4
    checker.assert_clean()


# ---------------------------------------------------------------- official-client shapes
@pytest.fixture
def api(cloud: FakeCloud, checker: SpecChecker) -> Iterator[httpx.Client]:
    with checked_client(cloud.lambda_labs_url, checker, cloud.api_key) as client:
        yield client


def launch(api: httpx.Client, **extra: Any) -> httpx.Response:
    body = {
        "region_name": "us-east-1",
        "instance_type_name": "gpu_1x_a10",
        "ssh_key_names": [DEFAULT_SSH_KEY],
        **extra,
    }
    return api.post("/instance-operations/launch", json=body)


def test_fake_answers_documented_requests_per_the_definition(
    cloud: FakeCloud, api: httpx.Client, checker: SpecChecker
) -> None:
    minimal = launch(api)  # no name: the instance must not carry "name": null
    assert minimal.status_code == 200
    instance_id = minimal.json()["data"]["instance_ids"][0]
    named = launch(
        api, name="My Instance", file_system_names=[], tags=[{"key": "team", "value": "ml"}]
    )
    assert named.status_code == 200
    for status in ("booting", "preempted", "unhealthy"):
        forced = httpx.post(
            f"{cloud.url}/_admin/lambda_labs/instances/{instance_id}/status",
            json={"status": status},
        )
        assert forced.status_code == 200
        got = api.get(f"/instances/{instance_id}").json()["data"]
        assert got["status"] == status and "actions" in got
        assert None not in got.values()
    listed = api.get("/instances").json()["data"]
    assert len(listed) == 2 and all("actions" in i for i in listed)
    assert api.get("/instance-types").status_code == 200
    assert api.get("/ssh-keys").status_code == 200
    done = api.post("/instance-operations/terminate", json={"instance_ids": [instance_id]})
    assert done.json()["data"]["terminated_instances"][0]["status"] == "terminating"
    assert checker.checked == 9  # 2 launches, 3 gets, list, types, keys, terminate
    checker.assert_clean()


def test_fake_names_missing_required_launch_fields(api: httpx.Client) -> None:
    # It used to say "instance_type_name: unknown instance type None".
    answer = api.post("/instance-operations/launch", json={"region_name": "us-east-1"})
    assert answer.status_code == 400
    assert answer.json()["error"]["message"] == "instance_type_name, ssh_key_names: required"


@pytest.mark.parametrize(
    ("extra", "code"),
    [
        ({"quantity": 1}, "global/invalid-parameters"),  # not an InstanceLaunchRequest field
        ({"hostname": "Not A Hostname"}, "global/invalid-parameters"),
        ({"ssh_key_names": ["nobody"]}, "global/invalid-parameters"),
        (
            {"instance_type_name": "gpu_1x_h100_pcie"},  # sold out in the fake
            "instance-operations/launch/insufficient-capacity",
        ),
    ],
)
def test_fake_rejects_like_the_definition_says(
    api: httpx.Client, checker: SpecChecker, extra: dict[str, Any], code: str
) -> None:
    answer = launch(api, **extra)
    assert answer.status_code == 400
    assert answer.json()["error"]["code"] == code
    if "quantity" in extra or "hostname" in extra:
        # The fake is the strict one here: the definition would let the request through
        # (quantity) or already flags it (hostname); either way the answer is valid.
        checker.violations = [v for v in checker.violations if v.side == "response"]
    checker.assert_clean()


def test_fake_404_and_401_bodies_match_the_definition(
    cloud: FakeCloud, api: httpx.Client, checker: SpecChecker
) -> None:
    missing = api.get("/instances/0920582c7ff041399e34823a0be62549")
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "global/object-does-not-exist"
    gone = api.post("/instance-operations/terminate", json={"instance_ids": ["nope"]})
    assert gone.status_code == 404
    with checked_client(cloud.lambda_labs_url, checker, "wrong") as stranger:
        anonymous = stranger.get("/instances")
    assert anonymous.status_code == 401
    assert anonymous.json()["error"]["code"] == "global/invalid-api-key"
    assert checker.checked == 3
    checker.assert_clean()


def test_the_definition_really_requires_what_the_fake_sends() -> None:
    # Guards the premise of the checks above: if a future definition relaxed these,
    # the tests would pass for the wrong reason.
    schemas = load_spec_dict(SPEC)["components"]["schemas"]
    assert "actions" in schemas["Instance"]["required"]
    assert schemas["Instance"]["properties"]["ip"] == {
        **schemas["Instance"]["properties"]["ip"],
        "type": "string",
    }
    assert "preempted" in schemas["InstanceStatus"]["enum"]
    assert "quantity" not in schemas["InstanceLaunchRequest"]["properties"]
    assert json.dumps(schemas["InstanceLaunchRequest"]).count("user_data") == 1


def test_fake_sells_only_real_instance_types() -> None:
    real = set(load_spec_dict("lambda-instance-types.json")["instance_types"])
    assert {t.name for t in INSTANCE_TYPES} <= real


def test_fake_restarts_and_renames_per_the_definition(
    api: httpx.Client, checker: SpecChecker
) -> None:
    # restartInstance and postInstance are in the definition; the fake used to answer
    # both with its own 404/405 bodies, which no Lambda client could parse.
    instance_id = launch(api).json()["data"]["instance_ids"][0]
    restarted = api.post("/instance-operations/restart", json={"instance_ids": [instance_id]})
    assert restarted.status_code == 200
    assert restarted.json()["data"]["restarted_instances"][0]["id"] == instance_id
    renamed = api.post(f"/instances/{instance_id}", json={"name": "My Instance"})
    assert renamed.status_code == 200 and renamed.json()["data"]["name"] == "My Instance"
    assert api.get(f"/instances/{instance_id}").json()["data"]["name"] == "My Instance"
    missing = api.post("/instance-operations/restart", json={"instance_ids": ["nope"]})
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "global/object-does-not-exist"
    assert api.post("/instances/nope", json={"name": "x"}).status_code == 404
    api.post("/instance-operations/terminate", json={"instance_ids": [instance_id]})
    gone = api.post("/instance-operations/restart", json={"instance_ids": [instance_id]})
    assert gone.status_code == 404
    assert checker.checked == 8
    checker.assert_clean()


def test_injected_faults_use_lambdas_error_shape(
    cloud: FakeCloud, api: httpx.Client, checker: SpecChecker
) -> None:
    # A fault the fake injects is still a Lambda error object: the definition's 403
    # (ApiErrorAccountInactive: code, message and suggestion) validates, and a 5xx carries
    # global/internal-error. It used to be {"error": "Forbidden"}.
    cloud.fail_next("GET /instances", 403, api="lambda")
    forbidden = api.get("/instances")
    assert forbidden.status_code == 403
    assert forbidden.json()["error"]["code"] == "global/account-inactive"
    checker.assert_clean()
    checker.check_responses = False  # the definition declares no 5xx for listInstances
    cloud.fail_next("GET /instances", 500, api="lambda")
    failed = api.get("/instances")
    assert failed.status_code == 500
    assert failed.json()["error"]["code"] == "global/internal-error"
