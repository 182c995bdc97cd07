"""The Python client against a scripted transport: retries, idempotency, auth, downloads."""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path

import httpx
import pytest

from api_tests.core.factories import make_record
from client import ApiError, JobFailed, PrunerClient, RetryPolicy
from client.events import Event, parse_events
from client.progress import ProgressView, fraction
from client.retry import retry_after_s
from core.jobs.error_codes import JobErrorCode
from core.jobs.public import JobPublic
from core.jobs.record import JobError, JobStatus
from core.jobs.report import Progress
from core.jobs.spec import JobSpec

Handler = Callable[[httpx.Request], httpx.Response]


def job(status: JobStatus = JobStatus.QUEUED, **fields: object) -> JobPublic:
    record = make_record(datetime.now(UTC), "j1", status=status, spec=JobSpec(),
                         upload_bytes=3, **fields)
    return JobPublic.from_record(record)


def answer(status: int, body: JobPublic | dict[str, object], **headers: str) -> httpx.Response:
    content = body.model_dump_json() if isinstance(body, JobPublic) else json.dumps(body)
    return httpx.Response(status, content=content, headers=headers)


def client_for(handler: Handler, waits: list[float], **kw: object) -> PrunerClient:
    return PrunerClient("http://api.test", transport=httpx.MockTransport(handler),
                        sleep=waits.append, **kw)  # type: ignore[arg-type]


@pytest.fixture
def model(tmp_path: Path) -> Path:
    path = tmp_path / "m.pt"
    path.write_bytes(b"PK\x03\x04 model")
    return path


def test_submission_retried_after_429_and_503_reuses_its_idempotency_key(model: Path) -> None:
    seen: list[httpx.Request] = []
    later = format_datetime(datetime.now(UTC) + timedelta(seconds=20), usegmt=True)
    answers = [answer(429, {"code": "queue_full"}, **{"Retry-After": "7"}),
               answer(503, {"code": "broker_unavailable"}, **{"Retry-After": later}),
               answer(202, job())]

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return answers[len(seen) - 1]

    waits: list[float] = []
    with client_for(handler, waits) as client:
        assert client.submit(model, {"finetune": {"epochs": 0}}, architecture="mnist_mlp").id \
            == "j1"
    keys = {r.headers["idempotency-key"] for r in seen}
    assert len(seen) == 3 and len(keys) == 1  # one key: the server makes one job
    assert waits[0] == 7
    assert 18 <= waits[1] <= 20  # the HTTP-date form
    for request in seen:  # every try sends the whole file and the same spec
        body = request.read()
        assert b"PK\x03\x04 model" in body
        assert b'{"finetune": {"epochs": 0}, "architecture": "mnist_mlp"}' in body


def test_submission_retried_after_a_connection_error_with_the_same_key(model: Path) -> None:
    keys: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        keys.append(request.headers["idempotency-key"])
        if len(keys) == 1:
            raise httpx.ConnectError("refused")
        return answer(202, job())

    waits: list[float] = []
    with client_for(handler, waits) as client:
        client.submit(model, idempotency_key="build-7")
    assert keys == ["build-7", "build-7"] and len(waits) == 1


def test_cancel_is_not_repeated_after_a_connection_error() -> None:
    calls: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request.url.path)
        raise httpx.ConnectError("refused")

    with client_for(handler, []) as client, pytest.raises(httpx.ConnectError):
        client.cancel("j1")
    assert calls == ["/v1/jobs/j1/cancel"]


def test_retries_give_up_with_the_last_answer() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return answer(503, {"code": "broker_unavailable", "detail": "Redis down"},
                      **{"Retry-After": "5"})

    waits: list[float] = []
    with client_for(handler, waits, retry=RetryPolicy(retries=2, max_wait_s=3)) as client:
        with pytest.raises(ApiError) as raised:
            client.get("j1")
    assert (raised.value.status, raised.value.code) == (503, "broker_unavailable")
    assert waits == [3, 3]  # Retry-After capped by max_wait_s; two repeats


def test_api_key_sent_as_bearer_token_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return answer(200, job())

    monkeypatch.setenv("PRUNER_API_KEY", "s3cret")
    monkeypatch.setenv("PRUNER_URL", "http://from-env.test:9")
    client = PrunerClient(transport=httpx.MockTransport(handler))
    client.get("j1")
    assert seen[0].headers["authorization"] == "Bearer s3cret"
    assert str(seen[0].url) == "http://from-env.test:9/v1/jobs/j1"
    monkeypatch.delenv("PRUNER_API_KEY")
    PrunerClient("http://x.test", transport=httpx.MockTransport(handler)).get("j1")
    assert "authorization" not in seen[1].headers


def test_wait_follows_events_and_raises_with_the_error_code() -> None:
    running = job(JobStatus.RUNNING, progress=Progress(phase="finetuning", epoch=1, epochs=2,
                                                       step=5, steps=10))
    failed = job(JobStatus.FAILED, error=JobError(code=JobErrorCode.TIMEOUT, message="late"))
    stream = "".join(f"event: job\ndata: {j.model_dump_json()}\n\n: keep-alive\n\n"
                     for j in (running, failed))

    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/v1/jobs/j1/events"
        return httpx.Response(200, content=stream.encode(),
                              headers={"content-type": "text/event-stream"})

    updates: list[JobPublic] = []
    with client_for(handler, []) as client, pytest.raises(JobFailed) as raised:
        client.wait("j1", on_update=updates.append)
    assert raised.value.code == "timeout"
    assert [u.status for u in updates] == [JobStatus.RUNNING, JobStatus.FAILED]


def test_download_checks_the_sha256_and_keeps_nothing_on_a_mismatch(tmp_path: Path) -> None:
    body = b"pruned model bytes"
    announced = {"sha": hashlib.sha256(body).hexdigest()}

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=body, headers={
            "content-disposition": 'attachment; filename="../../j1-pruned.pt"',
            "x-content-sha256": announced["sha"]})

    with client_for(handler, []) as client:
        path = client.download_model("j1", tmp_path / "out")
        assert path == tmp_path / "out" / "j1-pruned.pt"  # the name's last part only
        assert path.read_bytes() == body
        announced["sha"] = "0" * 64
        with pytest.raises(ApiError, match="checksum_mismatch|sha256"):
            client.download_model("j1", tmp_path / "bad")
    assert list((tmp_path / "bad").iterdir()) == []


def test_problem_json_becomes_an_api_error() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return answer(404, {"code": "not_found", "detail": "no job 'x'"})

    with client_for(handler, []) as client, pytest.raises(ApiError) as raised:
        client.get("x")
    assert str(raised.value) == "404 not_found: no job 'x'"


def test_event_stream_parsing() -> None:
    lines = ["event: job", "data: {\"a\":", "data: 1}", "", ": keep-alive", "",
             "data:plain", "id: 3", ""]
    assert list(parse_events(lines)) == [Event("job", '{"a":\n1}'), Event("message", "plain")]


def test_retry_after_forms() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    date = format_datetime(now + timedelta(seconds=30), usegmt=True)
    assert retry_after_s(httpx.Response(429, headers={"Retry-After": "12"})) == 12
    assert retry_after_s(httpx.Response(429, headers={"Retry-After": date}), now) == 30
    assert retry_after_s(httpx.Response(429, headers={"Retry-After": "soon"})) is None
    assert retry_after_s(httpx.Response(429)) is None


def test_progress_bar_on_a_terminal_and_lines_elsewhere() -> None:
    steps = [job(JobStatus.RUNNING, progress=Progress(phase="finetuning", epoch=e, epochs=2,
                                                      step=s, steps=10))
             for e, s in ((1, 5), (1, 10), (2, 5))]
    assert fraction(steps[0]) == pytest.approx(0.1 + 0.85 * 0.25)
    done = job(JobStatus.SUCCEEDED)
    plain = io.StringIO()
    view = ProgressView(plain, tty=False)
    for update in (*steps, done):
        view.update(update)
    assert plain.getvalue().splitlines() == [
        "j1: running finetuning epoch 1/2 step 5/10", "j1: running finetuning epoch 2/2 step 5/10",
        "j1: succeeded"]
    term = io.StringIO()
    view = ProgressView(term, tty=True)
    view.update(steps[2])
    assert term.getvalue().startswith("\r[" + "#" * 18 + "-" * 6 + "]  74% running finetuning")


def test_wait_reconnects_when_the_stream_drops() -> None:
    """An API restart ends the stream or breaks the connection: the client opens it again
    (it starts with the job's current state) and follows the job to its end."""
    running = job(JobStatus.RUNNING, progress=Progress(phase="loading"))
    done = job(JobStatus.SUCCEEDED)
    streams = [f"event: job\ndata: {running.model_dump_json()}\n\n", None,
               f"event: job\ndata: {done.model_dump_json()}\n\n"]
    calls: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request.url.path)
        if request.url.path.endswith("/events"):
            body = streams.pop(0)
            if body is None:
                raise httpx.ReadError("connection reset")
            return httpx.Response(200, content=body.encode())
        return answer(200, running)  # GET /v1/jobs/j1 after the first stream ended early

    waits: list[float] = []
    with client_for(handler, waits) as client:
        assert client.wait("j1").status is JobStatus.SUCCEEDED
    assert calls == ["/v1/jobs/j1/events", "/v1/jobs/j1", "/v1/jobs/j1/events",
                     "/v1/jobs/j1/events"]
    assert len(waits) == 2
