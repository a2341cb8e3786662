"""The ops page for a Django project, staff users only.

::

    # urls.py
    urlpatterns = [
        path("atlas/", include("atlas_tasks.contrib.django.urls")),
        path("ops/", include("atlas_tasks.contrib.django.ops_urls")),
    ]

The page, its API and ``/metrics`` (Prometheus) are :mod:`atlas_tasks.dashboard.django_urls`:
this module only gives them their documented place next to the session routes.
"""

from __future__ import annotations

from atlas_tasks.dashboard.django_urls import app_name, urlpatterns

__all__ = ["app_name", "urlpatterns"]
