"""Endpoint server process: a gunicorn master and NR_WORKERS model worker processes."""
