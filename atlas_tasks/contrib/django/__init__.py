"""Django integration: add ``"atlas_tasks.contrib.django"`` to ``INSTALLED_APPS``,
configure ``settings.ATLAS`` and mount the routes::

    ATLAS = {
        "REDIS_URL": "redis://localhost:6379/0",
        "SECRET_KEY": os.environ["ATLAS_SECRET_KEY"],
        "DEFAULT_PROVIDER": "runpod",
        "SESSION_PRESETS": {"default": {"gpu": "h100", "image": "me/infer:latest",
                                        "ports": [[8000, "http"]], "auth": "bearer"}},
    }
    urlpatterns = [path("atlas/", include("atlas_tasks.contrib.django.urls"))]

See :mod:`atlas_tasks.contrib.django.views` for the routes.
"""
