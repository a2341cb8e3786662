"""The result backend URL routing and the no-subscribe-on-send backend."""

from __future__ import annotations

import time

import pytest

from atlas_tasks.celery_app import build_config, create_app
from atlas_tasks.config import AtlasSettings
from atlas_tasks.result_backend import (
    AtlasRedisBackend,
    AtlasResultConsumer,
    uses_atlas_backend,
)
from atlas_tasks.testing.localstack import free_port


def _unreachable_redis_url() -> str:
    """A loopback port nothing listens on (it was free a moment ago)."""
    return f"redis://127.0.0.1:{free_port()}/3"


@pytest.mark.parametrize("url", ["redis://127.0.0.1:6379/0", "rediss://:pw@host:6380/1"])
def test_plain_redis_urls_use_the_atlas_backend(url: str) -> None:
    assert uses_atlas_backend(url)


@pytest.mark.parametrize(
    "url",
    [
        "db+postgresql://u@h/db",
        "rpc://",
        "sentinel://h:26379",
        "other.module:Backend+redis://h:6379/0",
    ],
)
def test_other_backends_are_left_alone(url: str) -> None:
    assert not uses_atlas_backend(url)


def test_an_explicit_backend_class_wins() -> None:
    url = "celery.backends.redis:RedisBackend+redis://127.0.0.1:6399/3"
    backend = create_app(AtlasSettings(result_backend=url)).backend
    assert type(backend).__name__ == "RedisBackend"
    assert not isinstance(backend, AtlasRedisBackend)


def test_app_resolves_the_atlas_backend_with_the_real_url() -> None:
    settings = AtlasSettings(redis_url="redis://127.0.0.1:6399/3")
    app = create_app(settings)
    # A plain URL in the config (what `celery inspect conf` and Flower parse) ...
    assert build_config(settings)["result_backend"] == "redis://127.0.0.1:6399/3"
    # ... served by the atlas backend, chosen in code.
    backend = app.backend
    assert isinstance(backend, AtlasRedisBackend)
    assert backend.connparams["port"] == 6399 and backend.connparams["db"] == 3


def test_send_does_not_subscribe() -> None:
    app = create_app(AtlasSettings(redis_url=_unreachable_redis_url()))
    backend = app.backend
    backend.on_task_call(None, "t-1")  # nothing listens there: it must not even try
    assert backend.result_consumer._pubsub is None
    assert not backend.result_consumer.subscribed_to


def test_forgetting_a_result_with_redis_gone_returns_at_once() -> None:
    app = create_app(AtlasSettings(redis_url=_unreachable_redis_url()))
    consumer = app.backend.result_consumer
    assert isinstance(consumer, AtlasResultConsumer)
    consumer._pubsub = app.backend.client.pubsub()  # as after a get(): now unreachable
    key = app.backend.get_key_for_task("t-2")
    consumer.subscribed_to.add(key)
    started = time.monotonic()
    consumer.cancel_for("t-2")
    assert time.monotonic() - started < 5  # Celery's own retries for ~20 s, then raises
    assert key not in consumer.subscribed_to


def test_the_config_serialises_for_inspect_conf() -> None:
    # `celery inspect conf` and Flower's worker page censor URLs with kombu's parser,
    # which failed on "module:Class+redis://" ("Port could not be cast to integer").
    from celery.app.utils import filter_hidden_settings

    app = create_app(AtlasSettings(redis_url="redis://:secret@127.0.0.1:6399/3"))
    table = filter_hidden_settings(app.conf.table(with_defaults=False))
    assert table["result_backend"].startswith("redis://:*")
    assert "secret" not in table["result_backend"]
