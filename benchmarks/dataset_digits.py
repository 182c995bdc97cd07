"""A real non-MNIST dataset offline: scikit-learn's bundled handwritten digits (1,797 8 x 8
images, 10 classes), as a dataset file; a small CNN trained on it; a prune + fine-tune job on
it through the engine; the pruned model's accuracy recomputed on the file's test split.

How the digits become a dataset: ``testkit/digits.py``.

    .venv/bin/python -m benchmarks.dataset_digits        # prints JSON
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from core.datasets import check_dataset
from core.datasets.record import DatasetRecord
from core.jobs.spec import JobSpec
from core.settings import Settings
from core.storage.digest import sha256_file
from testkit.digits import DigitsCNN, accuracy, normalised, train, write_digits


def main() -> None:
    from worker.engine import scripting
    from worker.engine.datasets import UploadedDataset
    from worker.engine.pipeline import run_job

    torch.set_num_threads(1)
    folder = Path(tempfile.mkdtemp(prefix="digits-"))
    path = write_digits(folder / "digits.safetensors")
    x_train, y_train = normalised(path, 0)
    x_test, y_test = normalised(path, 2)
    start = time.perf_counter()
    model = train(DigitsCNN(), x_train, y_train, epochs=15)
    train_s = time.perf_counter() - start
    dense = accuracy(model, x_test, y_test)
    scripted = scripting.script(model)
    scripted.save(str(folder / "cnn.pt"))
    record = DatasetRecord(id="ds-" + "0" * 32, tenant="local", created_at=datetime.now(UTC),
                           bytes=path.stat().st_size, sha256=sha256_file(path),
                           info=check_dataset(path, Settings()))
    results: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "load_avg": [round(x, 1) for x in os.getloadavg()]},
        "dataset": record.info.model_dump(mode="json"), "train_epochs": 15,
        "train_s": round(train_s, 1), "dense_test_accuracy": round(dense, 4), "jobs": []}
    for amount in (0.5, 0.8, 0.9):
        spec = JobSpec.model_validate({
            "data": {"dataset": record.id}, "device": "cpu",
            "pruning": {"method": "l1_unstructured", "scope": "global", "amount": amount},
            "finetune": {"epochs": 3, "validation_size": 150}})
        out = folder / f"out-{amount}"
        result = run_job(folder / "cnn.pt", spec, out, settings=Settings(),
                         dataset=UploadedDataset(path, record))
        pruned = torch.jit.load(str(result.outputs[result.primary]))
        acc = result.report.accuracy
        results["jobs"].append({
            "amount": amount, "before": round(acc.before.accuracy, 4),
            "after_pruning": round(acc.after_pruning.accuracy, 4),
            "after_finetune": round(acc.after_finetune.accuracy, 4),
            "figures_from": acc.after_finetune.split,
            "recomputed_from_download": round(accuracy(pruned, x_test, y_test), 4),
            "targeted_sparsity": round(result.report.targeted.sparsity, 4),
            "seconds": round(result.report.timings_s["total"], 1)})
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
