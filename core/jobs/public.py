"""What the API shows, named by role: ``JobPublic`` (one job), ``JobsPublic`` (a page).

Plain pydantic over the core records: the API answers with these and the client parses them."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field

from core.jobs.architectures import ArchitectureInfo
from core.jobs.formats import ModelFormat, UploadFormat
from core.jobs.record import JobError, JobRecord, JobStatus
from core.jobs.report import Progress
from core.jobs.spec import JobSpec
from core.tenants.accounts import Notify
from core.webhooks.deliveries import Delivery

JOBS_PATH = "/v1/jobs"


class JobLinks(BaseModel):
    self: str
    report: str
    model: str
    events: str
    cancel: str


class UploadInfo(BaseModel):
    format: UploadFormat
    bytes: int
    sha256: str


class ModelInfo(BaseModel):
    format: ModelFormat = Field(
        description="Primary format the job produced (the default download)."
    )
    sha256: str | None


class JobPublic(BaseModel):
    """A pruning job as clients see it."""

    id: str
    tenant: str = Field(description="The tenant whose key submitted it.")
    status: JobStatus
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    progress: Progress | None = None
    spec: JobSpec
    attempts: int = Field(description="Times a worker started this job.")
    cancel_requested: bool = False
    error: JobError | None = Field(default=None, description="Set when the job failed.")
    upload: UploadInfo
    model: ModelInfo | None = Field(default=None, description="Set when the job succeeded.")
    files_expired_at: datetime | None = Field(
        default=None, description="When retention deleted the job's files (report, model: 410)."
    )
    links: JobLinks

    @classmethod
    def from_record(cls, record: JobRecord) -> JobPublic:
        base = f"{JOBS_PATH}/{record.id}"
        model = None
        if record.model_format is not None:
            model = ModelInfo(format=record.model_format, sha256=record.model_sha256)
        return cls(
            id=record.id,
            tenant=record.tenant,
            status=record.status,
            created_at=record.created_at,
            started_at=record.started_at,
            finished_at=record.finished_at,
            progress=record.progress,
            spec=record.spec,
            attempts=record.attempts,
            cancel_requested=record.cancel_requested,
            error=record.error,
            upload=UploadInfo(format=record.upload_format, bytes=record.upload_bytes,
                              sha256=record.upload_sha256),
            model=model,
            files_expired_at=record.files_expired_at,
            links=JobLinks(self=base, report=f"{base}/report", model=f"{base}/model",
                           events=f"{base}/events", cancel=f"{base}/cancel"),
        )


class PageLinks(BaseModel):
    self: str
    next: str | None = None


class JobsPublic(BaseModel):
    """A page of jobs, newest first."""

    data: list[JobPublic]
    next_cursor: str | None = Field(
        description="Pass as ?cursor= for the next page; null at the end."
    )
    links: PageLinks


class DeliveriesPublic(BaseModel):
    """A job's webhook and its deliveries (one per job: its terminal event)."""

    notify: Notify | None = Field(description="The job's webhook (its own or the tenant's).")
    data: list[Delivery]


class ArchitecturesPublic(BaseModel):
    data: list[ArchitectureInfo]


class Health(BaseModel):
    status: str = "ok"


class Readiness(BaseModel):
    ready: bool
    checks: dict[str, str] = Field(description="Each check: 'ok' or why it failed.")


SPEC_EXAMPLES = {
    "reference": {
        "summary": "The reference recipe: 30% global L1, 2 epochs of fine-tuning",
        "value": {
            "architecture": "mnist_mlp",
            "pruning": {"method": "l1_unstructured", "scope": "global", "amount": 0.3},
            "finetune": {"epochs": 2},
        },
    },
    "torchscript_layerwise": {
        "summary": "TorchScript upload, 50% per layer, first layer spared, no fine-tuning",
        "value": {
            "pruning": {"method": "l1_unstructured", "scope": "layerwise", "amount": 0.5,
                        "exclude": ["fc1.*"]},
            "finetune": {"epochs": 0},
        },
    },
    "structured": {
        "summary": "Remove 25% of the output neurons of every layer by L2 norm",
        "value": {
            "architecture": "mnist_mlp",
            "pruning": {"method": "ln_structured", "amount": 0.25, "n": 2, "dim": 0},
            "finetune": {"epochs": 1, "optimizer": "sgd", "lr": 0.01},
        },
    },
}
