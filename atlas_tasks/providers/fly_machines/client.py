"""The Fly Machines API client, the app and the token, resolved from a ProviderContext.

=============  ==============================================================================
what           resolution order (first set wins)
=============  ==============================================================================
base URL       ``context.base_url`` > settings ``fly_base_url`` (``https://api.machines.dev``;
               ``http://_api.internal:4280`` over WireGuard); paths start with ``/v1/apps``
app            ``context.options["app"]`` > settings ``fly_app`` (``ATLAS_FLY_APP``); a create
               may also name one in ``provider_opts["app"]``
token          ``api_key=`` > ``ATLAS_FLY_API_TOKEN`` > ``FLY_API_TOKEN`` (registry resolution)
=============  ==============================================================================

The token is sent as ``Authorization: Bearer <token>``, except tokens that already carry
their scheme (``fly tokens create`` prints macaroons as ``FlyV1 fm2_...``), which are sent
as they are. A missing token or app raises on the first call, not at construction, so
``FlyMachinesProvider.capabilities()`` needs neither.
"""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import quote

from atlas_tasks.errors import validation_error
from atlas_tasks.providers.base import ProviderContext
from atlas_tasks.providers.common import ClientPool, main_base_url
from atlas_tasks.providers.fly_machines.translate import PROVIDER, check_app
from atlas_tasks.providers.http import HttpClient

MISSING_TOKEN = (
    "Fly API token missing: pass api_key=..., or set ATLAS_FLY_API_TOKEN or FLY_API_TOKEN"
)

MISSING_APP = (
    "no Fly app: set ATLAS_FLY_APP (the app Machines are created in), or pass the provider "
    "option app=... (get_provider('fly', app=...)) or provider_opts={'app': ...}"
)


def authorization(token: str) -> str:
    """The ``Authorization`` header value for a Fly token."""
    token = token.strip()
    if token.startswith("FlyV1 ") or token.lower().startswith("bearer "):
        return token
    return f"Bearer {token}"


class FlyClient:
    """One pooled :class:`HttpClient` for the Machines API plus the resolved app.

    Args:
        context: the provider context.
        sleep: called for every backoff sleep (late-bound by the provider for tests).
        rand: jitter source in [0, 1) for retry backoff.
    """

    def __init__(
        self,
        context: ProviderContext,
        sleep: Callable[[float], None],
        rand: Callable[[], float] | None = None,
    ) -> None:
        self.context = context
        self._pool = ClientPool(
            context,
            provider=PROVIDER,
            missing_key=MISSING_TOKEN,
            base_url=lambda _api: self.base_url,
            sleep=sleep,
            rand=rand,
            authorization=authorization,
        )

    @property
    def base_url(self) -> str:
        """The Machines API base URL after the override order."""
        return main_base_url(self.context, self.context.settings.fly_base_url)

    @property
    def default_app(self) -> str | None:
        """The provider's app (option ``app`` > ``ATLAS_FLY_APP``), or ``None``."""
        app = self.context.options.get("app") or self.context.settings.fly_app
        return str(app) if app else None

    def app(self, override: str | None = None) -> str:
        """The app to act in: ``override`` if given, else :attr:`default_app`.

        Raises:
            ValidationError: field ``app`` when no app is configured or the name is invalid.
        """
        app = override or self.default_app
        if not app:
            raise validation_error("app", MISSING_APP, provider=PROVIDER)
        return check_app(app)

    @property
    def api(self) -> HttpClient:
        """The Machines API client, built on first use.

        Raises:
            UnauthorizedError: no token was resolved.
        """
        return self._pool.get("machines")

    def close(self) -> None:
        """Close the pooled client (safe to call twice)."""
        self._pool.close()


def machines_path(app: str, machine_id: str | None = None, suffix: str = "") -> str:
    """``/v1/apps/<app>/machines[/<id>][<suffix>]`` with each segment percent-encoded."""
    path = f"/v1/apps/{quote(app, safe='')}/machines"
    if machine_id is not None:
        path += f"/{quote(machine_id, safe='')}"
    return path + suffix


__all__ = ["MISSING_APP", "MISSING_TOKEN", "FlyClient", "authorization", "machines_path"]
