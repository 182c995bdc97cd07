"""The Python client: every operation of the HTTP API, with typed results.

    from client import PrunerClient

    with PrunerClient("http://127.0.0.1:8000") as pruner:
        job = pruner.submit("mlp.state_dict.pt", {"architecture": "mnist_mlp"})
        job = pruner.wait(job.id)             # raises JobFailed / JobCancelled
        model, report = pruner.download(job.id, "out/")

Results are the service's own pydantic models (``JobPublic``, ``Report``), so a field means
what the API's documentation says. Synchronous, on httpx. A 429 or 503 is retried as the
``Retry-After`` header says (client/retry.py); a submission's retries reuse its
``Idempotency-Key``, so a retried submission never makes a second job.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
import uuid
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import httpx

from client.errors import ApiError, JobCancelled, JobFailed
from client.events import parse_events
from client.retry import RETRY_STATUSES, RetryPolicy
from client.settings import ClientSettings
from core.datasets.record import DATASETS_PATH, DatasetPublic, DatasetsPublic
from core.jobs.public import JobPublic, JobsPublic
from core.jobs.record import JobStatus
from core.jobs.report import Report
from core.jobs.spec import JobSpec

JOBS = "/v1/jobs"
STREAM_READ_TIMEOUT_S = 60.0  # the event stream sends a keep-alive every 15 s
CHUNK = 1 << 20


class PrunerClient:
    def __init__(
        self,
        url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float = 60.0,
        retry: RetryPolicy | None = None,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        """``url`` and ``api_key`` default to PRUNER_URL and PRUNER_API_KEY; with a key every
        request carries ``Authorization: Bearer <key>``."""
        settings = ClientSettings()
        self.url = (url or settings.url).rstrip("/")
        key = api_key or (settings.api_key.get_secret_value() if settings.api_key else None)
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.retry = retry or RetryPolicy()
        self._sleep = sleep
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout,
                                  transport=transport)

    def __enter__(self) -> PrunerClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # --- operations ---------------------------------------------------------------------

    def submit(self, model: str | Path, spec: JobSpec | dict[str, Any] | None = None, *,
               architecture: str | None = None,
               idempotency_key: str | None = None) -> JobPublic:
        """Upload ``model`` with ``spec`` (``architecture`` overrides the spec's); returns the
        queued job (or, for a key used before with the same request, that key's job)."""
        body = _spec_json(spec, architecture)
        key = idempotency_key or str(uuid.uuid4())
        path = Path(model)

        def send() -> httpx.Response:
            with path.open("rb") as f:  # reopened on every try: a retry sends the whole file
                return self._http.post(JOBS, files={"model": (path.name, f)},
                                       data={"spec": body}, headers={"Idempotency-Key": key})

        response = self._request(send, safe=True)
        return JobPublic.model_validate_json(_ok(response, 200, 202).content)

    def get(self, job_id: str) -> JobPublic:
        response = self._request(lambda: self._http.get(f"{JOBS}/{job_id}"), safe=True)
        return JobPublic.model_validate_json(_ok(response, 200).content)

    def list(self, status: JobStatus | str | None = None, limit: int = 20) -> Iterator[JobPublic]:
        """Jobs, newest first, ``limit`` per page, following the pages to the end."""
        params: dict[str, str | int] = {"limit": limit}
        if status is not None:
            params["status"] = str(status)
        while True:
            response = self._request(partial(self._http.get, JOBS, params=dict(params)),
                                     safe=True)
            page = JobsPublic.model_validate_json(_ok(response, 200).content)
            yield from page.data
            if page.next_cursor is None:
                return
            params["cursor"] = page.next_cursor

    def cancel(self, job_id: str) -> JobPublic:
        """A queued job is cancelled now; a running one stops at its next batch."""
        response = self._request(lambda: self._http.post(f"{JOBS}/{job_id}/cancel"), safe=False)
        return JobPublic.model_validate_json(_ok(response, 200, 202).content)

    def report(self, job_id: str) -> Report:
        return Report.model_validate_json(self._report_bytes(job_id))

    def report_json(self, job_id: str) -> dict[str, Any]:
        """The report as the server wrote it (every field, also ones newer than this
        client's ``Report``)."""
        report: dict[str, Any] = json.loads(self._report_bytes(job_id))
        return report

    def events(self, job_id: str) -> Iterator[JobPublic]:
        """The job on every change (server-sent events) until it ends; a dropped stream is
        opened again (it starts with the job's current state)."""
        failures = 0
        while True:
            job: JobPublic | None = None
            try:
                for job in self._stream(job_id):
                    failures = 0
                    yield job
                    if job.status.terminal:
                        return
            except (httpx.TransportError, ApiError) as exc:
                if isinstance(exc, ApiError) and exc.status not in RETRY_STATUSES:
                    raise
                if failures >= self.retry.retries:
                    raise
                self._sleep(self.retry.backoff_s(failures))
                failures += 1
            else:  # the stream ended before the job did: the API is stopping, say
                current = self.get(job_id)
                if current.status.terminal:
                    yield current
                    return
                self._sleep(self.retry.backoff_s(0))

    def wait(self, job_id: str,
             on_update: Callable[[JobPublic], None] | None = None) -> JobPublic:
        """Follow the job until it ends; returns it when it succeeded, raises ``JobFailed``
        (``.job.error.code``) or ``JobCancelled`` otherwise."""
        job = None
        for job in self.events(job_id):
            if on_update is not None:
                on_update(job)
        assert job is not None  # events() yields at least the job's current state
        if job.status is JobStatus.FAILED:
            raise JobFailed(job)
        if job.status is JobStatus.CANCELLED:
            raise JobCancelled(job)
        return job

    def download(self, job_id: str, directory: str | Path = ".",
                 format: str | None = None) -> tuple[Path, Path]:
        """Save the pruned model (checked against its sha256) and ``<id>-report.json`` in
        ``directory``; returns both paths."""
        return self.download_model(job_id, directory, format), \
            self.download_report(job_id, directory)

    def download_model(self, job_id: str, directory: str | Path = ".",
                       format: str | None = None) -> Path:
        folder = Path(directory)
        folder.mkdir(parents=True, exist_ok=True)
        params = {"format": format} if format else {}
        for attempt in range(self.retry.retries + 1):
            with self._http.stream("GET", f"{JOBS}/{job_id}/model", params=params) as response:
                if response.status_code in RETRY_STATUSES and attempt < self.retry.retries:
                    self._sleep(self.retry.wait_s(response, attempt))
                    continue
                if response.status_code != 200:
                    response.read()
                    raise ApiError.from_response(response)
                return _save_checked(response, folder, job_id)
        raise AssertionError("unreachable: the last attempt returns or raises")

    @staticmethod
    def decode(path: str | Path, output: str | Path | None = None) -> Path:
        """Decode a ``compressed`` download into a safetensors file (NumPy and zstandard
        only: ``pip install 'pruning-service[client]'``); returns its path (default: the
        file's name with ``.safetensors``). Raises ``UploadRejected`` for a file that does
        not hold together."""
        from client.decode import decode_file, write_safetensors

        source = Path(path)
        target = Path(output) if output is not None else source.with_suffix(".safetensors")
        return write_safetensors(decode_file(source), target)

    def download_report(self, job_id: str, directory: str | Path = ".") -> Path:
        folder = Path(directory)
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / f"{job_id}-report.json"
        target.write_bytes(self._report_bytes(job_id))
        return target

    # --- datasets (docs/datasets.md) --------------------------------------------------------

    def upload_dataset(self, path: str | Path, *,
                       idempotency_key: str | None = None) -> DatasetPublic:
        """Upload a dataset file (safetensors or .npz: ``client.dataset_file`` writes one);
        returns the dataset, whose ``id`` a job names as ``{"data": {"dataset": id}}``."""
        key = idempotency_key or str(uuid.uuid4())
        file = Path(path)

        def send() -> httpx.Response:
            with file.open("rb") as f:
                return self._http.post(DATASETS_PATH, files={"dataset": (file.name, f)},
                                       headers={"Idempotency-Key": key})

        response = self._request(send, safe=True)
        return DatasetPublic.model_validate_json(_ok(response, 200, 201).content)

    def get_dataset(self, dataset_id: str) -> DatasetPublic:
        response = self._request(lambda: self._http.get(f"{DATASETS_PATH}/{dataset_id}"),
                                 safe=True)
        return DatasetPublic.model_validate_json(_ok(response, 200).content)

    def list_datasets(self, limit: int = 20) -> Iterator[DatasetPublic]:
        """Your datasets, newest first, following the pages to the end."""
        params: dict[str, str | int] = {"limit": limit}
        while True:
            response = self._request(partial(self._http.get, DATASETS_PATH,
                                             params=dict(params)), safe=True)
            page = DatasetsPublic.model_validate_json(_ok(response, 200).content)
            yield from page.data
            if page.next_cursor is None:
                return
            params["cursor"] = page.next_cursor

    def delete_dataset(self, dataset_id: str) -> None:
        """Delete a dataset (409 ``conflict`` while a queued or running job uses it)."""
        response = self._request(
            lambda: self._http.delete(f"{DATASETS_PATH}/{dataset_id}"), safe=False)
        _ok(response, 204)

    # --- plumbing -----------------------------------------------------------------------

    def _report_bytes(self, job_id: str) -> bytes:
        response = self._request(lambda: self._http.get(f"{JOBS}/{job_id}/report"), safe=True)
        return _ok(response, 200).content

    def _stream(self, job_id: str) -> Iterator[JobPublic]:
        timeout = httpx.Timeout(self._http.timeout.connect, read=STREAM_READ_TIMEOUT_S)
        with self._http.stream("GET", f"{JOBS}/{job_id}/events", timeout=timeout) as response:
            if response.status_code != 200:
                response.read()
                raise ApiError.from_response(response)
            for event in parse_events(response.iter_lines()):
                if event.event == "job":
                    yield JobPublic.model_validate(json.loads(event.data))

    def _request(self, send: Callable[[], httpx.Response], *, safe: bool) -> httpx.Response:
        """``send()``, repeated on 429/503 (after Retry-After) and, when ``safe``, on
        connection errors; the last answer or error is the caller's."""
        for attempt in range(self.retry.retries + 1):
            last = attempt == self.retry.retries
            try:
                response = send()
            except httpx.TransportError:
                if not safe or last:
                    raise
                self._sleep(self.retry.backoff_s(attempt))
                continue
            if response.status_code not in RETRY_STATUSES or last:
                return response
            self._sleep(self.retry.wait_s(response, attempt))
        raise AssertionError("unreachable: the last attempt returns or raises")


def _spec_json(spec: JobSpec | dict[str, Any] | None, architecture: str | None) -> str:
    data: dict[str, Any]
    if isinstance(spec, JobSpec):
        data = spec.model_dump(mode="json", exclude_defaults=True)
    else:
        data = dict(spec or {})
    if architecture is not None:
        data["architecture"] = architecture
    return json.dumps(data)


def _ok(response: httpx.Response, *statuses: int) -> httpx.Response:
    if response.status_code not in statuses:
        raise ApiError.from_response(response)
    return response


_FILENAME = re.compile(r'filename="?([^";]+)"?')


def _save_checked(response: httpx.Response, folder: Path, job_id: str) -> Path:
    """Stream the body to ``folder``, under the server's file name (its last path part
    only), and check it against ``X-Content-SHA256``; a mismatch leaves no file."""
    found = _FILENAME.search(response.headers.get("content-disposition", ""))
    name = Path(found.group(1)).name if found else f"{job_id}-pruned.bin"
    target = folder / name
    partial = folder / f".{name}.part"
    digest = hashlib.sha256()
    with partial.open("wb") as out:
        for chunk in response.iter_bytes(CHUNK):
            digest.update(chunk)
            out.write(chunk)
    expected = response.headers.get("x-content-sha256")
    if expected is not None and digest.hexdigest() != expected:
        partial.unlink()
        raise ApiError(response.status_code, "checksum_mismatch",
                       f"the downloaded model's sha256 {digest.hexdigest()} is not the "
                       f"{expected} the server announced; download it again")
    partial.replace(target)
    return target
