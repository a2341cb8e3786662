"""``path("atlas/", include("atlas_tasks.contrib.django.urls"))``.

Sync views by default; ``ATLAS["VIEWS"] = "async"`` mounts the async ones (ASGI).
"""

from __future__ import annotations

from django.urls import path

from atlas_tasks.contrib.django import views
from atlas_tasks.contrib.django.apps import options

app_name = "atlas"

if options().views == "async":
    urlpatterns = [
        path("sessions/", views.asessions, name="sessions"),
        path("sessions/<str:session_id>/", views.asession, name="session"),
        path("sessions/<str:session_id>/touch/", views.atouch, name="touch"),
        path("sessions/<str:session_id>/events/", views.asession_events, name="events"),
    ]
else:
    urlpatterns = [
        path("sessions/", views.sessions, name="sessions"),
        path("sessions/<str:session_id>/", views.session, name="session"),
        path("sessions/<str:session_id>/touch/", views.touch, name="touch"),
        path("sessions/<str:session_id>/events/", views.session_events, name="events"),
    ]
