"""Settings of the example site: Django's minimum plus the ``ATLAS`` block."""

from __future__ import annotations

import os
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "dev-only-not-secret")
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]

INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "atlas_tasks.contrib.django",
]
MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
]
ROOT_URLCONF = "atlas_site.urls"
WSGI_APPLICATION = "atlas_site.wsgi.application"
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get("DJANGO_DB_PATH", str(BASE_DIR / "db.sqlite3")),
    }
}
USE_TZ = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

ATLAS = {
    "REDIS_URL": os.environ.get("ATLAS_REDIS_URL", "redis://localhost:6379/0"),
    "SECRET_KEY": os.environ.get("ATLAS_SECRET_KEY"),
    "DEFAULT_PROVIDER": "runpod",
    # "async" under ASGI (uvicorn atlas_site.asgi:application), "sync" under WSGI.
    "VIEWS": os.environ.get("DJANGO_ATLAS_VIEWS", "sync"),
    "SESSION_PRESETS": {
        "default": {
            "gpu": "h100",
            "image": "ghcr.io/acme/realtime-inference:latest",
            "ports": [[8000, "http"]],
            "auth": "bearer",
            "idle_ttl_ms": 15 * 60_000,
        },
    },
}
