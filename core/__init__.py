"""What the API and the workers share: settings, spec, report, job records, error codes, the
job lifecycle, the storage protocols and their local backends, the broker contract.

Nothing in this package imports torch, Celery or FastAPI (api_tests/test_imports.py checks).
"""
