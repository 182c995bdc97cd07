"""POST /v1/jobs with the sparsity features: bad combinations and over-long jobs are 422s that
name the field to change, before anything is queued."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from api_tests.support.api import REFERENCE, Api, ModelFiles, make_settings
from api_tests.support.api import running_api as running
from api_tests.support.problems import assert_problem

BAD = [  # (spec changes, the field the 422 names)
    ({"pruning": {"method": "semi_structured", "scope": "global"}}, ["pruning", "scope"]),
    ({"pruning": {"method": "semi_structured", "scope": "layerwise", "nm": [4, 4]}},
     ["pruning", "nm"]),
    ({"search": {"max_trials": 0}}, ["search", "max_trials"]),
    ({"analysis": {"sensitivity": {"amounts": [0.5, 1.0]}}},
     ["analysis", "sensitivity", "amounts"]),
    ({"analysis": {"sensitivity": {"amounts": [-0.1]}}}, ["analysis", "sensitivity", "amounts"]),
    ({"search": {}, "finetune": {"validation_size": 0, "validation_from": "train"}},
     ["finetune", "validation_size"]),
    ({"pruning": {"amount": 0.9, "schedule": {"kind": "agp"}}, "finetune": {"epochs": 0}},
     ["finetune", "epochs"]),
    ({"pruning": {"amount": 0.9, "schedule": {"kind": "agp", "start": 0.6, "end": 0.5}}},
     ["pruning", "schedule", "agp", "end"]),
    ({"pruning": {"amount": 300, "schedule": {"kind": "iterative"}}}, ["pruning", "amount"]),
    ({"finetune": {"lr_schedule": "linear"}}, ["finetune", "lr_schedule"]),
    ({"target": {"flops": {"max_ratio": 0.5}, "parameters": {"max": 1000}}}, ["target"]),
    ({"target": {}}, ["target"]),
    ({"target": {"flops": {"max_ratio": 1.5}}}, ["target", "flops", "max_ratio"]),
    ({"target": {"flops": {"max_ratio": 0.5, "max": 1000}}}, ["target", "flops"]),
    ({"target": {"bytes": {"max": 30000, "format": "onnx"}}},
     ["target", "bytes", "format"]),
    ({"target": {"latency_ms": {"max": 2.0, "batch": 0}}}, ["target", "latency_ms", "batch"]),
    ({"target": {"flops": {"max_ratio": 0.5}}, "search": {"per_layer": True}},
     ["search", "per_layer"]),
    ({"target": {"flops": {"max_ratio": 0.5}}, "search": {"max_accuracy_drop": 0.01}},
     ["search", "max_accuracy_drop"]),
    ({"target": {"flops": {"max_ratio": 0.5}, "max_trials": 3}, "search": {"max_trials": 3}},
     ["target", "max_trials"]),
    ({"target": {"flops": {"max_ratio": 0.5}}, "search": {"max_trials": 21}},
     ["search", "max_trials"]),
    ({"target": {"flops": {"max_ratio": 0.5}, "quantize_bits": [4]}}, ["target"]),
    ({"target": {"bytes": {"max": 30000, "format": "compressed"}, "quantize_bits": [9]}},
     ["target", "quantize_bits"]),
    ({"target": {"bytes": {"max": 30000, "format": "compressed"}},
      "pruning": {"method": "ln_structured", "dim": 0}}, ["pruning", "method"]),
    ({"target": {"bytes": {"max": 30000, "format": "compressed"}}, "quantize": {"bits": 6}},
     ["quantize", "bits"]),
    ({"target": {"bytes": {"max": 30000, "format": "compressed"}},
      "quantize": {"method": "linear"}}, ["quantize", "method"]),
    ({"target": {"flops": {"max_ratio": 0.5}}, "pruning": {"schedule": {"kind": "agp"}}},
     ["pruning", "schedule", "kind"]),
    ({"target": {"flops": {"max_ratio": 0.5}}, "pruning": {"overrides": {"fc1.weight": 0.5}}},
     ["pruning", "overrides"]),
    ({"target": {"flops": {"max_ratio": 0.5}},
      "pruning": {"method": "ln_structured", "shrink": True}}, ["pruning", "shrink"]),
    ({"target": {"flops": {"max_ratio": 0.5}}, "finetune": {"validation_from": "train",
                                                             "validation_size": 0}},
     ["finetune", "validation_size"]),
]


@pytest.mark.parametrize(("changes", "field"), BAD, ids=[".".join(f) for _, f in BAD])
def test_bad_combinations_name_the_field(
    api: Api, model_files: ModelFiles, changes: dict[str, Any], field: list[str]
) -> None:
    spec = {**REFERENCE, **changes}
    body = assert_problem(api.submit(model_files.state_dict, spec), 422, "validation_error")
    assert [e["loc"] for e in body["errors"]] == [["body", "spec", *field]], body
    assert api.store.list()[0] == []


def test_sparsity_spec_is_accepted(api: Api, model_files: ModelFiles) -> None:
    spec = {**REFERENCE, "pruning": {"amount": 0.9, "schedule": {"kind": "agp"}},
            "finetune": {"epochs": 2, "lr_schedule": "cosine", "warmup_steps": 10},
            "analysis": {"sensitivity": {}}, "search": {"max_accuracy_drop": 0.01}}
    response = api.submit(model_files.state_dict, spec)
    assert response.status_code == 202, response.text


def test_search_that_cannot_fit_is_422_with_the_estimate(
    tmp_path: Path, redis_url: str, model_files: ModelFiles
) -> None:
    settings = make_settings(tmp_path, redis_url, finetune_epoch_s=20.0,
                             job_soft_time_limit_s=600, job_hard_time_limit_s=660)
    spec = {**REFERENCE, "pruning": {"amount": 0.9}, "finetune": {"epochs": 5},
            "search": {"max_trials": 6}}
    with running(settings) as api:
        accepted = api.submit(model_files.state_dict, spec)  # 6 x 5 epochs x 20 s = 600 s fits
        assert accepted.status_code == 202, accepted.text
        spec["search"] = {"max_trials": 7}  # 700 s does not
        body = assert_problem(api.submit(model_files.state_dict, spec), 422, "validation_error")
        assert [e["loc"] for e in body["errors"]] == [["body", "spec", "search", "max_trials"]]
        assert "35 fine-tune epochs, about 700 s" in body["detail"]
        assert "limit of 600 s" in body["detail"]
        assert len(api.store.list()[0]) == 1
        plain = {**REFERENCE, "finetune": {"epochs": 50}}  # not a search: judged by its limit
        assert api.submit(model_files.state_dict, plain).status_code == 202
        spec["search"] = {"max_trials": 2}  # 200 s: fits the server, not the spec's own limit
        spec["limits"] = {"timeout_s": 100}
        body = assert_problem(api.submit(model_files.state_dict, spec), 422, "validation_error")
        assert "limit of 100 s" in body["detail"]


def test_target_that_cannot_fit_is_422_naming_max_trials(
    tmp_path: Path, redis_url: str, model_files: ModelFiles
) -> None:
    settings = make_settings(tmp_path, redis_url, finetune_epoch_s=20.0,
                             job_soft_time_limit_s=600, job_hard_time_limit_s=660)
    # 10 x 60000 trial images = 10 epochs, plus the chosen one's 20: 600 s fits
    spec = {**REFERENCE, "finetune": {"epochs": 20},
            "target": {"flops": {"max_ratio": 0.5}, "max_trials": 10, "trial_images": 60000}}
    with running(settings) as api:
        assert api.submit(model_files.state_dict, spec).status_code == 202
        spec["target"] = {**spec["target"], "max_trials": 11}  # 620 s does not
        body = assert_problem(api.submit(model_files.state_dict, spec), 422, "validation_error")
        assert [e["loc"] for e in body["errors"]] == [["body", "spec", "target", "max_trials"]]
        assert "target search would run 31 fine-tune epochs, about 620 s" in body["detail"]
        # the field bounds the trials too, and the 422 names it
        spec["target"] = {"flops": {"max_ratio": 0.5}, "trial_images": 60000}
        spec["search"] = {"max_trials": 11}
        body = assert_problem(api.submit(model_files.state_dict, spec), 422, "validation_error")
        assert [e["loc"] for e in body["errors"]] == [["body", "spec", "search", "max_trials"]]
        # a compressed target's candidate takes two passes (weights, then centroids)
        spec["target"] = {"bytes": {"max": 30000, "format": "compressed"},
                          "trial_images": 60000}
        spec["search"] = {"max_trials": 5}  # 20 + 2 x 5 = 30 epochs: 600 s fits
        assert api.submit(model_files.state_dict, spec).status_code == 202
        spec["search"] = {"max_trials": 6}
        body = assert_problem(api.submit(model_files.state_dict, spec), 422, "validation_error")
        assert "target search would run 32 fine-tune epochs" in body["detail"]


def test_a_compressed_target_with_search_trials_and_agp_is_accepted(
    api: Api, model_files: ModelFiles
) -> None:
    spec = {**REFERENCE, "pruning": {"schedule": {"kind": "agp"}},
            "finetune": {"epochs": 2}, "quantize": {"epochs": 1},
            "search": {"max_trials": 6},
            "target": {"bytes": {"max": 30000, "format": "compressed"},
                       "quantize_bits": [6, 4]}}
    response = api.submit(model_files.state_dict, spec)
    assert response.status_code == 202, response.text
