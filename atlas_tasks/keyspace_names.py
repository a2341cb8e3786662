"""The namespace of a deployment: every Redis key, channel, stream and queue it uses.

``ATLAS_NAMESPACE`` (default ``atlas``) lets several deployments share one Redis, one
broker and one cloud account without seeing, touching or reaping each other's sessions,
jobs or pods. Key templates are written once, in their default-namespace spelling
(``"atlas:session:{id}"`` in :mod:`atlas_tasks.constants` and in the stores), and
:class:`Keyspace` renames them for a namespace: ``atlas:`` becomes ``<namespace>:``. With
the default namespace the names are the templates themselves, byte for byte, so the
layout of an existing deployment does not change.

* :func:`keyspace` is the keyspace of the current settings (or of a named namespace). It
  is read when keys are built, never frozen at import, so one process can serve several
  namespaces (tests run two deployments side by side).
* Renamed names are cached per namespace and template, so hot paths (``touch()``) pay a
  dict lookup, not string surgery.
* Queue names: the default namespace keeps ``compute``, ``jobs``... (existing workers'
  ``-Q`` lists stay valid); any other namespace uses ``<namespace>.compute``..., so two
  deployments sharing a broker never consume each other's tasks.
"""

from __future__ import annotations

import re
import zlib
from functools import lru_cache
from typing import Final

from atlas_tasks.config import get_settings
from atlas_tasks.constants import DEFAULT_NAMESPACE, NAMESPACE_REGEX, NAMESPACE_RULE
from atlas_tasks.errors import ValidationError

#: A namespace is a short token safe inside Redis keys, queue names and pod names, with
#: none of their separators (see ``constants.NAMESPACE_REGEX``).
NAMESPACE_PATTERN: Final = re.compile(NAMESPACE_REGEX)

#: The prefix every key template starts with (the default namespace's spelling).
TEMPLATE_PREFIX: Final = DEFAULT_NAMESPACE + ":"


def check_namespace(value: str, *, field: str = "ATLAS_NAMESPACE") -> str:
    """``value`` if it is a valid namespace, else a validation error naming ``field``."""
    if not isinstance(value, str) or not NAMESPACE_PATTERN.fullmatch(value):
        raise ValidationError(
            f"{field}: {NAMESPACE_RULE}",
            field=field,
        )
    return value


class Keyspace:
    """The names one namespace uses in Redis and in the broker.

    Two layouts (``ATLAS_REDIS_SHARDS``, :attr:`AtlasSettings.registry_shards`):

    * **untagged** (``shards=0``, one Redis or Sentinel): ``atlas:session:<id>``... as the
      templates spell them; a multi-key script may touch any keys.
    * **tagged** (``shards>=1``, required on Redis Cluster): keys that one Lua script
      touches together share a hash tag, so they live in one slot. Each session belongs
      to one of ``shards`` registry shards (:meth:`shard_of`) whose keys, indexes
      included, are ``<ns>:{s<k>}:...``; other groups (quotas, jobs...) take a fixed tag
      through :meth:`group` (``<ns>:{quota}:...``).

    Args:
        namespace: a valid namespace (:func:`check_namespace`).
        shards: registry shards of the tagged layout; 0 for the untagged one.
        tag: the hash tag of this group (only on keyspaces made by :meth:`group`).
    """

    __slots__ = ("_groups", "_names", "key_prefix", "namespace", "prefix", "shards", "tag")

    def __init__(self, namespace: str, *, shards: int = 0, tag: str | None = None) -> None:
        self.namespace = check_namespace(namespace)
        if shards < 0:
            raise ValueError(f"shards must be >= 0, got {shards}")
        #: What every key and channel of this namespace starts with (``"<namespace>:"``).
        self.prefix = f"{namespace}:"
        #: Registry shards (0: untagged layout).
        self.shards = shards
        #: This group's hash tag, or ``None`` (the namespace's own, untagged names).
        self.tag = tag
        #: What this keyspace puts in front of a template's rest (``"<ns>:{tag}:"``).
        self.key_prefix = self.prefix if tag is None else f"{namespace}:{{{tag}}}:"
        self._names: dict[str, str] = {}
        self._groups: dict[str, Keyspace] = {}

    @property
    def is_default(self) -> bool:
        """Whether this is the default namespace (names equal the templates)."""
        return self.namespace == DEFAULT_NAMESPACE and self.tag is None

    @property
    def tagged(self) -> bool:
        """Whether keys are hash-tagged (the layout a Redis Cluster needs)."""
        return self.shards > 0

    def key(self, template: str) -> str:
        """``template`` (``"atlas:..."``, placeholders kept) renamed into this namespace
        (and into this keyspace's hash-tag group, if any). A template with placeholders
        comes back ready for ``str.format`` (the hash tag's braces escaped, so the
        formatted key holds ``{tag}``); one without is the final key.

        Raises:
            ValueError: the template does not start with ``atlas:`` (a programming error:
                such a key would escape every namespace).
        """
        name = self._names.get(template)
        if name is None:
            if not template.startswith(TEMPLATE_PREFIX):
                raise ValueError(
                    f"key template {template!r} does not start with {TEMPLATE_PREFIX!r}"
                )
            rest = template[len(TEMPLATE_PREFIX) :]
            prefix = self.key_prefix
            if self.tag is not None and "{" in rest:
                # a template with placeholders is str.format()ed next: its hash tag's
                # braces are escaped so they come out as the literal "{tag}"
                prefix = prefix.replace("{", "{{").replace("}", "}}")
            name = prefix + rest
            self._names[template] = name
        return name

    def group(self, tag: str) -> Keyspace:
        """The keyspace whose keys share the hash tag ``tag`` in the tagged layout (one
        slot: a script may touch them together); this keyspace itself when untagged."""
        if not self.tagged:
            return self
        if self.tag is not None:
            return _keyspace(self.namespace, self.shards).group(tag)
        ks = self._groups.get(tag)
        if ks is None:
            ks = Keyspace(self.namespace, shards=self.shards, tag=tag)
            self._groups[tag] = ks
        return ks

    def all_shards(self) -> list[Keyspace]:
        """The registry shards' keyspaces, in shard order (``[self]`` when untagged)."""
        if not self.tagged:
            return [self]
        return [self.group(shard_tag(k)) for k in range(self.shards)]

    def shard_index(self, session_id: str) -> int:
        """The registry shard of ``session_id`` (0 when untagged)."""
        if not self.tagged:
            return 0
        return zlib.crc32(session_id.encode()) % self.shards

    def shard_of(self, session_id: str) -> Keyspace:
        """The keyspace of ``session_id``'s registry shard (itself when untagged)."""
        if not self.tagged:
            return self
        return self.group(shard_tag(self.shard_index(session_id)))

    def queue(self, base: str) -> str:
        """The broker queue of this namespace for ``base`` (``compute``, ``jobs``...)."""
        return base if self.namespace == DEFAULT_NAMESPACE else f"{self.namespace}.{base}"

    def owns(self, name: str) -> bool:
        """Whether a Redis key or channel name belongs to this namespace."""
        return name.startswith(self.prefix)

    def __repr__(self) -> str:
        extra = f", shards={self.shards}" if self.shards else ""
        extra += f", tag={self.tag!r}" if self.tag is not None else ""
        return f"Keyspace({self.namespace!r}{extra})"


def shard_tag(index: int) -> str:
    """The hash tag of registry shard ``index`` (``s0``, ``s1``...)."""
    return f"s{index}"


@lru_cache(maxsize=64)
def _keyspace(namespace: str, shards: int) -> Keyspace:
    return Keyspace(namespace, shards=shards)


def keyspace(namespace: str | None = None, *, shards: int | None = None) -> Keyspace:
    """The keyspace of ``namespace``, or of the current settings' ``ATLAS_NAMESPACE``, in
    the settings' layout (``shards``: another layout, for tests and benchmarks).

    Cached per namespace and layout; the settings are read on every call (they are cached
    too), so a process whose settings change (tests, :func:`atlas_tasks.config.configure`)
    follows.
    """
    settings = get_settings()
    return _keyspace(
        namespace if namespace is not None else settings.namespace,
        settings.registry_shards if shards is None else shards,
    )


__all__ = [
    "DEFAULT_NAMESPACE",
    "NAMESPACE_PATTERN",
    "TEMPLATE_PREFIX",
    "Keyspace",
    "check_namespace",
    "keyspace",
    "shard_tag",
]
