"""One settings class, read once, shared by the API, the worker and the engine CLI.

Every setting is an environment variable with the ``PRUNER_`` prefix (``PRUNER_DATA_DIR``...).
No other module reads ``os.environ`` for configuration, and the environment of a child
process (job process, API, worker, test stack) is built in one place: ``Settings.as_env``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

MiB = 1024 * 1024
GiB = 1024 * MiB


ENV_PREFIX = "PRUNER_"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore")

    # --- storage and data -------------------------------------------------------------------
    data_dir: Path = Field(
        default=Path("var/data"),
        description="Job records (SQLite) and files (uploads, reports, models), shared by the "
        "API and the workers of one host; with database_url and blob_url, each host's own "
        "scratch and cache instead (never shared).",
    )
    mnist_root: Path = Field(
        default=Path("var/datasets"),
        description="torchvision MNIST root (holds MNIST/raw/*-ubyte).",
    )
    mnist_download: bool = Field(
        default=True,
        description="Let torchvision download MNIST into mnist_root on first use when it is "
        "missing; false on machines without internet access.",
    )
    retention_s: int = Field(
        default=7 * 24 * 3600,
        ge=1,
        description="Seconds a finished job's files are kept; afterwards they answer 410.",
    )

    # --- several hosts: PostgreSQL and S3 (empty: SQLite and files under data_dir) ---------
    database_url: str = Field(
        default="",
        description="postgresql://user:pass@host:5432/db puts job records in PostgreSQL (API "
        "and workers on several hosts); empty: SQLite in data_dir.",
    )
    blob_url: str = Field(
        default="",
        description="s3://bucket/prefix puts job files in S3-compatible object storage; "
        "empty: files in data_dir/jobs. With it, data_dir is each host's own scratch.",
    )
    s3_endpoint_url: str = Field(
        default="", description="S3 endpoint (MinIO, SeaweedFS...); empty: AWS."
    )
    s3_region: str = Field(default="us-east-1", description="S3 region.")
    s3_access_key_id: str = Field(
        default="", description="S3 access key; empty: boto3's usual chain (AWS_*, roles)."
    )
    s3_secret_access_key: str = Field(default="", description="S3 secret key.")
    s3_presign_s: int = Field(
        default=0,
        ge=0,
        le=7 * 24 * 3600,
        description="Model and report downloads answer a presigned redirect valid this many "
        "seconds; 0: the API streams them.",
    )

    # --- queue -----------------------------------------------------------------------------
    redis_url: str = Field(default="redis://127.0.0.1:6379/0", description="Celery broker.")
    queue_name: str = Field(default="prune", description="Celery queue the jobs go to.")
    max_queue_depth: int = Field(
        default=10_000, ge=1, description="Submissions beyond this many queued jobs answer 429."
    )

    # --- API -------------------------------------------------------------------------------
    api_host: str = Field(default="127.0.0.1", description="Where `python -m stack` binds the API.")
    api_port: int = Field(default=8000, ge=1, le=65535, description="API port.")
    max_upload_bytes: int = Field(
        default=512 * MiB, ge=1, description="Larger uploads answer 413."
    )
    upload_min_bytes_per_s: int = Field(
        default=1024, ge=0, description="An upload that brings fewer bytes than this per "
        "second over any upload_rate_window_s is cut with 408 and its file removed; 0: no "
        "minimum."
    )
    upload_rate_window_s: float = Field(
        default=30.0, gt=0, description="The window upload_min_bytes_per_s is judged over."
    )
    upload_max_s: float = Field(
        default=3600.0, gt=0, description="An upload still arriving after this many seconds "
        "is cut with 408 and its file removed."
    )

    # --- tenants, keys and webhooks (docs/tenants.md) ----------------------------------------
    auth: Literal["enabled", "disabled"] = Field(
        default="enabled",
        description="enabled: every /v1 route needs `Authorization: Bearer <key>`; disabled: "
        "no keys, every request is the `local` tenant with every scope (a trusted "
        "single-user machine only).",
    )
    auth_pepper: str = Field(
        default="",
        repr=False,
        description="Secret mixed into every stored key digest; the same on every host. "
        "Empty: a random one kept in data_dir/auth_pepper (one host only: with database_url "
        "set, an empty pepper refuses to start).",
    )
    tenant_max_queued: int = Field(
        default=1_000, ge=0, description="Default per-tenant limit of queued jobs (429 "
        "quota_queued)."
    )
    tenant_max_running: int = Field(
        default=0, ge=0, description="Default per-tenant limit of running jobs (further jobs "
        "wait in the queue); 0: none."
    )
    tenant_max_stored_bytes: int = Field(
        default=100 * GiB, ge=0, description="Default per-tenant limit of bytes kept for "
        "unexpired jobs, uploads and results (429 quota_storage)."
    )
    tenant_submissions_per_minute: int = Field(
        default=120, ge=0, description="Default per-tenant submissions in any 60 s (429 "
        "quota_rate)."
    )
    webhook_allow_hosts: str = Field(
        default="",
        description="Comma-separated hosts webhooks may reach over plain http and on "
        "loopback or private addresses (local testing); everything else must be https to a "
        "public address.",
    )
    webhook_timeout_s: float = Field(default=5.0, gt=0, le=60,
                                     description="Connect and read timeout of one delivery.")
    webhook_retry_base_s: float = Field(
        default=10.0, gt=0, description="Backoff after the first failed delivery; doubles "
        "each time (with jitter) up to webhook_retry_max_s."
    )
    webhook_retry_max_s: float = Field(default=3600.0, gt=0,
                                       description="Longest wait between two attempts.")
    webhook_give_up_s: float = Field(
        default=25 * 3600.0, gt=0, description="A delivery still failing this long after "
        "its job ended is given up (failed)."
    )
    webhook_interval_s: float = Field(
        default=2.0, gt=0, description="How often each worker's dispatcher looks for due "
        "deliveries."
    )

    @property
    def webhook_allowed(self) -> frozenset[str]:
        return frozenset(h.strip().lower() for h in self.webhook_allow_hosts.split(",")
                         if h.strip())

    # --- worker and job process ------------------------------------------------------------
    worker_device: str = Field(
        default="auto",
        description="Device a worker's jobs run on: auto (CUDA when present), cpu, cuda, cuda:N.",
    )
    job_soft_time_limit_s: int = Field(
        default=3600,
        ge=1,
        description="Wall-clock limit of one job; past it the job fails `timeout`.",
    )
    job_hard_time_limit_s: int = Field(
        default=3660, ge=1, description="Celery's hard limit for the task that supervises a job."
    )
    broker_visibility_timeout_s: int = Field(
        default=7200,
        ge=1,
        description="Redis visibility timeout; must exceed the hard time limit.",
    )
    finetune_epoch_s: float = Field(
        default=30.0,
        gt=0,
        description="Seconds one fine-tune epoch takes on this deployment's workers (measure "
        "it: a job's timings_s.finetune / epochs). A search whose epochs (times iterative "
        "rounds and trials) would exceed job_soft_time_limit_s is refused with 422.",
    )
    job_memory_limit_bytes: int = Field(
        default=16 * GiB, ge=64 * MiB, description="Data-segment limit (RLIMIT_DATA) of a job "
        "process; on CPU-only workers also an address-space limit (RLIMIT_AS) of 4 times it."
    )
    job_cpu_time_limit_s: int = Field(
        default=4 * 3600, ge=1, description="CPU-seconds limit of a job process."
    )
    job_user: str = Field(
        default="",
        description="Unprivileged user a job process drops to when the worker runs as root "
        "(e.g. nobody); empty: don't switch.",
    )
    max_attempts: int = Field(
        default=3, ge=1, le=20, description="Attempts before a job that keeps crashing fails."
    )
    job_lease_s: float = Field(
        default=30.0,
        gt=0,
        description="Lease of a running job, renewed by its worker every third of it; a job "
        "whose lease expired is re-queued by the janitor (its worker died).",
    )
    janitor_interval_s: float = Field(
        default=15.0,
        gt=0,
        description="How often each worker's janitor reconciles jobs with the broker, sweeps "
        "expired files and refreshes the worker heartbeat.",
    )
    worker_heartbeat_ttl_s: int = Field(
        default=60, ge=1, description="A worker not seen for this long makes /readyz not ready."
    )

    # --- upload limits ---------------------------------------------------------------------
    max_archive_entries: int = Field(default=10_000, ge=1, description="Entries in a zip upload.")
    max_uncompressed_bytes: int = Field(
        default=4 * GiB, ge=1, description="Total declared uncompressed size of a zip upload."
    )
    max_compression_ratio: float = Field(
        default=100.0, gt=1, description="Largest uncompressed/compressed ratio of a zip entry."
    )
    max_parameters: int = Field(
        default=500_000_000, ge=1, description="Total elements over all tensors of an upload."
    )
    max_tensor_elements: int = Field(
        default=200_000_000, ge=1, description="Elements of any single tensor of an upload."
    )
    max_safetensors_header_bytes: int = Field(
        default=16 * MiB, ge=1024, description="Header size of a safetensors upload."
    )
    max_tensors: int = Field(default=10_000, ge=1, description="Tensors in one upload.")

    # --- dataset uploads (docs/datasets.md) -------------------------------------------------
    max_dataset_bytes: int = Field(
        default=1 * GiB, ge=1, description="Larger dataset files answer 413."
    )
    max_dataset_side: int = Field(
        default=256, ge=1, le=4096, description="Largest image height or width of a dataset."
    )
    max_dataset_classes: int = Field(
        default=1000, ge=2, description="Most classes (labels 0..K-1) a dataset may have."
    )
    dataset_cache_max_age_s: int = Field(
        default=24 * 3600, ge=1, description="A worker's cached copy of a dataset (S3 "
        "backends: data_dir/dataset-cache) that no queued job or job running here needs is "
        "removed by the janitor once unused this long (at once when its dataset was deleted)."
    )

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        default="INFO",
        description="Log level of the API, the workers and the job processes.",
    )

    @field_validator("worker_device")
    @classmethod
    def _device_name(cls, value: str) -> str:
        if value in ("auto", "cpu", "cuda") or (
            value.startswith("cuda:") and value[5:].isdigit()
        ):
            return value
        raise ValueError(f"worker_device must be auto, cpu, cuda or cuda:N, got {value!r}")

    @field_validator("database_url")
    @classmethod
    def _database_url(cls, value: str) -> str:
        if value and not value.startswith(("postgresql://", "postgres://")):
            raise ValueError(f"database_url must be postgresql://..., got {value!r}")
        return value

    @field_validator("blob_url")
    @classmethod
    def _blob_url(cls, value: str) -> str:
        if value and (not value.startswith("s3://") or len(value) <= len("s3://")):
            raise ValueError(f"blob_url must be s3://bucket[/prefix], got {value!r}")
        return value

    @model_validator(mode="after")
    def _limits_consistent(self) -> Settings:
        if self.job_hard_time_limit_s <= self.job_soft_time_limit_s:
            raise ValueError("job_hard_time_limit_s must exceed job_soft_time_limit_s")
        if self.broker_visibility_timeout_s <= self.job_hard_time_limit_s:
            raise ValueError(
                "broker_visibility_timeout_s must exceed job_hard_time_limit_s, or Redis "
                "redelivers jobs that are still running"
            )
        if self.database_url and self.auth == "enabled" and not self.auth_pepper:
            # Each host would make its own pepper in its own data_dir: a key made on one
            # host answers 401 on every other.
            raise ValueError(
                "database_url is set (hosts share one database) but auth_pepper is empty: set "
                "PRUNER_AUTH_PEPPER to the same secret for the API, every worker and "
                "`python -m service.keys` (make one with: python -c 'import secrets; "
                "print(secrets.token_urlsafe(32))')"
            )
        return self

    @classmethod
    def of(cls, **values: Any) -> Settings:
        """These values, defaults for the rest, whatever this process's environment says (a
        test stack must not pick up a developer's ``PRUNER_*`` variables)."""
        return cls(**_FromValuesOnly(**values).model_dump())

    def as_env(self, base: Mapping[str, str] | None = None) -> dict[str, str]:
        """The environment of a child process that must run with exactly these settings:
        ``base`` (default: this process's environment) without any ``PRUNER_*`` variable,
        plus every setting as one, paths made absolute (a child may run elsewhere, e.g. a
        job process in its scratch dir), and unbuffered output (log lines reach the log as
        they happen)."""
        env = {k: v for k, v in (os.environ if base is None else base).items()
               if not k.startswith(ENV_PREFIX)}
        for name, value in self.model_dump().items():
            if isinstance(value, Path):
                value = str(value.resolve())
            env[ENV_PREFIX + name.upper()] = value if isinstance(value, str) else json.dumps(value)
        env["PYTHONUNBUFFERED"] = "1"
        return env


class _FromValuesOnly(Settings):
    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings,)  # not the environment, .env or secrets


@lru_cache
def get_settings() -> Settings:
    return Settings()
