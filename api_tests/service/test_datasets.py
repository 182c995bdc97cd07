"""/v1/datasets through the app: upload (checked before it is stored, nothing left behind on
a refusal), read, list, delete, tenancy, quota and Idempotency-Key."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from api_tests.core.datasets.files import arrays, write_npz, write_safetensors
from api_tests.support.api import Api
from api_tests.support.problems import assert_problem
from api_tests.support.tenants import add_tenant, set_limits
from core.datasets.record import DATASET_FILE
from core.datasets.store import DatasetStore
from core.jobs.spec import REFERENCE_RECIPE
from core.tenants.accounts import Scope
from service import submit


@pytest.fixture()
def dataset_file(tmp_path: Path) -> Path:
    return write_safetensors(tmp_path / "digits.safetensors", arrays(shape=(3, 8, 8)),
                             classes=["a", "b", "c"])


def upload(api: Api, path: Path, headers: dict[str, str] | None = None) -> httpx.Response:
    with path.open("rb") as f:
        return api.client.post("/v1/datasets", files={"dataset": (path.name, f)},
                               headers=headers)


def stored_folders(api: Api) -> set[str]:
    root = api.settings.data_dir / "jobs"
    return {p.name for p in root.iterdir() if not p.name.startswith(".")} if root.is_dir() \
        else set()


def test_an_upload_answers_201_with_what_the_file_holds(api: Api, dataset_file: Path) -> None:
    response = upload(api, dataset_file)
    assert response.status_code == 201, response.text
    body = response.json()
    expected: dict[str, Any] = {
        "filename": "digits.safetensors", "format": "safetensors", "samples": 12,
        "shape": [3, 8, 8], "classes": 3, "class_names": ["a", "b", "c"],
        "splits": {"train": 8, "validation": 2, "test": 2},
        "bytes": dataset_file.stat().st_size,
    }
    assert {k: body[k] for k in expected} == expected


def test_the_stored_file_is_the_uploaded_one(api: Api, dataset_file: Path) -> None:
    dataset_id = upload(api, dataset_file).json()["id"]
    stored = api.blobs.local_path(dataset_id, DATASET_FILE).read_bytes()
    assert stored == dataset_file.read_bytes()


def test_read_and_list_show_it(api: Api, dataset_file: Path) -> None:
    made = upload(api, dataset_file).json()
    listed = api.client.get("/v1/datasets").json()
    assert (api.client.get(f"/v1/datasets/{made['id']}").json(), listed["data"]) == (made, [made])


def test_a_bad_array_is_422_naming_it_and_nothing_is_stored(api: Api, tmp_path: Path) -> None:
    bad = write_safetensors(tmp_path / "bad.safetensors",
                            {**arrays(), "labels": np.full(12, -1, np.int64)})
    body = assert_problem(upload(api, bad), 422, "invalid_upload")
    assert (body["errors"][0]["loc"], stored_folders(api),
            api.client.get("/v1/datasets").json()["data"]) == (
        ["body", "dataset", "labels"], set(), [])


def test_an_npz_with_a_pickled_member_is_refused(api: Api, tmp_path: Path) -> None:
    evil = write_npz(tmp_path / "evil.npz", {**arrays(), "labels": np.array([object()] * 12)})
    body = assert_problem(upload(api, evil), 422, "invalid_upload")
    assert "pickled" in body["detail"]


def test_a_file_over_the_limit_is_413(api: Api, dataset_file: Path) -> None:
    api.settings.max_dataset_bytes = 100  # read by the route on each request
    body = assert_problem(upload(api, dataset_file), 413, "payload_too_large")
    assert (body["limit_bytes"], stored_folders(api)) == (100, set())


def test_a_form_without_the_file_is_422(api: Api) -> None:
    body = assert_problem(api.client.post("/v1/datasets", files={"other": ("x", b"1")}),
                          422, "validation_error")
    assert body["errors"][0]["loc"] == ["body", "dataset"]


def test_the_same_key_and_file_is_the_same_dataset(api: Api, dataset_file: Path) -> None:
    first = upload(api, dataset_file, {"Idempotency-Key": "k1"})
    again = upload(api, dataset_file, {"Idempotency-Key": "k1"})
    assert (again.status_code, again.json()["id"], stored_folders(api)) == (
        200, first.json()["id"], {first.json()["id"]})


def test_the_same_key_for_another_file_is_422(api: Api, dataset_file: Path,
                                              tmp_path: Path) -> None:
    upload(api, dataset_file, {"Idempotency-Key": "k1"})
    other = write_safetensors(tmp_path / "o.safetensors", arrays(shape=(4, 4)))
    assert_problem(upload(api, other, {"Idempotency-Key": "k1"}), 422, "idempotency_key_reused")


def test_another_tenants_dataset_is_404_everywhere(api: Api, dataset_file: Path) -> None:
    dataset_id = upload(api, dataset_file).json()["id"]
    other = add_tenant(api, "globex").headers(Scope.JOBS_READ, Scope.JOBS_WRITE)
    answers = (api.client.get(f"/v1/datasets/{dataset_id}", headers=other).status_code,
               api.client.delete(f"/v1/datasets/{dataset_id}", headers=other).status_code,
               api.client.get("/v1/datasets", headers=other).json()["data"])
    assert answers == (404, 404, [])


def test_datasets_count_toward_the_storage_quota(api: Api, dataset_file: Path) -> None:
    size = dataset_file.stat().st_size
    set_limits(api, "local", max_stored_bytes=size + 10)
    upload(api, dataset_file)
    body = assert_problem(upload(api, dataset_file), 429, "quota_storage")
    assert (body["limit"], body["current"], len(stored_folders(api))) == (size + 10, size, 1)


def test_delete_removes_record_and_file(api: Api, dataset_file: Path) -> None:
    dataset_id = upload(api, dataset_file).json()["id"]
    deleted = api.client.delete(f"/v1/datasets/{dataset_id}")
    assert (deleted.status_code, api.client.get(f"/v1/datasets/{dataset_id}").status_code,
            stored_folders(api)) == (204, 404, set())


def test_delete_while_a_queued_job_uses_it_is_409(api: Api, dataset_file: Path,
                                                  model_files: Any) -> None:
    dataset_id = upload(api, dataset_file).json()["id"]
    job = api.submit(model_files.state_dict, _spec_on(dataset_id))
    assert job.status_code == 202, job.text
    body = assert_problem(api.client.delete(f"/v1/datasets/{dataset_id}"), 409, "conflict")
    assert (body["jobs"], api.blobs.exists(dataset_id, DATASET_FILE)) == ([job.json()["id"]],
                                                                          True)


def _spec_on(dataset_id: str, validation_size: int = 2) -> dict[str, Any]:
    spec: dict[str, Any] = json.loads(REFERENCE_RECIPE.model_dump_json())
    spec["data"] = {"dataset": dataset_id}
    spec["finetune"]["validation_size"] = validation_size
    return spec


def test_a_job_on_another_tenants_dataset_is_422(api: Api, dataset_file: Path,
                                                 model_files: Any) -> None:
    dataset_id = upload(api, dataset_file).json()["id"]
    other = add_tenant(api, "globex").headers(Scope.JOBS_READ, Scope.JOBS_WRITE)
    body = assert_problem(api.submit(model_files.state_dict, _spec_on(dataset_id), other),
                          422, "validation_error")
    assert body["errors"][0]["loc"] == ["body", "spec", "data", "dataset"]


def test_a_validation_split_as_large_as_the_training_split_is_422(
        api: Api, dataset_file: Path, model_files: Any) -> None:
    dataset_id = upload(api, dataset_file).json()["id"]
    body = assert_problem(api.submit(model_files.state_dict, _spec_on(dataset_id, 8)),
                          422, "validation_error")
    assert body["errors"][0]["loc"] == ["body", "spec", "finetune", "validation_size"]


def test_a_dataset_deleted_after_the_check_is_422_at_submission(
        api: Api, dataset_file: Path, model_files: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    dataset_id = upload(api, dataset_file).json()["id"]
    check = submit.check_dataset_ref

    def check_then_lose_it(*args: Any) -> None:
        check(*args)  # passes; the delete lands between it and the job's insert
        DatasetStore(api.store.sql()).delete(dataset_id, "local")

    monkeypatch.setattr(submit, "check_dataset_ref", check_then_lose_it)
    body = assert_problem(api.submit(model_files.state_dict, _spec_on(dataset_id)),
                          422, "validation_error")
    assert (body["errors"][0]["loc"], api.queued_job_ids()) == (
        ["body", "spec", "data", "dataset"], [])
