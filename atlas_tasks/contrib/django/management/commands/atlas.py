"""``python manage.py atlas doctor|worker|beat``: the Celery processes with this project's
Django settings (``settings.ATLAS``) loaded, and a minimal health check."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from atlas_tasks.contrib.django.apps import load_options


class Command(BaseCommand):
    """``atlas doctor`` (minimal: settings, Redis, presets, compute workers),
    ``atlas worker`` and ``atlas beat`` (extra arguments pass to Celery)."""

    help = "atlas_tasks: doctor (minimal check) | worker | beat, with this project's settings"

    def add_arguments(self, parser: CommandParser) -> None:
        """``action`` and the arguments passed through to Celery."""
        parser.add_argument("action", choices=["doctor", "worker", "beat"])
        parser.add_argument(
            "celery_args", nargs="*", help="passed to celery (after --), e.g. -- --concurrency 8"
        )

    def handle(self, *args: Any, **opts: Any) -> None:
        """Run the action."""
        load_options()  # settings.ATLAS, even if the app registry loaded it already
        action = opts["action"]
        extra = list(opts["celery_args"])
        if action == "doctor":
            self._doctor()
            return
        from atlas_tasks.celery_app import get_app
        from atlas_tasks.config import get_settings

        app = get_app()
        if action == "worker":
            from atlas_tasks.cli import worker_queue_list

            settings = get_settings()
            app.worker_main(
                [
                    "worker",
                    "-E",
                    "-Q",
                    worker_queue_list(),
                    f"--pool={settings.worker_pool}",
                    f"--concurrency={settings.worker_concurrency}",
                    "--loglevel=INFO",
                    *extra,
                ]
            )
        else:
            app.start(["beat", "--loglevel=INFO", *extra])

    def _doctor(self) -> None:
        """Minimal doctor: the operator CLI's ``atlas-tasks doctor`` checks more."""
        from atlas_tasks import constants as C
        from atlas_tasks.celery_app import queue_has_consumers
        from atlas_tasks.config import get_settings
        from atlas_tasks.contrib.django.apps import options
        from atlas_tasks.keyspace_names import keyspace
        from atlas_tasks.redis_conn import get_redis, redacted_url

        self.stdout.write("atlas doctor (minimal: settings, Redis, presets, workers)")
        settings = get_settings()
        problems = 0
        self.stdout.write(f"  redis: {redacted_url(settings.redis_url)}")
        try:
            get_redis().ping()
            self.stdout.write("  ok   redis answers PING")
        except Exception as exc:
            problems += 1
            self.stdout.write(f"  FAIL redis: {type(exc).__name__}: {exc}")
        if settings.secret_key is None:
            problems += 1
            self.stdout.write("  FAIL SECRET_KEY is not set (needed to spawn sessions)")
        else:
            self.stdout.write("  ok   SECRET_KEY is set")
        presets = options().presets
        self.stdout.write(
            f"  {'ok  ' if presets else 'WARN'} presets: "
            f"{', '.join(sorted(presets)) or 'none (POST sessions/ answers 422)'}"
        )
        if problems == 0:
            try:
                consumed = queue_has_consumers(keyspace().queue(C.QUEUE_COMPUTE), timeout=1.0)
            except Exception:
                consumed = False
            self.stdout.write(
                f"  {'ok  ' if consumed else 'WARN'} a worker consumes "
                f"{keyspace().queue(C.QUEUE_COMPUTE)!r}: "
                f"{'yes' if consumed else 'no'}"
            )
        if problems:
            raise CommandError(f"{problems} problem(s)")
