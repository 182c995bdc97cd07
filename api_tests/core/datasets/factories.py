"""Plain factories for dataset records."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from core.datasets.record import DatasetFormat, DatasetInfo, DatasetRecord, SplitSizes
from core.datasets.record import new_dataset_id as new_dataset_id

T0 = datetime(2026, 1, 1, tzinfo=UTC)
INFO = DatasetInfo(format=DatasetFormat.SAFETENSORS, samples=12, channels=1, height=8, width=8,
                   classes=3, splits=SplitSizes(train=8, validation=2, test=2))


def make_dataset(tenant: str = "local", n: int = 0, size: int = 100,
                 dataset_id: str | None = None) -> DatasetRecord:
    return DatasetRecord(id=dataset_id or new_dataset_id(), tenant=tenant,
                         created_at=T0 + timedelta(seconds=n), bytes=size, sha256="0" * 64,
                         info=INFO)
