"""A minimal Django project serving atlas_tasks sessions (see ../README)."""
