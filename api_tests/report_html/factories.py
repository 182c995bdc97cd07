"""Report dicts as the engine writes them, plus the optional sections other branches add
(shapes agreed in SHAPES.md: cost, sensitivity, search, shrink)."""

from __future__ import annotations

import copy
from typing import Any

from core.jobs.spec import REFERENCE_RECIPE

HOSTILE = "<script>alert(1)</script>"
# Breaks out of an attribute, then out of the SVG, if anything is left unescaped.
HOSTILE_ATTR = "x\" onmouseover=\"alert(2)\" '</text></svg><img src=x onerror=alert(3)>"

_TENSORS = [("fc1.weight", [256, 784], 0.3541), ("fc2.weight", [128, 256], 0.1203),
            ("fc3.weight", [10, 128], 0.0671)]


def _tensor(name: str, shape: list[int], sparsity: float) -> dict[str, Any]:
    elements = shape[0] * shape[1]
    zeros = round(elements * sparsity)
    return {"name": name, "layer_kind": "Linear", "shape": shape, "elements": elements,
            "zeros": zeros, "sparsity": zeros / elements, "dim": None, "slices": None,
            "slices_zeroed": None}


def _totals(rows: list[dict[str, Any]]) -> dict[str, Any]:
    elements = sum(r["elements"] for r in rows)
    zeros = sum(r["zeros"] for r in rows)
    return {"elements": elements, "zeros": zeros, "sparsity": zeros / elements}


def make_report(names: list[str] | None = None) -> dict[str, Any]:
    """A report of the reference recipe on the MLP (the base fields only); ``names`` renames
    the targeted tensors (e.g. to hostile ones)."""
    rows = [_tensor(n, s, p) for n, s, p in _TENSORS]
    for row, name in zip(rows, names or [], strict=False):
        row["name"] = name
    return {
        "report_version": 1,
        "spec": REFERENCE_RECIPE.model_dump(mode="json"),
        "tensors": rows,
        "targeted": _totals(rows),
        "all_parameters": {"elements": 235146, "zeros": 70426, "sparsity": 70426 / 235146},
        "accuracy": {
            "before": {"accuracy": 0.9712, "loss": 0.0931},
            "after_pruning": {"accuracy": 0.9644, "loss": 0.1187},
            "after_finetune": {"accuracy": 0.9781, "loss": 0.0712},
            "delta_pruning": 0.9644 - 0.9712, "delta_total": 0.9781 - 0.9712,
        },
        "timings_s": {"load": 0.05, "data": 0.41, "evaluate": 0.62, "prune": 0.01,
                      "finetune": 18.3, "save": 0.12, "total": 19.51},
        "device": "cpu", "torch_version": "2.14.1", "seed": 0,
        "input": {"format": "torchscript", "sha256": "ab" * 32, "bytes": 943211,
                  "compressed_bytes": None},
        "output": {"format": "torchscript", "sha256": "cd" * 32, "bytes": 943211,
                   "compressed_bytes": 731002},
    }


COST = {
    "before": {"parameters": 235146, "nonzero_parameters": 235146, "flops": 234752,
               "effective_flops": 234752,
               "bytes": {"torchscript": 943211, "state_dict": 941000, "safetensors": 940700},
               "latency_ms": {"batch_1": {"p50": 0.051, "p90": 0.063, "runs": 200},
                              "batch_256": {"p50": 1.91, "p90": 2.05, "runs": 200}},
               "latency_method": "median of 200 runs after 20 warm-up", "device": "cpu"},
    "after": {"parameters": 235146, "nonzero_parameters": 164720, "flops": 234752,
              "effective_flops": 164326,
              "bytes": {"torchscript": 943211, "state_dict": 941000, "safetensors": 940700},
              "latency_ms": {"batch_1": {"p50": 0.050, "p90": 0.061, "runs": 200},
                             "batch_256": {"p50": 1.12, "p90": 1.30, "runs": 200}},
              "latency_method": "median of 200 runs after 20 warm-up", "device": "cpu"},
    "speedup": {"batch_1": 1.02, "batch_256": 1.705},
}
SENSITIVITY = {
    "split": "validation", "dense_accuracy": 0.981,
    "amounts": [0.5, 0.7, 0.8, 0.9, 0.95, 0.98],
    "tensors": [{"name": "fc1.weight", "accuracy": [0.98, 0.978, 0.975, 0.96, 0.93, 0.85]},
                {"name": "fc2.weight", "accuracy": [0.981, 0.979, 0.977, 0.97, 0.955, 0.9]},
                {"name": "fc3.weight", "accuracy": [0.98, 0.975, 0.96, 0.91, 0.82, 0.6]}],
}
SEARCH = {
    "split": "validation", "max_accuracy_drop": 0.005, "per_layer": False,
    "dense_accuracy": 0.981, "chosen_amount": 0.9,
    "trials": [
        {"amount": 0.5, "val_accuracy": 0.981, "test_accuracy": 0.979, "seconds": 11.0,
         "within_budget": True},
        {"amount": 0.9, "val_accuracy": 0.979, "test_accuracy": 0.978, "seconds": 12.3,
         "within_budget": True},
        {"amount": 0.95, "val_accuracy": 0.971, "test_accuracy": 0.97, "seconds": 12.1,
         "within_budget": False},
    ],
}


def full_report(names: list[str] | None = None) -> dict[str, Any]:
    """The base report with every optional section present."""
    report = make_report(names)
    report.update(cost=copy.deepcopy(COST), sensitivity=copy.deepcopy(SENSITIVITY),
                  search=copy.deepcopy(SEARCH))
    for row in report["accuracy"].values():
        if isinstance(row, dict):
            row["split"] = "test"
    return report


TARGET = {
    "split": "validation", "constraint": "flops", "bound": 234752.0, "dense_value": 469504.0,
    "detail": "dense FLOPs per image, counted", "max_accuracy_drop": 0.005,
    "dense_accuracy": 0.981, "groups": [],
    "trials": [  # (constraint value, validation accuracy): meets+within, meets, neither
        {"strategy": "sensitivity", "level": 0.5, "widths": {"fc1": 100, "fc2": 90},
         "constraint_value": 230000.0, "meets_constraint": True, "val_accuracy": 0.978,
         "test_accuracy": 0.977, "within_drop": True, "met": True, "seconds": 3.0},
        {"strategy": "uniform", "level": 0.55, "widths": {"fc1": 128, "fc2": 64},
         "constraint_value": 233000.0, "meets_constraint": True, "val_accuracy": 0.97,
         "test_accuracy": 0.969, "within_drop": False, "met": False, "seconds": 3.1},
        {"strategy": "sensitivity", "level": 0.35, "widths": {"fc1": 160, "fc2": 100},
         "constraint_value": 300000.0, "meets_constraint": False, "val_accuracy": 0.98,
         "test_accuracy": 0.979, "within_drop": True, "met": False, "seconds": 3.2},
    ],
    "chosen": 0, "final_value": 230000.0, "final_val_accuracy": 0.979,
}
DATA = {"validation_from": "test_half",
        "train": {"images": 60000, "source": "MNIST train, all 60000 images"},
        "validation": {"images": 5000, "source": "MNIST test, the 5000 even-indexed images"},
        "test": {"images": 5000, "source": "MNIST test, the 5000 odd-indexed images"}}


def target_report() -> dict[str, Any]:
    """The base report with a target search, which images each figure is, and a warning."""
    report = make_report()
    report.update(target=copy.deepcopy(TARGET), data=copy.deepcopy(DATA),
                  warnings=["the dense model's validation accuracy looks memorised"])
    return report
