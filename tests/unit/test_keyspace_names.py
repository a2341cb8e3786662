"""Namespaces (ATLAS_NAMESPACE): names per namespace, the default layout unchanged,
validation, the pod prefix, Celery queues and redbeat keys, and no key that skips them."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from celery import Celery

import atlas_tasks
from atlas_tasks import celery_app
from atlas_tasks import constants as C
from atlas_tasks.config import AtlasSettings, configure, get_settings, reset_settings
from atlas_tasks.errors import ValidationError
from atlas_tasks.events import topic_keys
from atlas_tasks.keyspace_names import Keyspace, check_namespace, keyspace
from atlas_tasks.sessions.store import Keys, Names, user_index_key
from atlas_tasks.testing.localstack import namespace_queues

SID = "0123456789abcdef"


def test_default_namespace_keeps_the_historical_layout_byte_for_byte() -> None:
    ks = keyspace()
    assert ks.namespace == "atlas" and ks.is_default
    k = Keys(SID, ks)
    assert (k.record, k.alive, k.fence, k.spawn_lease, k.channel) == (
        f"atlas:session:{SID}",
        f"atlas:alive:{SID}",
        f"atlas:fence:{SID}",
        f"atlas:spawn-lease:{SID}",
        f"atlas:events:{SID}",
    )
    names = Names(ks)
    assert (
        names.deadlines,
        names.sessions,
        names.intents,
        names.cleanups,
        names.stops,
        names.epoch,
    ) == (
        "atlas:deadlines",
        "atlas:sessions",
        "atlas:intents",
        "atlas:cleanups",
        "atlas:stops",
        "atlas:epoch",
    )
    assert topic_keys(SID) == (f"atlas:events:{SID}", f"atlas:events-log:{SID}")
    assert topic_keys("j1", "job") == ("atlas:job-events:j1", "atlas:job-events-log:j1")
    assert user_index_key('"u1"') == 'atlas:user-sessions:"u1"'
    for template in (C.SESSION_KEY, C.JOB_KEY, C.FLY_TOKEN_KEY, C.REDBEAT_KEY_PREFIX):
        assert ks.key(template) is template or ks.key(template) == template
    assert get_settings().reap_name_prefix == "atlas-"


def test_another_namespace_renames_every_name() -> None:
    ks = Keyspace("staging")
    k = Keys(SID, ks)
    assert (k.record, k.alive, k.channel) == (
        f"staging:session:{SID}",
        f"staging:alive:{SID}",
        f"staging:events:{SID}",
    )
    assert Names(ks).deadlines == "staging:deadlines"
    assert topic_keys(SID, namespace="staging") == (
        f"staging:events:{SID}",
        f"staging:events-log:{SID}",
    )
    assert ks.key(C.EVENTS_CHANNEL_PATTERN) == "staging:events:*"
    assert ks.key(C.REDBEAT_KEY_PREFIX) == "staging:redbeat:"
    assert ks.queue(C.QUEUE_COMPUTE) == "staging.compute"
    assert keyspace().queue(C.QUEUE_COMPUTE) == "compute"
    assert ks.owns("staging:x") and not ks.owns("atlas:x") and not ks.owns("staging2:x")
    with pytest.raises(ValueError, match="does not start with"):
        ks.key("celery-task-meta-{id}")


def test_names_follow_the_settings_when_they_change(monkeypatch: pytest.MonkeyPatch) -> None:
    # Read when keys are built, never frozen at import: one process serves two namespaces.
    assert Keys(SID).record == f"atlas:session:{SID}"
    monkeypatch.setenv("ATLAS_NAMESPACE", "blue")
    reset_settings()
    assert Keys(SID).record == f"blue:session:{SID}"
    assert topic_keys(SID)[0] == f"blue:events:{SID}"
    assert keyspace() is keyspace("blue")  # cached per namespace


@pytest.mark.parametrize("bad", ["", "Staging", "1st", "a-b", "a:b", "a.b", "a b", "x" * 33])
def test_invalid_namespaces_are_validation_errors_naming_the_field(bad: str) -> None:
    with pytest.raises(ValidationError) as exc:
        check_namespace(bad)
    assert exc.value.field == "ATLAS_NAMESPACE"
    with pytest.raises(ValidationError) as exc:
        configure(namespace=bad)
    assert exc.value.field == "NAMESPACE"
    assert "lower-case" in str(exc.value)
    configure()


@pytest.mark.parametrize("good", ["a", "staging", "prod_eu2", "x" * 32])
def test_valid_namespaces(good: str) -> None:
    assert check_namespace(good) == good
    assert AtlasSettings(namespace=good).namespace == good


def test_no_namespace_is_a_prefix_of_another_ones_pod_names() -> None:
    # "-" is refused in namespaces: the pods of "atlas" ("atlas-<id>") and of any other
    # namespace can never share a prefix, so one's orphan scan never matches the other's.
    with pytest.raises(ValidationError):
        check_namespace("atlas-b")
    assert not "atlas_b-0123".startswith(AtlasSettings().reap_name_prefix)


def test_pod_prefix_follows_the_namespace_unless_set(monkeypatch: pytest.MonkeyPatch) -> None:
    assert AtlasSettings(namespace="blue").reap_name_prefix == "blue-"
    assert AtlasSettings(namespace="blue", reap_name_prefix="team-").reap_name_prefix == "team-"
    assert AtlasSettings(namespace="blue", reap_name_prefix="").reap_name_prefix == ""
    monkeypatch.setenv("ATLAS_NAMESPACE", "green")
    reset_settings()
    assert get_settings().reap_name_prefix == "green-"
    monkeypatch.setenv("ATLAS_REAP_NAME_PREFIX", "atlas-")  # an explicit value wins
    reset_settings()
    assert get_settings().reap_name_prefix == "atlas-"


def _queue(app: Celery, task_name: str) -> str:
    return str(app.amqp.router.route({}, task_name)["queue"].name)


def test_celery_routes_queues_and_redbeat_keys_per_namespace() -> None:
    default = celery_app.build_config(AtlasSettings())
    assert default["redbeat_key_prefix"] == "atlas:redbeat:"
    assert default["task_default_queue"] == "maintenance"
    assert [q.name for q in default["task_queues"]] == ["compute", "jobs", "fly", "maintenance"]
    other = celery_app.build_config(AtlasSettings(namespace="blue"))
    assert other["redbeat_key_prefix"] == "blue:redbeat:"
    assert other["task_default_queue"] == "blue.maintenance"
    assert [q.name for q in other["task_queues"]] == [
        "blue.compute",
        "blue.jobs",
        "blue.fly",
        "blue.maintenance",
    ]
    app = celery_app.create_app(AtlasSettings(namespace="blue"))
    assert _queue(app, C.TASK_SPAWN) == "blue.compute"
    assert _queue(app, C.TASK_REAP) == "blue.maintenance"
    assert _queue(app, C.TASK_JOB_RUN) == "blue.jobs"
    assert namespace_queues({"ATLAS_NAMESPACE": "blue"}) == (
        "blue.compute,blue.jobs,blue.fly,blue.maintenance"
    )
    assert namespace_queues({}) == "compute,jobs,fly,maintenance"


def test_get_app_routes_by_the_current_namespace(monkeypatch: pytest.MonkeyPatch) -> None:
    assert _queue(celery_app.get_app(), C.TASK_SPAWN) == "compute"
    monkeypatch.setenv("ATLAS_NAMESPACE", "blue")
    reset_settings()
    assert _queue(celery_app.get_app(), C.TASK_SPAWN) == "blue.compute"
    monkeypatch.delenv("ATLAS_NAMESPACE")
    reset_settings()
    assert _queue(celery_app.get_app(), C.TASK_SPAWN) == "compute"


def test_a_worker_consuming_another_namespaces_queues_is_flagged() -> None:
    blue, default = Keyspace("blue"), keyspace("atlas")
    assert celery_app.foreign_queues(["compute", "blue.jobs", "celery"], blue) == ["compute"]
    assert celery_app.foreign_queues(["compute", "blue.jobs", "celery"], default) == ["blue.jobs"]
    assert celery_app.foreign_queues(list(celery_app.worker_queues(blue)), blue) == []


def test_cli_worker_consumes_the_namespace_queues(monkeypatch: pytest.MonkeyPatch) -> None:
    from atlas_tasks.cli import worker_queue_list

    assert worker_queue_list() == "compute,jobs,fly,maintenance"
    monkeypatch.setenv("ATLAS_NAMESPACE", "blue")
    reset_settings()
    assert worker_queue_list() == "blue.compute,blue.jobs,blue.fly,blue.maintenance"


# ------------------------------------------------------------------ no key skips the rename

PACKAGE = Path(atlas_tasks.__file__).parent


def _literal_key_uses(tree: ast.AST) -> list[tuple[int, str]]:
    """``"atlas:..."`` string literals that are neither a module-level template definition
    (``X_KEY = "atlas:..."``, also inside a dict/tuple of templates) nor an argument of
    ``ks.key(...)``, nor a docstring; and f-strings starting with ``atlas:``."""
    allowed: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module):
            for stmt in node.body:
                if isinstance(stmt, ast.Assign | ast.AnnAssign) and stmt.value is not None:
                    allowed.update(id(n) for n in ast.walk(stmt.value))
                if isinstance(stmt, ast.Expr):  # docstrings
                    allowed.add(id(stmt.value))
        if isinstance(node, ast.FunctionDef | ast.ClassDef | ast.AsyncFunctionDef):
            body = node.body
            if body and isinstance(body[0], ast.Expr):
                allowed.add(id(body[0].value))
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "key"
        ):
            allowed.update(id(a) for a in node.args)
        if isinstance(node, ast.JoinedStr):  # reported once, as an f-string, below
            allowed.update(id(v) for v in node.values)
    bad: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            # Lua sources are checked too: a script embedding "atlas:" is caught here.
            if (
                node.value.startswith("atlas:") and id(node) not in allowed
            ) or "'atlas:" in node.value:
                bad.append((node.lineno, node.value[:60]))
        if isinstance(node, ast.JoinedStr) and node.values:
            first = node.values[0]
            if (
                isinstance(first, ast.Constant)
                and isinstance(first.value, str)
                and first.value.startswith("atlas:")
            ):
                bad.append((node.lineno, "f-string " + first.value[:40]))
    return bad


def test_no_code_uses_an_atlas_key_literal_outside_its_template() -> None:
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if "fakecloud" in path.parts:
            continue  # the fake cloud keeps no Redis keys
        for line, text in _literal_key_uses(ast.parse(path.read_text(), str(path))):
            offenders.append(f"{path.relative_to(PACKAGE)}:{line}: {text!r}")
    assert offenders == [], "build these keys with keyspace().key(TEMPLATE):\n" + "\n".join(
        offenders
    )


def test_the_literal_check_catches_a_key_that_skips_the_rename() -> None:
    code = (
        'X_KEY = "atlas:x:{id}"\n'
        "def f(r, i):\n"
        '    r.get("atlas:y")\n'
        '    r.get(f"atlas:z:{i}")\n'
        "    r.get(ks.key(X_KEY))\n"
        "    r.eval(\"return redis.call('GET', 'atlas:w')\", 0)\n"
    )
    assert [line for line, _ in _literal_key_uses(ast.parse(code))] == [3, 4, 6]
