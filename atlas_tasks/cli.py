"""The ``atlas-tasks`` command line.

::

    atlas-tasks version
    atlas-tasks providers                 # names, implementation state, capabilities
    atlas-tasks gpus [--provider runpod]  # the catalog, or the provider's live prices
    atlas-tasks fakecloud --port 8710     # the fake cloud HTTP server
    atlas-tasks demo                      # the end-to-end demo
    atlas-tasks worker | beat | flower    # Celery processes (extra args pass through)
    atlas-tasks settings [--update-readme]  # every ATLAS_* setting as a Markdown table
    atlas-tasks init django|flask [--path DIR] [--dry-run]  # add atlas to a project
    atlas-tasks sessions list|info|touch|stop  # operators (atlas_tasks.ops_cli)
    atlas-tasks doctor                    # deployment health checks, exit 1 on failure
    atlas-tasks metrics --port 9808       # Prometheus /metrics
    atlas-tasks dashboard --port 8720     # the ops page (needs ATLAS_DASHBOARD_TOKEN)

Commands backed by optional parts (fake cloud, demo, Celery) import them inside the
command, so ``version``/``providers``/``gpus`` work without Celery or Redis. Failures
print the :class:`~atlas_tasks.errors.AtlasError` message and exit 1, never a traceback.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

import click
from rich.console import Console
from rich.table import Table

from atlas_tasks import __version__, constants
from atlas_tasks.errors import AtlasError
from atlas_tasks.providers.base import StubProvider
from atlas_tasks.providers.registry import known_providers, provider_class
from atlas_tasks.specs import GPU_CATALOG, all_canonical

#: Providers whose native GPU ids the catalog table shows, in column order.
CATALOG_PROVIDERS = ("runpod", "lambda_labs", "fly", "vast")

#: Queues a worker started by ``atlas-tasks worker`` consumes in the default namespace
#: (:func:`worker_queue_list` gives the current namespace's).
WORKER_QUEUES = ",".join(
    (
        constants.QUEUE_COMPUTE,
        constants.QUEUE_JOBS,
        constants.QUEUE_FLY,
        constants.QUEUE_MAINTENANCE,
    )
)

CELERY_APP = "atlas_tasks.celery_app"


def worker_queue_list() -> str:
    """The ``-Q`` list of an atlas worker in ``ATLAS_NAMESPACE`` (``compute,jobs,...`` by
    default, ``<namespace>.compute,...`` otherwise)."""
    from atlas_tasks.keyspace_names import keyspace

    ks = keyspace()
    return ",".join(ks.queue(q) for q in WORKER_QUEUES.split(","))


_PASSTHROUGH = {"ignore_unknown_options": True, "allow_extra_args": True}


def _console() -> Console:
    # Built per call so CliRunner's captured stdout is used; the terminal's width, or
    # COLUMNS / 200 columns when piped (rich would cut at 80).
    from atlas_tasks.ops_cli import console

    return console()


def _fail(message: str) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    raise SystemExit(1)


def _import_optional(module: str, attr: str, what: str, extra: str | None = None) -> Any:
    """``module.attr`` from another part of atlas_tasks, failing readably if it is absent.

    ``extra`` names the ``pip install 'atlas-tasks[extra]'`` that brings the third-party
    packages ``module`` needs (Starlette and uvicorn are not installed by default).
    """
    try:
        loaded = importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name is not None and (module == exc.name or module.startswith(exc.name + ".")):
            _fail(f"{what} is not available in this installation ({module} is missing)")
        if extra is not None and exc.name is not None and not exc.name.startswith("atlas_tasks"):
            _fail(
                f"{what} needs the {extra!r} extra ({exc.name} is not installed): "
                f"pip install 'atlas-tasks[{extra}]'"
            )
        raise
    target = getattr(loaded, attr, None)
    if target is None:
        _fail(f"{what} is not available in this installation ({module}.{attr} is missing)")
    return target


def _exec(argv: Sequence[str]) -> NoReturn:
    """Replace this process with ``argv`` (patched in tests)."""
    os.execvp(argv[0], list(argv))


def _celery(args: Sequence[str]) -> NoReturn:
    _exec([sys.executable, "-m", "celery", "-A", CELERY_APP, *args])


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """atlas-tasks: GPU pods across clouds on Celery + Redis."""


@cli.command()
def version() -> None:
    """Print the atlas_tasks version."""
    click.echo(f"atlas-tasks {__version__}")


@cli.command()
def keygen() -> None:
    """Print a new ATLAS_SECRET_KEY (Fernet key; give every node the same one)."""
    from atlas_tasks.sealing import generate_key

    click.echo(generate_key())


@cli.command()
def providers() -> None:
    """List the registered providers and their capabilities."""
    table = Table(title="providers")
    table.add_column("name", style="bold")
    table.add_column("state")
    table.add_column("capabilities")
    for name in known_providers():
        try:
            cls = provider_class(name)
        except AtlasError as exc:
            table.add_row(name, "unavailable", exc.message or str(exc))
            continue
        except Exception as exc:  # a provider module that fails to import must not hide the rest
            table.add_row(name, "unavailable", f"{type(exc).__name__}: {exc}")
            continue
        state = "stub" if issubclass(cls, StubProvider) else "ready"
        table.add_row(name, state, ", ".join(sorted(cls.capabilities())) or "-")
    _console().print(table)


def _money(value: float | None) -> str:
    return "-" if value is None else f"${value:.2f}/h"


@cli.command()
@click.option(
    "--provider",
    "provider_name",
    default=None,
    help="Ask this provider for its live catalog and prices.",
)
@click.option("--api-key", default=None, help="API key (default: settings / provider env var).")
@click.option("--base-url", default=None, help="Override the provider's API base URL.")
def gpus(provider_name: str | None, api_key: str | None, base_url: str | None) -> None:
    """Show the GPU catalog, or a provider's GPU types with prices."""
    console = _console()
    if provider_name is None:
        table = Table(title="GPU catalog (canonical → provider ids)")
        table.add_column("canonical", style="bold")
        for name in CATALOG_PROVIDERS:
            table.add_column(name)
        for canonical in all_canonical():
            ids = GPU_CATALOG[canonical]
            table.add_row(canonical, *(ids.get(p, "-") for p in CATALOG_PROVIDERS))
        console.print(table)
        return

    from atlas_tasks import sdk

    try:
        types = sdk.list_gpu_types(provider=provider_name, api_key=api_key, base_url=base_url)
    except AtlasError as exc:
        _fail(str(exc))
    except Exception as exc:  # e.g. a provider module that fails to import
        _fail(f"{provider_name}: {type(exc).__name__}: {exc}")
    table = Table(title=f"{provider_name} GPU types")
    for column in ("canonical", "id", "name", "memory", "price", "spot", "stock"):
        table.add_column(column)
    for entry in sorted(types, key=lambda t: (t.canonical or "~", t.id)):
        table.add_row(
            entry.canonical or "-",
            entry.id,
            entry.display_name or "-",
            "-" if entry.memory_gb is None else f"{entry.memory_gb:g} GB",
            _money(entry.lowest_price_per_hour),
            _money(entry.spot_price_per_hour),
            entry.stock,
        )
    console.print(table)


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8710, show_default=True, type=int)
@click.option("--latency", "latency_s", default=0.0, type=float, help="Seconds added per request.")
@click.option("--error-rate", default=0.0, type=float, help="Fraction of requests answered 5xx.")
@click.option(
    "--rate-limit-rate",
    default=0.0,
    type=float,
    help="Fraction of requests answered 429 with Retry-After.",
)
@click.option(
    "--create-500-rate",
    default=0.0,
    type=float,
    help="Fraction of creates answered 500 after the resource was created.",
)
@click.option(
    "--api-key",
    "api_keys",
    multiple=True,
    help="Accepted API key (repeatable; default: the fake cloud's own key).",
)
@click.option("--seed", default=None, type=int, help="Random seed for fault injection.")
def fakecloud(
    host: str,
    port: int,
    latency_s: float,
    error_rate: float,
    rate_limit_rate: float,
    create_500_rate: float,
    api_keys: tuple[str, ...],
    seed: int | None,
) -> None:
    """Run the fake cloud HTTP server (providers' real wire formats, fault injection)."""
    serve = _import_optional(
        "atlas_tasks.testing.fakecloud", "serve", "the fake cloud", extra="testing"
    )
    options: dict[str, Any] = {
        "latency_s": latency_s,
        "error_rate": error_rate,
        "rate_limit_rate": rate_limit_rate,
        "create_500_after_create_rate": create_500_rate,
        "seed": seed,
    }
    # No --api-key means the fake cloud's own default key, not "accept no key at all".
    if api_keys:
        options["api_keys"] = list(api_keys)
    serve(host=host, port=port, **options)


@cli.command()
@click.option(
    "--markdown",
    is_flag=True,
    default=True,
    help="Print the table as Markdown (the default and only format).",
)
@click.option(
    "--update-readme",
    is_flag=True,
    help="Rewrite the table between the markers of README.md instead of printing.",
)
@click.option(
    "--readme",
    type=click.Path(dir_okay=False),
    default=None,
    help="README to update (default: the checkout's README.md).",
)
def settings(markdown: bool, update_readme: bool, readme: str | None) -> None:
    """Every ATLAS_* setting with its default and meaning (from AtlasSettings)."""
    from pathlib import Path

    from atlas_tasks import settings_doc

    if not update_readme:
        click.echo(settings_doc.markdown_table())
        return
    path = Path(readme) if readme else settings_doc.default_readme()
    try:
        changed = settings_doc.update_readme(path)
    except (OSError, ValueError) as exc:
        _fail(str(exc))
    click.echo(f"{path}: settings table {'updated' if changed else 'already up to date'}")


@cli.command()
def demo() -> None:
    """Run the end-to-end demo and print what happened."""
    run = _import_optional("atlas_tasks.demo", "run", "the demo", extra="testing")
    raise SystemExit(run())


@cli.command(context_settings=_PASSTHROUGH)
@click.option("--loglevel", "-l", default="INFO", show_default=True)
@click.pass_context
def worker(ctx: click.Context, loglevel: str) -> None:
    """Start a Celery worker on every atlas queue (extra args go to celery)."""
    _celery(["worker", "-E", "-Q", worker_queue_list(), "--loglevel", loglevel, *ctx.args])


@cli.command(context_settings=_PASSTHROUGH)
@click.option("--loglevel", "-l", default="INFO", show_default=True)
@click.pass_context
def beat(ctx: click.Context, loglevel: str) -> None:
    """Start Celery beat (the reaper's clock; extra args go to celery)."""
    _celery(["beat", "--loglevel", loglevel, *ctx.args])


@cli.command(context_settings=_PASSTHROUGH)
@click.option("--port", default=5555, show_default=True, type=int)
@click.pass_context
def flower(ctx: click.Context, port: int) -> None:
    """Start Flower, the Celery monitor (extra args go to flower)."""
    _celery(["flower", f"--port={port}", *ctx.args])


@cli.command()
@click.argument("framework", type=click.Choice(["django", "flask"]))
@click.option(
    "--path",
    "path",
    default=".",
    show_default=True,
    help="the project directory (Django: where manage.py is; Flask: app.py)",
)
@click.option("--dry-run", is_flag=True, help="print what would change, write nothing")
def init(framework: str, path: str, dry_run: bool) -> None:
    """Add atlas_tasks to a Django or Flask project (idempotent)."""
    from pathlib import Path

    from atlas_tasks import installer

    try:
        changes = installer.run(framework, Path(path), dry_run=dry_run)
    except AtlasError as exc:
        _fail(str(exc.message))
    for change in changes:
        click.echo(f"{'would change' if dry_run else 'changed'} {change.path}: {change.what}")
    if not changes:
        click.echo("nothing to change: atlas_tasks is already set up")


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8720, show_default=True, type=int)
@click.option(
    "--insecure-localhost",
    is_flag=True,
    help="Serve without ATLAS_DASHBOARD_TOKEN, on 127.0.0.1 only.",
)
def dashboard(host: str, port: int, insecure_localhost: bool) -> None:
    """Serve the ops page: live sessions, Touch/Stop/Terminate, orphans, reaper health."""
    serve = _import_optional(
        "atlas_tasks.dashboard.app", "serve", "the ops page", extra="dashboard"
    )
    try:
        serve(host=host, port=port, insecure_localhost=insecure_localhost)
    except AtlasError as exc:
        _fail(exc.message or str(exc))


def _add_ops_commands() -> None:
    # Operator commands live in atlas_tasks.ops_cli (sessions, doctor, metrics).
    from atlas_tasks.ops_cli import COMMANDS

    for command in COMMANDS:
        cli.add_command(command)


_add_ops_commands()


def main(argv: Sequence[str] | None = None) -> None:
    """Console-script entry point (``atlas-tasks``)."""
    cli.main(args=list(argv) if argv is not None else None, prog_name="atlas-tasks")


__all__ = ["cli", "main"]


if __name__ == "__main__":
    main()
