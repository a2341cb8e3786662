"""Check HTTP traffic against the providers' official API definitions.

The definitions live in ``../shared/reference/specs/`` beside the checkout (never copied
into the project). :class:`SpecChecker` validates each request an httpx client sends and
each answer it gets with ``openapi-core`` (a maintained OpenAPI 3.0/3.1 validator), so a
field our provider or the fake cloud gets wrong fails a test instead of agreeing with us.

Use it as httpx event hooks::

    checker = SpecChecker.for_spec("runpod-rest-v2.openapi.json", base_path="")
    client = httpx.Client(base_url=url, event_hooks=checker.event_hooks())
    ...
    checker.assert_clean()          # every exchange matched the definition
    assert checker.checked >= 5     # and it really looked at them
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import httpx
from openapi_core import Config, OpenAPI
from openapi_core.datatypes import RequestParameters
from werkzeug.datastructures import Headers, ImmutableMultiDict

#: ``<checkout>/../shared/reference/specs`` (CI lays a copy of shared/ beside the clone).
SPECS_DIR = Path(__file__).resolve().parents[3] / "shared" / "reference" / "specs"


def spec_path(name: str) -> Path:
    """Path of one official definition; a missing file is an error, never a skip."""
    path = SPECS_DIR / name
    if not path.is_file():
        raise FileNotFoundError(
            f"official API definition {path} is missing: the tests read ../shared/"
            "reference/specs/ beside the checkout"
        )
    return path


@cache
def load_spec_dict(name: str) -> dict[str, Any]:
    """The parsed JSON of one definition (cached; treat as read-only)."""
    return json.loads(spec_path(name).read_text())  # type: ignore[no-any-return]


class _Request:
    """An ``httpx.Request`` seen through openapi-core's request protocol."""

    def __init__(self, request: httpx.Request, strip_prefix: str) -> None:
        url = request.url
        path = url.path
        if strip_prefix and path.startswith(strip_prefix):
            path = path[len(strip_prefix) :] or "/"
        self.host_url = f"{url.scheme}://{url.netloc.decode()}"
        self.path = path
        self.method = request.method.lower()
        query = parse_qsl(url.query.decode(), keep_blank_values=True)
        self.parameters = RequestParameters(
            query=ImmutableMultiDict(query),
            header=Headers(list(request.headers.items())),
            cookie=ImmutableMultiDict(),
        )
        body = request.content
        self.body = body or None
        self.content_type = request.headers.get("content-type", "").lower()


class _Response:
    """An ``httpx.Response`` seen through openapi-core's response protocol."""

    def __init__(self, response: httpx.Response) -> None:
        self.status_code = response.status_code
        self.headers = Headers(list(response.headers.items()))
        self.content_type = response.headers.get("content-type", "").lower()
        self.data = response.content or None


@dataclass
class Violation:
    """One exchange that did not match the definition."""

    method: str
    path: str
    side: str  # "request" or "response"
    errors: list[str]

    def __str__(self) -> str:
        return f"{self.side} {self.method.upper()} {self.path}: " + "; ".join(self.errors)


@dataclass
class SpecChecker:
    """Validates httpx exchanges against one OpenAPI definition.

    Args:
        openapi: the loaded definition.
        strip_prefix: URL path prefix to drop before matching (the fake cloud mounts each
            provider under its own prefix, e.g. ``/lambda``).
        check_requests / check_responses: which side to validate.
    """

    openapi: OpenAPI
    strip_prefix: str = ""
    check_requests: bool = True
    check_responses: bool = True
    violations: list[Violation] = field(default_factory=list)
    checked: int = 0

    @classmethod
    def for_spec(
        cls, name: str, *, patch: Callable[[dict[str, Any]], None] | None = None, **kwargs: Any
    ) -> SpecChecker:
        """A checker for ``specs/<name>``; ``patch`` may amend a deep copy of the definition
        first (e.g. merge ``fly-supplement.json``), and must say why where it is used."""
        document = json.loads(json.dumps(load_spec_dict(name)))
        # Match any host: the definitions name the real one, tests talk to loopback.
        document["servers"] = [{"url": "/"}]
        if patch is not None:
            patch(document)
        # openapi-core decodes only a fixed list of media types; RFC 9457 problem bodies
        # (RunPod REST v2's errors) are JSON too and must be validated, not skipped as bytes.
        config = Config(extra_media_type_deserializers={"application/problem+json": json.loads})
        return cls(openapi=OpenAPI.from_dict(document, config=config), **kwargs)

    def request_errors(self, request: httpx.Request) -> list[str]:
        """Why a request does not match the definition (empty when it does)."""
        return [
            _describe(e)
            for e in self.openapi.iter_request_errors(_Request(request, self.strip_prefix))
        ]

    def response_errors(self, request: httpx.Request, response: httpx.Response) -> list[str]:
        """Why an answer does not match the definition (empty when it does)."""
        return [
            _describe(e)
            for e in self.openapi.iter_response_errors(
                _Request(request, self.strip_prefix), _Response(response)
            )
        ]

    def check(self, request: httpx.Request, response: httpx.Response | None = None) -> None:
        """Validate one exchange and record what did not match."""
        self.checked += 1
        path = request.url.path
        if self.check_requests:
            errors = self.request_errors(request)
            if errors:
                self.violations.append(Violation(request.method, path, "request", errors))
        if self.check_responses and response is not None:
            errors = self.response_errors(request, response)
            if errors:
                self.violations.append(Violation(request.method, path, "response", errors))

    def event_hooks(self) -> dict[str, list[Callable[..., Any]]]:
        """httpx ``event_hooks`` that check every exchange of a client."""

        def on_response(response: httpx.Response) -> None:
            response.read()
            self.check(response.request, response)

        return {"response": [on_response]}

    def assert_clean(self) -> None:
        """Fail with every violation listed."""
        if self.violations:
            raise AssertionError(
                "traffic does not match the official definition:\n"
                + "\n".join(f"  - {v}" for v in self.violations)
            )


def _describe(error: BaseException) -> str:
    parts = [f"{type(error).__name__}: {error}"]
    parts.extend(f"{type(e).__name__}: {e}" for e in _causes(error))
    return " <- ".join(parts)


def _causes(error: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current = error.__cause__
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        schema_errors = getattr(current, "schema_errors", None)
        if schema_errors:
            yield from schema_errors
        current = current.__cause__
