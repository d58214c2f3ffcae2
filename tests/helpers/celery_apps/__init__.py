"""Importable Celery apps and task types for the end-to-end tests (run by real worker processes)."""
