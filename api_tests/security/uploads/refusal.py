"""What a refused upload looks like from outside: the HTTP status and problem code the API
answers (through the service's one table), the job code a job would fail with, the message."""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import pytest
import torch

from core.jobs.error_codes import JobErrorCode, ProblemCode
from core.settings import Settings
from core.uploads import RejectKind, UploadRejected, check_upload
from service.errors import upload_rejected


class Refusal(NamedTuple):
    status: int
    code: ProblemCode
    job_code: JobErrorCode
    message: str
    kind: RejectKind


def refusal(exc: UploadRejected) -> Refusal:
    answer = upload_rejected(exc)
    assert answer.detail == exc.message  # the API says what core found, word for word
    return Refusal(answer.status, answer.code, exc.job_code, exc.message, exc.kind)


def rejected(path: Path, settings: Settings) -> Refusal:
    with pytest.raises(UploadRejected) as info:
        check_upload(path, settings)
    return refusal(info.value)


def mlp_state_dict() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))
    return dict(model.state_dict())
