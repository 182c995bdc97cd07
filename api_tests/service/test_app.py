"""The app as a whole: OpenAPI, uniform errors, architectures."""

from __future__ import annotations

import logging
from pathlib import Path

from api_tests.support.api import REFERENCE, Api
from api_tests.support.problems import assert_problem
from core.jobs.architectures import ARCHITECTURES
from core.jobs.spec import REFERENCE_RECIPE, JobSpec
from core.settings import Settings
from service.main import create_app


def test_the_app_logs_at_the_configured_level(tmp_path: Path) -> None:
    loggers = [logging.getLogger(name) for name in ("", "uvicorn", "uvicorn.error")]
    before = [logger.level for logger in loggers]
    try:
        create_app(Settings(data_dir=tmp_path, log_level="ERROR"))
        assert [logger.level for logger in loggers] == [logging.ERROR] * 3
        create_app(Settings(data_dir=tmp_path, log_level="DEBUG"))
        assert logging.getLogger("service").getEffectiveLevel() == logging.DEBUG
    finally:
        for logger, level in zip(loggers, before, strict=True):
            logger.setLevel(level)


def test_openapi_documents_routes_errors_and_examples(api: Api) -> None:
    doc = api.client.get("/openapi.json").json()
    post = doc["paths"]["/v1/jobs"]["post"]
    assert post["summary"].startswith("Submit a model")
    body = post["requestBody"]["content"]["multipart/form-data"]
    assert body["schema"]["required"] == ["model", "spec"]
    first_example = next(iter(body["examples"].values()))
    assert first_example["value"]["spec"] == REFERENCE
    assert JobSpec.model_validate(REFERENCE) == REFERENCE_RECIPE
    assert {"202", "200", "413", "415", "422", "429", "503"} <= set(post["responses"])
    assert post["responses"]["413"]["content"]["application/problem+json"]
    model = doc["paths"]["/v1/jobs/{job_id}/model"]["get"]["responses"]
    assert {"200", "304", "404", "409", "410"} <= set(model)
    assert {"/v1/jobs/{job_id}/cancel", "/v1/jobs/{job_id}/report", "/v1/architectures",
            "/healthz", "/readyz", "/metrics"} <= set(doc["paths"])
    assert "Problem" in doc["components"]["schemas"]
    assert "JobSpec" in doc["components"]["schemas"]


def test_unknown_route_and_wrong_method_are_problems(api: Api) -> None:
    assert_problem(api.client.get("/v2/nothing"), 404, "not_found")
    response = api.client.delete("/v1/jobs")
    assert_problem(response, 405, "method_not_allowed")
    assert response.headers["allow"]


def test_architectures(api: Api) -> None:
    data = api.client.get("/v1/architectures").json()["data"]
    assert [a["name"] for a in data] == list(ARCHITECTURES)
    mlp = api.client.get("/v1/architectures/mnist_mlp").json()
    assert mlp["tensors"][0] == {"name": "fc1.weight", "shape": [256, 784], "prunable": True}
    assert len(mlp["tensors"]) == 6
    assert_problem(api.client.get("/v1/architectures/resnet"), 404, "not_found")


def test_architecture_documents_its_widths(api: Api) -> None:
    lenet = api.client.get("/v1/architectures/lenet5").json()
    assert lenet["widths"] == {"conv1": 6, "conv2": 16, "fc1": 120, "fc2": 84}
    assert "LeNet5(conv1=3, conv2=8, fc1=60)" in lenet["widths_help"]
    assert "report.shrink.widths" in lenet["widths_help"]
