"""Vast.ai translation on the real response shapes (reference notes §5.2)."""

from __future__ import annotations

from typing import Any

import pytest

from atlas_tasks.errors import NotFoundError, ProviderError, ValidationError, error_from_response
from atlas_tasks.providers.http import is_maybe_created, mark_maybe_created
from atlas_tasks.providers.vast import translate as t
from atlas_tasks.specs import ComputeStatus, build_compute_request

OFFERS: dict[str, Any] = {
    "offers": [
        {
            "id": 11,
            "gpu_name": "RTX 4090",
            "num_gpus": 1,
            "dph_total": 0.41,
            "min_bid": 0.2,
            "gpu_ram": 24564,
            "geolocation": "Sweden, SE",
        },
        {
            "id": 12,
            "gpu_name": "RTX 4090",
            "num_gpus": 1,
            "dph_total": 0.35,
            "min_bid": 0.25,
            "gpu_ram": 24564,
            "geolocation": "Texas, US",
        },
        {
            "id": 13,
            "gpu_name": "RTX 4090",
            "num_gpus": 2,
            "dph_total": 0.62,
            "min_bid": 0.3,
            "gpu_ram": 24564,
            "geolocation": "California, US",
        },
        {
            "id": 14,
            "gpu_name": "H100 SXM",
            "num_gpus": 1,
            "dph_total": 2.2,
            "min_bid": 1.1,
            "gpu_ram": 81559,
            "geolocation": "Norway, NO",
        },
    ]
}

INSTANCE: dict[str, Any] = {
    "id": 21034567,
    "actual_status": "running",
    "intended_status": "running",
    "cur_state": "running",
    "gpu_name": "RTX 4090",
    "num_gpus": 1,
    "dph_total": 0.3524,
    "public_ipaddr": "192.0.2.44\n",
    "ssh_host": "ssh5.vast.ai",
    "ssh_port": 34567,
    "ports": {
        "22/tcp": [{"HostIp": "0.0.0.0", "HostPort": "34568"}],
        "8000/tcp": [
            {"HostIp": "0.0.0.0", "HostPort": "41234"},
            {"HostIp": "::", "HostPort": "41234"},
        ],
        "5353/udp": [{"HostIp": "0.0.0.0", "HostPort": "41000"}],
    },
    "label": "atlas-s1",
    "image_uuid": "vllm/vllm-openai:latest",
    "start_date": 1732300000.25,
    "geolocation": "Texas, US",
    "extra_env": [["HF_TOKEN", "hf_x"], ["-p 8000:8000", "1"]],
}


def test_search_query_for_on_demand_and_bid() -> None:
    q = t.search_query(build_compute_request(gpu="rtx_4090", gpu_count=2, image="i"))
    # Value types as the official client's query parser sends them: plain values as
    # strings, booleans as booleans, gpu_ram in MB as a number.
    assert q["gpu_name"] == {"eq": "RTX 4090"} and q["num_gpus"] == {"eq": "2"}
    assert q["verified"] == {"eq": True} and q["rentable"] == {"eq": True}
    assert q["rented"] == {"eq": False} and q["external"] == {"eq": False}
    assert q["order"] == [["dph_total", "asc"]] and q["type"] == "on-demand"
    assert q["disk_space"] == {"gte": str(t.DEFAULT_DISK_GB)}
    assert q["allocated_storage"] == float(t.DEFAULT_DISK_GB) and q["limit"] == t.SEARCH_LIMIT
    assert "gpu_ram" not in q
    spot = t.search_query(
        build_compute_request(gpu="a6000", image="i", spot=True, container_disk_gb=50, volume_gb=10)
    )
    assert spot["type"] == "bid" and spot["gpu_name"] == {"eq": "RTX A6000"}
    assert spot["disk_space"] == {"gte": "60"}
    a100 = t.search_query(build_compute_request(gpu="a100_80g", image="i"))
    assert a100["gpu_name"] == {"eq": "A100 SXM4"} and a100["gpu_ram"] == {"gte": 70_000.0}
    with pytest.raises(ValidationError) as info:
        t.search_query(build_compute_request(gpu="mi300x", image="i"))
    assert info.value.field == "gpu"


def test_offers_ranked_by_what_we_pay_and_region() -> None:
    offers = t.offers_from_body(OFFERS)
    assert [o["id"] for o in t.rank_offers(offers, spot=False)] == [12, 11, 13, 14]
    assert [o["id"] for o in t.rank_offers(offers, spot=True)] == [11, 12, 13, 14]
    assert [o["id"] for o in t.rank_offers(offers, spot=False, region_hints=("us",))] == [12, 13]
    assert [o["id"] for o in t.rank_offers(offers, spot=False, region_hints=("Norway, NO",))] == [
        14
    ]
    with pytest.raises(ProviderError):
        t.offers_from_body({"success": False})


def test_create_body_env_ports_label_price() -> None:
    request = build_compute_request(
        gpu="rtx_4090",
        image="img:1",
        name="atlas-s1",
        env={"A": "b"},
        ports=[(8000, "http"), (22, "tcp")],
    )
    body = t.create_body(request, OFFERS["offers"][1])
    assert body == {
        "client_id": "me",
        "image": "img:1",
        "disk": float(t.DEFAULT_DISK_GB),
        "env": {"A": "b", "-p 8000:8000": "1", "-p 22:22": "1"},
        "label": "atlas-s1",
        "runtype": "args",
        "price": None,
        # the rest of the official client's body, with its defaults
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
    }
    assert set(body) <= t.CREATE_FIELDS
    spot = t.create_body(
        build_compute_request(
            gpu="rtx_4090", image="i", spot=True, provider_opts={"runtype": "ssh"}
        ),
        OFFERS["offers"][1],
    )
    assert spot["price"] == 0.25 and spot["runtype"] == "ssh" and spot["label"] is None
    with pytest.raises(ValidationError) as info:
        t.create_body(
            build_compute_request(gpu="rtx_4090", image="i", env={"-e": "x"}), OFFERS["offers"][1]
        )
    assert info.value.field == "env"
    with pytest.raises(ValidationError):
        t.create_body(build_compute_request(gpu="rtx_4090"), OFFERS["offers"][1])


def test_new_contract_id() -> None:
    assert t.new_contract_id({"success": True, "new_contract": 7835610}) == "7835610"
    with pytest.raises(ProviderError):
        t.new_contract_id({"success": True})


def test_instance_to_compute_real_shape() -> None:
    c = t.instance_to_compute(INSTANCE)
    assert (c.id, c.provider, c.status, c.name, c.image) == (
        "21034567",
        "vast",
        ComputeStatus.RUNNING,
        "atlas-s1",
        "vllm/vllm-openai:latest",
    )
    assert (c.public_ip, c.gpu_type, c.gpu_count, c.cost_per_hour, c.region) == (
        "192.0.2.44",
        "rtx_4090",
        1,
        0.3524,
        "Texas, US",
    )
    assert [(p.internal, p.external, p.protocol, p.url) for p in c.ports] == [
        (22, 34568, "tcp", "tcp://192.0.2.44:34568"),
        (8000, 41234, "tcp", "tcp://192.0.2.44:41234"),
    ]
    assert c.created_at is not None and c.created_at.timestamp() == 1732300000.25
    assert t.env_of(INSTANCE) == {"HF_TOKEN": "hf_x"}
    unknown_gpu = t.instance_to_compute({**INSTANCE, "gpu_name": "Tesla K80", "ports": None})
    assert unknown_gpu.gpu_type == "Tesla K80" and unknown_gpu.ports == []
    a100 = t.instance_to_compute({**INSTANCE, "gpu_name": "A100 SXM4", "gpu_ram": 40_960})
    assert a100.gpu_type == "a100_40g"


@pytest.mark.parametrize(
    ("actual", "intended", "expected"),
    [
        ("running", "running", ComputeStatus.RUNNING),
        ("running", "stopped", ComputeStatus.STOPPED),
        ("exited", "stopped", ComputeStatus.STOPPED),
        ("exited", None, ComputeStatus.STOPPED),
        ("exited", "running", ComputeStatus.PROVISIONING),
        ("created", "running", ComputeStatus.PROVISIONING),
        ("loading", "running", ComputeStatus.PROVISIONING),
        (None, "running", ComputeStatus.PROVISIONING),
        ("offline", "running", ComputeStatus.FAILED),
        ("destroying", "running", ComputeStatus.TERMINATED),
    ],
)
def test_status_mapping(actual: str | None, intended: str | None, expected: ComputeStatus) -> None:
    assert t.status_of({"actual_status": actual, "intended_status": intended}) == expected


def test_get_answer_is_an_object_or_empty() -> None:
    assert t.instance_from_get({"instances": INSTANCE}) == INSTANCE
    assert t.instance_from_get({"instances": [INSTANCE]}) == INSTANCE
    empties: list[dict[str, Any]] = [{"instances": None}, {"instances": {}}, {"instances": []}]
    for empty in empties:
        assert t.instance_from_get(empty) is None
    with pytest.raises(ProviderError):
        t.instance_from_get({"offers": []})
    assert t.instances_from_list({"instances": [INSTANCE]}) == [INSTANCE]
    with pytest.raises(ProviderError):
        t.instances_from_list({"instances": None})


def test_success_false_on_http_200_is_an_error() -> None:
    t.check_success({"success": True}, 200)
    t.check_success({"instances": []}, 200)
    with pytest.raises(ProviderError) as info:
        t.check_success(
            {"success": False, "error": "insufficient_credit", "msg": "Your account lacks credit"},
            200,
        )
    assert info.value.status == 200 and info.value.kind == "provider"
    assert str(info.value.message) == "Your account lacks credit [insufficient_credit]"
    with pytest.raises(NotFoundError):
        t.check_success({"success": False, "error": "no_such_instance", "msg": "gone"}, 200)
    with pytest.raises(ProviderError) as bare:
        t.check_success({"success": False}, 200)
    assert bare.value.message == "request refused"


def test_refine_http_errors_uses_msg_and_keeps_flag() -> None:
    mapped = error_from_response(
        404, {"success": False, "error": "no_such_instance", "msg": "Instance 5 not found."}, "vast"
    )
    assert mapped.message == "no_such_instance"  # what the generic mapper picks
    refined = t.refine_error(mapped)
    assert isinstance(refined, NotFoundError) and refined.message == (
        "Instance 5 not found. [no_such_instance]"
    )
    server = mark_maybe_created(
        error_from_response(500, {"success": False, "error": "server_error", "msg": "oops"}, "vast")
    )
    refined_500 = t.refine_error(server)
    assert refined_500.kind == "provider" and refined_500.status == 500
    assert is_maybe_created(refined_500)
    html = error_from_response(502, "<html/>", "vast")
    assert t.refine_error(html) is html


def test_offer_gone_detection() -> None:
    gone = t.refine_error(
        error_from_response(
            404,
            {"success": False, "error": "no_such_ask", "msg": "Offer 1 is not available."},
            "vast",
        )
    )
    assert t.is_offer_gone(gone)
    other = error_from_response(
        400, {"success": False, "error": "invalid_args", "msg": "bad image"}, "vast"
    )
    assert not t.is_offer_gone(other)


def test_catalog_from_offers_per_gpu_prices() -> None:
    types = {g.id: g for g in t.gpu_types_from_offers(t.offers_from_body(OFFERS))}
    rtx = types["RTX 4090"]
    assert (rtx.canonical, rtx.lowest_price_per_hour, rtx.spot_price_per_hour) == (
        "rtx_4090",
        0.31,
        0.15,
    )
    assert rtx.memory_gb == 24.0 and rtx.stock == "medium" and rtx.provider == "vast"
    assert types["H100 SXM"].canonical == "h100" and types["H100 SXM"].stock == "low"


def test_no_offer_error_names_gpu_and_kind() -> None:
    err = t.no_offer_error(
        build_compute_request(gpu="h200", image="i", spot=True, region_hints=["US"])
    )
    assert str(err.message).startswith("insufficient capacity")
    assert "1x H200" in str(err) and "bid" in str(err) and "in US" in str(err)


@pytest.mark.parametrize(
    ("opts", "named"),
    [
        ({"label": "evil"}, "label"),
        ({"env": {"ATLAS_PRESHARED_KEY": "mine"}}, "env"),
        ({"image": "other"}, "image"),
        ({"price": 0.01}, "price"),
        ({"bogus": 1}, "bogus"),
    ],
)
def test_provider_opts_never_replace_our_fields(opts: dict[str, Any], named: str) -> None:
    # The request model refuses atlas-owned provider_opts keys up front
    # (tests/unit/test_hostile_input.py); this checks the translate's own second line
    # of defence, so the options are set past the model's validation.
    request = build_compute_request(
        gpu="rtx_4090", image="img:1", name="atlas-s1", env={"ATLAS_PRESHARED_KEY": "tok"}
    )
    request = request.model_copy(update={"provider_opts": opts})
    with pytest.raises(ValidationError) as info:
        t.create_body(request, OFFERS["offers"][1])
    assert info.value.field == "provider_opts" and named in str(info.value)


def test_provider_opts_pass_through_below_our_fields() -> None:
    request = build_compute_request(
        gpu="rtx_4090",
        image="img:1",
        name="atlas-s1",
        env={"ATLAS_PRESHARED_KEY": "tok"},
        provider_opts={"onstart": "nvidia-smi", "user": "root", "args": ["--port", "8000"]},
    )
    body = t.create_body(request, OFFERS["offers"][1])
    assert body["onstart"] == "nvidia-smi" and body["user"] == "root"
    assert body["args"] == ["--port", "8000"] and body["label"] == "atlas-s1"
    assert body["env"]["ATLAS_PRESHARED_KEY"] == "tok"
    with pytest.raises(ValidationError) as info:
        t.create_body(
            build_compute_request(gpu="rtx_4090", image="i", provider_opts={"runtype": "bogus"}),
            OFFERS["offers"][1],
        )
    assert info.value.field == "provider_opts.runtype"
