"""A Redis Cluster slot checker that needs no cluster: the CROSSSLOT rule, checked on a
real single redis-server.

On Redis Cluster every Lua script (``EVAL``/``EVALSHA``), every ``MULTI``/``EXEC`` block
and every multi-key command must touch keys of one hash slot. One redis-server accepts
anything, so a cross-slot step goes unnoticed until production; :class:`SlotChecker`
patches redis-py (``Redis.execute_command`` and the pipeline's execute steps) for the
duration of a test and records every step whose **declared** keys fall in more than one
slot (``redis.crc.key_slot``, hash tags included):

* a script: its ``KEYS`` (``numkeys`` after the script or SHA); a script declaring no
  key at all is recorded apart (:attr:`SlotChecker.keyless`): a cluster client sends it
  to an arbitrary node, right for a pure computation, wrong if it builds keys;
* a transaction pipeline (``MULTI``/``EXEC``): the keys of all its commands together;
* any other command with several keys (``DEL a b``, ``ZUNIONSTORE``...): its keys, as
  the server's ``COMMAND INFO`` key positions (or ``COMMAND GETKEYS`` for commands with
  movable keys) name them. ``DEL``/``UNLINK``/``EXISTS``/``TOUCH`` are exempt: the
  cluster client splits them by slot.

Non-transactional pipelines may span slots (the cluster client splits them); each of
their commands is still checked on its own.

What it cannot see: keys a script **builds inside Lua** from ARGV prefixes
(``ARGV[1] .. id``). Assert those separately: every such prefix must carry a complete
hash tag equal to the slot of the script's declared keys (:func:`assert_prefix_in_slot`);
a prefix without a tag puts each built key in its own slot.

Usage::

    def test_x(redis_client, monkeypatch):
        with SlotChecker(redis_client).installed(monkeypatch) as checker:
            ... run the flow ...
        checker.assert_clean(min_scripts=3)
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest
import redis
from redis.client import Pipeline
from redis.crc import key_slot

#: Commands whose keys the cluster client splits by slot itself (never CROSSSLOT).
SPLIT_BY_CLIENT = frozenset({"DEL", "UNLINK", "EXISTS", "TOUCH"})
#: Script commands: ``<cmd> <script|sha|name> <numkeys> key... arg...``.
SCRIPT_COMMANDS = frozenset({"EVAL", "EVALSHA", "EVAL_RO", "EVALSHA_RO", "FCALL", "FCALL_RO"})


def _bytes(value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    return str(value).encode()


def slot_of(key: str | bytes) -> int:
    """The cluster slot of ``key`` (its hash tag's, when it has one)."""
    return int(key_slot(_bytes(key)))


def hash_tag(name: str) -> str | None:
    """The hash tag of a key or key prefix (what a cluster hashes), or ``None``."""
    start = name.find("{")
    if start < 0:
        return None
    end = name.find("}", start + 1)
    if end <= start + 1:
        return None
    return name[start + 1 : end]


def assert_prefix_in_slot(prefix: str, slot: int) -> None:
    """A key prefix a script builds keys from (``prefix .. id``) puts every such key in
    ``slot``: it carries a complete, non-empty hash tag hashing to ``slot``."""
    tag = hash_tag(prefix)
    assert tag is not None, f"prefix {prefix!r} has no hash tag: each built key has its own slot"
    assert slot_of(prefix) == slot, f"prefix {prefix!r} is in slot {slot_of(prefix)}, not {slot}"


@dataclass
class CrossSlot:
    """One step whose declared keys span several slots."""

    kind: str  # "script", "transaction" or "command"
    command: str
    keys: list[str]
    slots: set[int]

    def __str__(self) -> str:
        return f"{self.kind} {self.command}: keys {self.keys} in slots {sorted(self.slots)}"


@dataclass
class SlotChecker:
    """Records cross-slot steps of every redis-py client while installed.

    Args:
        client: a client of the test's redis-server (reads ``COMMAND INFO`` from it).
    """

    client: redis.Redis
    violations: list[CrossSlot] = field(default_factory=list)
    #: Scripts seen (by the keys they declared), for "the flow really ran" assertions.
    scripts: list[list[str]] = field(default_factory=list)
    #: ARGV of each script in :attr:`scripts` (same order), to check the key prefixes a
    #: script builds keys from (:func:`assert_prefix_in_slot`).
    script_args: list[list[str]] = field(default_factory=list)
    transactions: list[list[str]] = field(default_factory=list)
    #: Scripts that declared no key (see :meth:`assert_clean`'s ``allow_keyless``).
    keyless: list[str] = field(default_factory=list)
    _info: dict[str, dict[str, Any] | None] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # Own connection: its commands (COMMAND INFO/GETKEYS) are never checked.
        pool_kwargs = self.client.connection_pool.connection_kwargs
        wanted = ("host", "port", "db", "username", "password", "unix_socket_path")
        self._raw = redis.Redis(
            **{k: pool_kwargs[k] for k in wanted if k in pool_kwargs}, decode_responses=True
        )

    # ------------------------------------------------------------------ keys of a command
    def keys_of(self, args: Sequence[Any]) -> list[str]:
        """The keys a command declares (``args[0]`` is its name)."""
        if not args:
            return []
        name = str(args[0]).upper()
        if name in SCRIPT_COMMANDS:
            numkeys = int(args[2])
            return [_bytes(k).decode() for k in args[3 : 3 + numkeys]]
        if " " in name or len(args) < 2:
            return []  # container commands (CLIENT SETNAME, SCRIPT LOAD...): no keys here
        info = self._command_info(name)
        if info is None:
            return []
        if "movablekeys" in info.get("flags", []):
            try:
                found = self._raw.command_getkeys(*[_bytes(a) for a in args])
            except redis.ResponseError:
                return []
            return [_bytes(k).decode() for k in found]
        return self._legacy_keys(name, args)

    def _command_info(self, name: str) -> dict[str, Any] | None:
        if name not in self._info:
            answer = self._raw.execute_command("COMMAND", "INFO", name.lower())
            self._info[name] = answer.get(name.lower()) if isinstance(answer, dict) else None
        return self._info[name]

    def _legacy_keys(self, name: str, args: Sequence[Any]) -> list[str]:
        info = self._command_info(name)
        if not info:
            return []
        first, last, step = (
            int(info["first_key_pos"]),
            int(info["last_key_pos"]),
            int(info["step_count"]),
        )
        if first <= 0 or step <= 0:
            return []
        if last < 0:
            last = len(args) + last
        return [_bytes(args[i]).decode() for i in range(first, min(last, len(args) - 1) + 1, step)]

    # ------------------------------------------------------------------ checks
    def _check(self, kind: str, command: str, keys: list[str]) -> None:
        slots = {slot_of(k) for k in keys}
        if len(slots) > 1:
            self.violations.append(CrossSlot(kind, command, keys, slots))

    def check_command(self, args: Sequence[Any]) -> None:
        """Check one command sent on its own (or inside a non-transactional pipeline)."""
        if not args:
            return
        name = str(args[0]).upper()
        if name in SPLIT_BY_CLIENT:
            return
        keys = self.keys_of(args)
        if name in SCRIPT_COMMANDS:
            self.scripts.append(keys)
            self.script_args.append([_bytes(a).decode() for a in args[3 + len(keys) :]])
            if not keys:
                # A cluster client sends a keyless script to any node: fine for a pure
                # computation, wrong for one that builds keys from ARGV.
                self.keyless.append(name)
            self._check("script", name, keys)
        elif len(keys) > 1:
            self._check("command", name, keys)

    def check_transaction(self, commands: Sequence[tuple[Sequence[Any], dict[str, Any]]]) -> None:
        """Check a ``MULTI``/``EXEC`` block: all its keys together, and each script."""
        keys: list[str] = []
        for args, _ in commands:
            if str(args[0]).upper() in SCRIPT_COMMANDS:
                self.check_command(args)
            keys += self.keys_of(args)
        self.transactions.append(keys)
        self._check("transaction", " ".join(str(a[0]) for a, _ in commands), keys)

    # ------------------------------------------------------------------ install
    @contextmanager
    def installed(self, monkeypatch: pytest.MonkeyPatch) -> Iterator[SlotChecker]:
        """Patch redis-py so every client in this process is checked until the block ends."""
        checker = self
        original_execute = redis.Redis.execute_command
        original_transaction = Pipeline._execute_transaction
        original_pipeline = Pipeline._execute_pipeline

        def execute_command(client: redis.Redis, *args: Any, **options: Any) -> Any:
            if client is not checker._raw:
                checker.check_command(args)
            return original_execute(client, *args, **options)

        def execute_transaction(
            pipe: Pipeline, connection: Any, commands: Any, raise_on_error: Any
        ) -> Any:
            checker.check_transaction(list(commands))
            return original_transaction(pipe, connection, commands, raise_on_error)

        def execute_pipeline(
            pipe: Pipeline, connection: Any, commands: Any, raise_on_error: Any
        ) -> Any:
            for args, _ in commands:
                checker.check_command(args)
            return original_pipeline(pipe, connection, commands, raise_on_error)

        with monkeypatch.context() as patch:
            patch.setattr(redis.Redis, "execute_command", execute_command)
            patch.setattr(Pipeline, "_execute_transaction", execute_transaction)
            patch.setattr(Pipeline, "_execute_pipeline", execute_pipeline)
            try:
                yield self
            finally:
                self._raw.close()

    def assert_clean(
        self, *, min_scripts: int = 0, min_transactions: int = 0, allow_keyless: bool = False
    ) -> None:
        """No cross-slot step was seen, no keyless script ran (unless ``allow_keyless``:
        for flows with a pure-computation script), and at least this many scripts /
        transactions ran (so a flow that silently did nothing cannot pass)."""
        assert not self.violations, "cross-slot steps:\n" + "\n".join(map(str, self.violations))
        assert allow_keyless or not self.keyless, f"{len(self.keyless)} keyless scripts ran"
        assert len(self.scripts) >= min_scripts, f"only {len(self.scripts)} scripts ran"
        assert len(self.transactions) >= min_transactions, (
            f"only {len(self.transactions)} transactions ran"
        )

    def script_slots(self) -> set[int]:
        """Every slot a checked script declared keys in."""
        return {slot_of(k) for keys in self.scripts for k in keys}


@contextmanager
def single_node_cluster(timeout: float = 10.0) -> Iterator[str]:
    """A one-node Redis Cluster holding all 16384 slots; yields its ``redis://`` URL.

    The server itself then refuses what a real cluster refuses (``CROSSSLOT``): a script
    whose declared keys, a ``MULTI`` whose keys, or a command whose keys hash to
    different slots. A plain client works (every slot is local: no redirections), so the
    stores run unchanged against it. It cannot catch keys a script builds from ARGV
    (Redis 7.0 checks only declared keys; all slots are local anyway).
    """
    import shutil
    import tempfile
    import time
    from pathlib import Path

    from atlas_tasks.testing.localstack import RedisServer, free_cluster_port

    real = shutil.which("redis-server")
    if real is None:
        raise RuntimeError("redis-server not found on PATH")
    bin_dir = Path(tempfile.mkdtemp(prefix="atlas-cluster-node-"))
    wrapper = bin_dir / "redis-server"
    # RedisServer builds the command line; the wrapper adds the cluster options to it.
    wrapper.write_text(
        f'#!/bin/sh\nexec "{real}" "$@" --cluster-enabled yes --cluster-config-file nodes.conf\n'
    )
    wrapper.chmod(0o755)
    # a cluster node also binds port + 10000: free_cluster_port keeps both in range
    server = RedisServer(port=free_cluster_port(), executable=str(wrapper)).start(timeout)
    try:
        client = redis.Redis.from_url(server.url, decode_responses=True)
        client.execute_command("CLUSTER", "ADDSLOTSRANGE", 0, 16383)
        deadline = time.monotonic() + timeout
        while "cluster_state:ok" not in str(client.execute_command("CLUSTER", "INFO")):
            assert time.monotonic() < deadline, "the one-node cluster did not come up"
            time.sleep(0.02)
        client.close()
        yield server.url
    finally:
        server.cleanup()
        shutil.rmtree(bin_dir, ignore_errors=True)


__all__ = [
    "SCRIPT_COMMANDS",
    "SPLIT_BY_CLIENT",
    "CrossSlot",
    "SlotChecker",
    "assert_prefix_in_slot",
    "hash_tag",
    "single_node_cluster",
    "slot_of",
]
