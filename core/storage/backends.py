"""Which job store and blob store this process uses, from the settings.

SQLite and files under ``data_dir`` are the embedded default (one machine, ``python -m
stack``). ``PRUNER_DATABASE_URL=postgresql://...`` and ``PRUNER_BLOB_URL=s3://bucket/prefix``
take the records and the files off the host, so the API and GPU workers can run on several
machines with nothing shared. The drivers are imported only when selected: the default
install needs neither psycopg nor boto3 (``pip install -e '.[distributed]'``).
"""

from __future__ import annotations

from core.settings import Settings
from core.storage.protocols import BlobStore, JobStore


def open_job_store(settings: Settings) -> JobStore:
    if settings.database_url:
        from core.storage.postgres import PostgresJobStore

        return PostgresJobStore(settings.database_url)
    from core.storage.sqlite import SqliteJobStore

    return SqliteJobStore.from_settings(settings)


def open_blob_store(settings: Settings) -> BlobStore:
    if settings.blob_url:
        from core.storage.blobs_s3 import S3BlobStore

        return S3BlobStore.from_settings(settings)
    from core.storage.blobs import LocalBlobStore

    return LocalBlobStore.from_settings(settings)
