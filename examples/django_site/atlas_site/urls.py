"""The example site's routes: a JSON login and the atlas session routes."""

from django.urls import include, path

from atlas_site import views

urlpatterns = [
    path("csrf/", views.csrf),
    path("login/", views.login_view),
    path("atlas/", include("atlas_tasks.contrib.django.urls")),
]
