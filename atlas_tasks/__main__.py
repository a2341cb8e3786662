"""``python -m atlas_tasks`` runs the ``atlas-tasks`` command line."""

from atlas_tasks.cli import main

main()
