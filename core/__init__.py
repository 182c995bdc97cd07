"""Plain data shared by the API and the workers: settings, spec, report, job records, error codes.

Nothing in this package imports torch, Celery or FastAPI.
"""
