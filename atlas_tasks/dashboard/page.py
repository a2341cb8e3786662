"""Server-rendered HTML of the ops page and its login form (shared by every adapter).

Every interpolated value goes through :func:`html.escape`; the data itself (sessions,
events, pods) is never in the HTML: the script fetches it and renders it as text. The
inline ``<style>``/``<script>`` carry a per-response nonce so the page can be served
with a strict Content-Security-Policy (:func:`security_headers`).
"""

from __future__ import annotations

import secrets
from html import escape

from atlas_tasks.dashboard.assets import css, js

#: Session statuses offered by the status filter.
STATUSES = ("spawning", "running", "terminating", "terminated", "failed")


def new_nonce() -> str:
    """A fresh CSP nonce."""
    return secrets.token_urlsafe(16)


def security_headers(nonce: str) -> dict[str, str]:
    """Headers of every HTML response: strict CSP (only our nonce'd inline code, fetches
    to ourselves), no framing, no referrer to other sites, no caching. (Not
    ``no-referrer``: under it browsers send ``Origin: null``, which the origin check of
    the POST routes refuses.)"""
    csp = (
        f"default-src 'none'; script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; "
        "connect-src 'self'; img-src 'self' data:; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    )
    return {
        "Content-Security-Policy": csp,
        "X-Frame-Options": "DENY",
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "same-origin",
        "Cache-Control": "no-store",
    }


def _head(title: str, nonce: str, extra: str = "") -> str:
    return (
        f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escape(title)}</title>{extra}"
        f'<style nonce="{escape(nonce)}">{css()}</style></head>'
    )


def render_page(
    *,
    base: str,
    csrf: str,
    operator: str,
    nonce: str,
    csrf_header: str = "X-CSRF-Token",
    logout_url: str | None = None,
    note: str = "",
) -> str:
    """The ops page.

    Args:
        base: URL prefix of the page's routes, ending in ``/`` (``api/...`` hangs off it).
        csrf: the viewer's CSRF token (sent back in ``csrf_header`` with every action).
        operator: who is logged in (shown in the header).
        nonce: the CSP nonce of this response.
        logout_url: where the Log out button posts (``None``: no button, e.g. Django).
        note: a short line shown under the title (e.g. the token fingerprint).
    """
    e = escape
    logout = ""
    if logout_url:
        logout = (
            f'<form method="post" action="{e(logout_url)}">'
            f'<input type="hidden" name="csrf" value="{e(csrf)}">'
            '<button type="submit">Log out</button></form>'
        )
    status_options = "".join(f'<option value="{s}">{s}</option>' for s in STATUSES)
    return (
        _head("atlas ops", nonce, f'<meta name="csrf-token" content="{e(csrf)}">')
        + f'<body data-base="{e(base)}" data-csrf-header="{e(csrf_header)}">'
        '<header><h1>atlas ops</h1><span id="conn" data-state="connecting">connecting…</span>'
        f'<span class="muted">{e(note)}</span>'
        f'<span class="who">operator <b id="operator">{e(operator)}</b></span>{logout}</header>'
        "<main>"
        '<section id="sessions"><h2>Sessions <span id="count" class="muted"></span></h2>'
        '<div class="filters">'
        '<label>User <input id="f-user" data-filter="user" placeholder="any"></label>'
        '<label>Provider <select id="f-provider" data-filter="provider">'
        '<option value="">all</option></select></label>'
        '<label>Status <select id="f-status" data-filter="status"><option value="">all</option>'
        f"{status_options}</select></label></div>"
        '<table id="session-table"><thead><tr><th>Session</th><th>Status</th><th>User</th>'
        "<th>Provider</th><th>GPU</th><th>Idle for</th><th>TTL left</th><th>$/h</th>"
        "<th>Accrued</th><th>URL</th><th>Actions</th></tr></thead><tbody></tbody></table>"
        '<p id="empty" class="muted">No tracked sessions.</p></section>'
        '<section id="health"><h2>Reaper health</h2><dl>'
        '<div><dt>Reaper</dt><dd data-field="reaper">…</dd></div>'
        '<div><dt>Last sweep</dt><dd data-field="last_sweep"></dd></div>'
        '<div><dt>Sweeps</dt><dd data-field="sweeps"></dd></div>'
        '<div><dt>Due sessions</dt><dd data-field="due_sessions"></dd></div>'
        '<div><dt>Open spawn intents</dt><dd data-field="open_intents"></dd></div>'
        '<div><dt>Pending stops</dt><dd data-field="pending_stops"></dd></div>'
        '<div><dt>Terminate retries</dt><dd data-field="terminate_retries"></dd></div>'
        '<div><dt>Orphans reaped</dt><dd data-field="orphans_reaped"></dd></div>'
        '<div><dt>Data-loss grace</dt><dd data-field="data_loss_grace"></dd></div></dl>'
        '<div class="work"><div><h3>Jobs in flight</h3><ul id="jobs"></ul></div>'
        '<div><h3>Deploys in flight</h3><ul id="deploys"></ul></div></div></section>'
        '<section id="timeline" hidden><h2>Timeline <code id="timeline-id"></code> '
        '<button type="button" id="timeline-close">Close</button></h2>'
        '<ol id="timeline-events"></ol></section>'
        '<section id="orphans"><h2>Untracked provider pods</h2>'
        '<p class="muted">Pods the reaper lists (ATLAS_REAP_PROVIDERS) that no session '
        "tracks: orphans carry our name prefix, foreign pods do not and are never touched. "
        '<button type="button" id="scan-orphans">Scan providers</button></p>'
        '<p id="orphan-note" class="muted"></p>'
        '<table id="orphan-table" hidden><thead><tr><th>Provider</th><th>Pod</th><th>Name</th>'
        "<th>Status</th><th>Age</th><th>Kind</th><th></th></tr></thead><tbody></tbody></table>"
        "</section></main>"
        '<dialog id="confirm"><p id="confirm-text"></p><menu>'
        '<button type="button" data-confirm="no">Cancel</button>'
        '<button type="button" class="danger" data-confirm="yes" id="confirm-yes">'
        "Terminate</button></menu></dialog>"
        '<div id="flash" role="status"></div>'
        f'<script nonce="{e(nonce)}">{js()}</script></body></html>'
    )


def render_login(*, action: str, nonce: str, error: str = "", insecure: bool = False) -> str:
    """The login form (access token + operator name; the name only when insecure)."""
    e = escape
    token_field = (
        ""
        if insecure
        else (
            '<label>Access token <input type="password" name="token"'
            ' autocomplete="current-password" required autofocus></label>'
        )
    )
    message = f'<p class="error" id="login-error">{e(error)}</p>' if error else ""
    return (
        _head("atlas ops — log in", nonce) + '<body><section class="login"><h2>atlas ops</h2>'
        f'{message}<form method="post" action="{e(action)}">{token_field}'
        '<label>Operator name <input name="operator" required maxlength="64" '
        'placeholder="who you are (recorded with every action)"></label>'
        '<button type="submit">Log in</button></form></section></body></html>'
    )


__all__ = ["STATUSES", "new_nonce", "render_login", "render_page", "security_headers"]
