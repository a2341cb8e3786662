"""Process entry points (worker, beat, flower) used by docker-compose and the CLI.

Each module imports only the Celery app and its settings and hands control to Celery.
"""
