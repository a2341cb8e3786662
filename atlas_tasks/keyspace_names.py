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

    Args:
        namespace: a valid namespace (:func:`check_namespace`).
    """

    __slots__ = ("_names", "namespace", "prefix")

    def __init__(self, namespace: str) -> None:
        self.namespace = check_namespace(namespace)
        #: What every key of this namespace starts with (``"<namespace>:"``).
        self.prefix = f"{namespace}:"
        self._names: dict[str, str] = {}

    @property
    def is_default(self) -> bool:
        """Whether this is the default namespace (names equal the templates)."""
        return self.namespace == DEFAULT_NAMESPACE

    def key(self, template: str) -> str:
        """``template`` (``"atlas:..."``, placeholders kept) renamed into this namespace.

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
            name = self.prefix + template[len(TEMPLATE_PREFIX) :]
            self._names[template] = name
        return name

    def queue(self, base: str) -> str:
        """The broker queue of this namespace for ``base`` (``compute``, ``jobs``...)."""
        return base if self.is_default else f"{self.namespace}.{base}"

    def owns(self, name: str) -> bool:
        """Whether a Redis key or channel name belongs to this namespace."""
        return name.startswith(self.prefix)

    def __repr__(self) -> str:
        return f"Keyspace({self.namespace!r})"


@lru_cache(maxsize=64)
def _keyspace(namespace: str) -> Keyspace:
    return Keyspace(namespace)


def keyspace(namespace: str | None = None) -> Keyspace:
    """The keyspace of ``namespace``, or of the current settings' ``ATLAS_NAMESPACE``.

    Cached per namespace; the settings are read on every call (they are cached too), so a
    process whose settings change (tests, :func:`atlas_tasks.config.configure`) follows.
    """
    return _keyspace(namespace if namespace is not None else get_settings().namespace)


__all__ = [
    "DEFAULT_NAMESPACE",
    "NAMESPACE_PATTERN",
    "TEMPLATE_PREFIX",
    "Keyspace",
    "check_namespace",
    "keyspace",
]
