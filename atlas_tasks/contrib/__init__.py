"""Framework integrations: :mod:`atlas_tasks.contrib.django` and
:mod:`atlas_tasks.contrib.flask` (their shared logic is in :mod:`atlas_tasks.contrib._web`)."""
