"""Vast.ai: our provider's requests and the fake cloud's answers, held to Vast's official
client ``vastai`` 1.9.1 (summarised in ``../shared/reference/specs/
vast-official-client.json``; Vast publishes no OpenAPI definition).

* Our traffic: every search filter uses an official operator and the value types the
  official query parser produces; meta keys, offer types, GPU names, create fields and run
  types are the official client's.
* The fake cloud: requests built exactly the way the official client builds them
  (string filter values, the whole create body with ``user`` and nulls, the paginated
  ``GET /api/v1/instances/``) are understood; what the client would never send is refused
  with Vast's ``{"success": false, "error", "msg"}``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from atlas_tasks.config import AtlasSettings
from atlas_tasks.providers.base import ProviderContext
from atlas_tasks.providers.vast import VastProvider
from atlas_tasks.specs import ComputeStatus, build_compute_request
from atlas_tasks.testing.fakecloud import FakeCloud
from tests.contract.spec_check import load_spec_dict

OFFICIAL: dict[str, Any] = load_spec_dict("vast-official-client.json")

#: Fields the official query parser scales to numbers (``offers_mult`` in vastai 1.9.1).
SCALED = {"cpu_ram", "gpu_ram", "gpu_total_ram", "duration"}

#: Keys ``build_create_instance_payload`` always sends (runtype/args/volume_info only
#: when set).
ALWAYS_SENT = set(OFFICIAL["create_instance_fields"]) - {"runtype", "args", "volume_info"}


class RecordingTransport(httpx.BaseTransport):
    """Real loopback transport that keeps every exchange."""

    def __init__(self) -> None:
        self.exchanges: list[tuple[httpx.Request, httpx.Response]] = []
        self._inner = httpx.HTTPTransport()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = self._inner.handle_request(request)
        response.read()
        self.exchanges.append((request, response))
        return response

    def of(self, method: str, path_part: str) -> list[tuple[Any, Any]]:
        """(request JSON, response JSON) of the exchanges matching method and path."""
        return [
            (json.loads(q.content) if q.content else None, r.json())
            for q, r in self.exchanges
            if q.method == method and path_part in q.url.path
        ]


def query_problems(query: dict[str, Any]) -> list[str]:
    """How a ``/bundles/`` query differs from what the official client can send."""
    problems = []
    for key, spec in query.items():
        if key in OFFICIAL["search_meta_keys"]:
            continue
        if not isinstance(spec, dict):
            problems.append(f"{key}: not an operator object")
            continue
        for op, value in spec.items():
            if op not in OFFICIAL["search_operators"]:
                problems.append(f"{key}: operator {op!r} is not official")
            elif op in ("in", "notin"):
                if not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
                    problems.append(f"{key}.{op}: official lists are lists of strings")
            elif key in SCALED:
                if not isinstance(value, float):
                    problems.append(f"{key}.{op}: the official parser sends a float")
            elif not isinstance(value, bool | str):
                problems.append(
                    f"{key}.{op}: the official parser sends strings or booleans,"
                    f" not {type(value).__name__}"
                )
    if query.get("type") not in OFFICIAL["offer_types"]:
        problems.append(f"type {query.get('type')!r} is not an official offer type")
    name = query.get("gpu_name", {}).get("eq")
    if name is not None and name not in OFFICIAL["gpu_names"]:
        problems.append(f"gpu_name {name!r} is not an official GPU name")
    return problems


def create_problems(body: dict[str, Any]) -> list[str]:
    """How a create body differs from the official client's."""
    problems = [
        f"{k}: not an official create field"
        for k in sorted(set(body) - set(OFFICIAL["create_instance_fields"]))
    ]
    problems += [
        f"{k}: the official client always sends it" for k in sorted(ALWAYS_SENT - set(body))
    ]
    if body.get("client_id") != "me":
        problems.append("client_id must be 'me'")
    if body.get("runtype") is not None and body["runtype"] not in OFFICIAL["runtypes"]:
        problems.append(f"runtype {body['runtype']!r} is not official")
    return problems


def test_checks_catch_what_the_official_client_never_sends() -> None:
    # The checks must be able to fail: the shapes issue 11 found in our old requests.
    assert query_problems({"num_gpus": {"eq": 1}, "type": "on-demand"}) == [
        "num_gpus.eq: the official parser sends strings or booleans, not int"
    ]
    assert query_problems({"gpu_name": {"eq": "H100"}, "type": "on-demand"}) == [
        "gpu_name 'H100' is not an official GPU name"
    ]
    assert query_problems({"x": {"like": "a"}, "type": "spot"}) == [
        "x: operator 'like' is not official",
        "type 'spot' is not an official offer type",
    ]
    assert "args_str: not an official create field" in create_problems(
        {"client_id": "me", "args_str": "x"}
    )


@pytest.mark.parametrize(
    ("gpu", "count", "spot"), [("rtx_4090", 1, False), ("h100", 1, True), ("a100_80g", 1, False)]
)
def test_provider_requests_are_official_client_shapes(
    cloud: FakeCloud, gpu: str, count: int, spot: bool
) -> None:
    transport = RecordingTransport()
    vast = VastProvider(
        ProviderContext(
            api_key=cloud.api_key,
            base_url=cloud.vast_url,
            transport=transport,
            settings=AtlasSettings(),
        )
    )
    vast.sleep = lambda _s: None
    compute = vast.spawn_compute(
        build_compute_request(
            gpu=gpu,
            gpu_count=count,
            image="ghcr.io/acme/infer:1",
            name=f"atlas-vc-{gpu}",
            spot=spot,
            ports=[(8000, "http")],
            env={"ATLAS_PRESHARED_KEY": "t0k"},
            provider_opts={"onstart": "nvidia-smi"},
        )
    )
    assert compute.gpu_type == gpu and compute.status == ComputeStatus.RUNNING
    assert [c.id for c in vast.list_compute(name=f"atlas-vc-{gpu}")] == [compute.id]
    assert vast.list_gpu_types()
    vast.terminate(compute.id)
    vast.close()

    searches = transport.of("POST", "/bundles/")
    creates = transport.of("PUT", "/asks/")
    assert len(searches) == 2 and len(creates) == 1
    for query, answer in searches:
        assert query_problems(query) == []
        assert all(o["gpu_name"] in OFFICIAL["gpu_names"] for o in answer["offers"])
    body, created = creates[0]
    assert create_problems(body) == []
    assert body["label"] == f"atlas-vc-{gpu}" and body["env"]["ATLAS_PRESHARED_KEY"] == "t0k"
    assert created["success"] is True and isinstance(created["new_contract"], int)
    for _, got in transport.of("GET", "/instances/"):
        items = got["instances"]
        for item in items if isinstance(items, list) else [items]:
            assert item["gpu_name"] in OFFICIAL["gpu_names"]
    assert len(transport.exchanges) >= 6


# ---------------------------------------------------------------- official-client shapes
@pytest.fixture
def api(cloud: FakeCloud) -> Iterator[httpx.Client]:
    # The official client's server_url is the host; it prefixes /api/v0 unless the path
    # already names a version (vastai/api/client.py _build_url).
    with httpx.Client(
        base_url=f"{cloud.url}/vast", headers={"Authorization": f"Bearer {cloud.api_key}"}
    ) as client:
        yield client


def official_search(**filters: Any) -> dict[str, Any]:
    """``search_offers`` with the default filters, score order, on-demand, 5 GB."""
    return {
        "verified": {"eq": True},
        "external": {"eq": False},
        "rentable": {"eq": True},
        "rented": {"eq": False},
        **filters,
        "order": [["score", "desc"]],
        "type": "on-demand",
        "allocated_storage": 5.0,
    }


def official_create(**overrides: Any) -> dict[str, Any]:
    """``build_create_instance_payload(image=..., disk=10, runtype="args")``."""
    return {
        "client_id": "me",
        "image": "vastai/base:latest",
        "env": {"-p 8000:8000": "1"},
        "price": None,
        "disk": 10.0,
        "label": None,
        "extra": None,
        "onstart": None,
        "image_login": None,
        "python_utf8": False,
        "lang_utf8": False,
        "use_jupyter_lab": False,
        "jupyter_dir": None,
        "force": False,
        "cancel_unavail": False,
        "template_hash_id": None,
        "user": None,
        "runtype": "args",
        **overrides,
    }


def test_fake_understands_string_filter_values(api: httpx.Client) -> None:
    # parse_query("num_gpus=1 gpu_name=RTX_4090 disk_space>=20 gpu_ram>=20")
    query = official_search(
        num_gpus={"eq": "1"},
        gpu_name={"eq": "RTX 4090"},
        disk_space={"gte": "20"},
        gpu_ram={"gte": 20_000.0},
    )
    assert query_problems(query) == []
    offers = api.post("/api/v0/bundles/", json=query).json()["offers"]
    assert offers and {(o["gpu_name"], o["num_gpus"], o["verified"]) for o in offers} == {
        ("RTX 4090", 1, True)
    }
    listed = api.post(
        "/api/v0/bundles/",
        json=official_search(gpu_name={"in": ["H100 SXM", "H100 PCIE"]}, num_gpus={"gte": "1"}),
    ).json()["offers"]
    assert {o["gpu_name"] for o in listed} == {"H100 SXM", "H100 PCIE"}
    bad = api.post("/api/v0/bundles/", json=official_search(num_gpus={"like": "1"}))
    assert bad.status_code == 400 and bad.json()["success"] is False


def test_fake_accepts_the_official_create_body_and_paginated_list(
    cloud: FakeCloud, api: httpx.Client
) -> None:
    ids = []
    for label in ("atlas-a", "atlas-b", None):
        answer = api.put("/api/v0/asks/7100001/", json=official_create(label=label))
        assert answer.status_code == 200, answer.text
        ids.append(answer.json()["new_contract"])
    one = api.get(f"/api/v0/instances/{ids[0]}/", params={"owner": "me"}).json()["instances"]
    assert one["id"] == ids[0] and one["label"] == "atlas-a"
    # show_instances: JSON-encoded query args, pages followed through next_token.
    params: dict[str, str] = {
        "select_filters": "{}",
        "order_by": json.dumps([{"col": "id", "dir": "asc"}]),
        "limit": "2",
    }
    seen: list[int] = []
    while True:
        page = api.get("/api/v1/instances/", params=params)
        assert page.status_code == 200, page.text
        data = page.json()
        assert data["total_instances"] == 3
        for row in data["instances"]:
            assert isinstance(row["start_date"], float) and isinstance(row["extra_env"], list)
        seen += [row["id"] for row in data["instances"]]
        if not data["next_token"]:
            break
        params["after_token"] = data["next_token"]
    assert seen == sorted(ids)
    gone = api.request("DELETE", f"/api/v0/instances/{ids[0]}/", json={})
    assert gone.json() == {"success": True}
    stop = api.put(f"/api/v0/instances/{ids[1]}/", json={"state": "stopped"})
    assert stop.json() == {"success": True}


@pytest.mark.parametrize(
    ("overrides", "why"),
    [
        ({"args_str": "x"}, "unknown field"),  # not an official create field
        ({"runtype": "bogus"}, "runtype"),
        ({"user": 7}, "user"),
        ({"force": "yes"}, "force"),
    ],
)
def test_fake_refuses_what_the_official_client_never_sends(
    api: httpx.Client, overrides: dict[str, Any], why: str
) -> None:
    answer = api.put("/api/v0/asks/7100001/", json=official_create(**overrides))
    assert answer.status_code == 400
    body = answer.json()
    assert body["success"] is False and body["error"] == "invalid_args" and why in body["msg"]


def test_fake_serves_what_the_official_cli_calls_around_instances(api: httpx.Client) -> None:
    # vastai 1.9.1 (run against the fake): `search offers '... reliability>0.99'` sends
    # {"reliability": {"gt": "0.99"}} (its alias to reliability2 is commented out), every
    # command first reads GET /users/current (detect_role), and `reboot instance` is
    # PUT /instances/reboot/{id}/ with {}. The fake had no `reliability` on offers (the
    # filter matched nothing) and answered both paths 404.
    query = official_search(
        gpu_name={"eq": "H100 SXM"},
        num_gpus={"gte": "1"},
        reliability={"gt": "0.99"},
        order=[["dph_total", "desc"]],
    )
    assert query_problems(query) == []
    offers = api.post("/api/v0/bundles/", json=query).json()["offers"]
    assert offers and all(o["gpu_name"] == "H100 SXM" and o["reliability"] > 0.99 for o in offers)
    user = api.get("/api/v0/users/current")
    assert user.status_code == 200
    assert isinstance(user.json()["id"], int) and "host_agreement_accepted" in user.json()
    created = api.put("/api/v0/asks/7100001/", json=official_create(label="atlas-r"))
    instance_id = created.json()["new_contract"]
    rebooted = api.put(f"/api/v0/instances/reboot/{instance_id}/", json={})
    assert rebooted.status_code == 200 and rebooted.json() == {"success": True}
    api.request("DELETE", f"/api/v0/instances/{instance_id}/", json={})
    gone = api.put(f"/api/v0/instances/reboot/{instance_id}/", json={})
    assert gone.status_code == 404 and gone.json()["success"] is False


def test_geolocation_filters_compare_country_codes(api: httpx.Client) -> None:
    # vastai's documented 'geolocation in [TW,SE]' / 'geolocation=US' filter on the
    # country code; the fake compared the whole "Texas, US" and matched nothing.
    us = api.post("/api/v0/bundles/", json=official_search(geolocation={"eq": "US"})).json()
    assert us["offers"] and all(o["geolocation"].endswith(", US") for o in us["offers"])
    some = api.post(
        "/api/v0/bundles/", json=official_search(geolocation={"in": ["SE", "NO"]})
    ).json()["offers"]
    assert {o["geolocation"].rsplit(", ", 1)[1] for o in some} == {"SE", "NO"}
    rest = api.post(
        "/api/v0/bundles/", json=official_search(geolocation={"notin": ["US", "CA"]})
    ).json()["offers"]
    assert rest and not any(o["geolocation"].endswith((", US", ", CA")) for o in rest)
