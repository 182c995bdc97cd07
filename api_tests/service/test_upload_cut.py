"""Uploads a real uvicorn stops receiving: a declared length over the limit (413 and the
connection closed, the body never read), a client that hangs up mid-body (one log line, no
traceback, counted), and a client too slow or too long (408, the scratch file removed)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from api_tests.support.raw_http import form_head, open_upload, read_answer
from core.settings import Settings
from core.tenants.tenancy import local_admin_key
from stack import processes as P

LIMIT = 1024 * 1024
MIN_RATE, WINDOW_S, MAX_S = 2000, 1.0, 3.0


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[P.Proc]:
    root = tmp_path_factory.mktemp("cut")
    settings = Settings.of(data_dir=root / "data", redis_url=redis_url, max_upload_bytes=LIMIT,
                           upload_min_bytes_per_s=MIN_RATE, upload_rate_window_s=WINDOW_S,
                           upload_max_s=MAX_S)
    key, _ = local_admin_key(settings)
    proc = P.start_api(settings.as_env(), "127.0.0.1", P.free_port(), root / "logs")
    try:
        P.wait_until_ready(proc)
        proc.meta["key"], proc.meta["jobs"] = key, str(root / "data" / "jobs")
        yield proc
    finally:
        P.stop(proc)


def cut_count(api: P.Proc, reason: str) -> float:
    text = httpx.get(api.meta["url"] + "/metrics",
                     headers={"Authorization": f"Bearer {api.meta['key']}"}).text
    line = f'pruner_uploads_cut_total{{reason="{reason}"}} '
    return float(next(x for x in text.splitlines() if x.startswith(line)).split()[-1])


def no_job_files(api: P.Proc) -> bool:
    jobs = Path(api.meta["jobs"])
    return not jobs.exists() or not any(jobs.rglob("*"))


def test_a_declared_length_over_the_limit_is_413_and_closes_without_reading(
    api: P.Proc,
) -> None:
    sock = open_upload(api.meta["url"], api.meta["key"], 600 * 1024 * 1024)
    with sock:
        answer = read_answer(sock, timeout=5)
    assert answer.status == 413
    assert answer.headers["connection"] == "close"
    assert answer.closed  # a server draining the 600 MiB would keep the connection open


def test_a_client_hanging_up_mid_upload_is_one_line_and_a_count(api: P.Proc) -> None:
    before = cut_count(api, "client_disconnected")
    log_before = api.log_path.read_text()
    with open_upload(api.meta["url"], api.meta["key"], 500_000) as sock:
        sock.sendall(form_head() + b"PK\x03\x04" + b"\0" * 20_000)
        time.sleep(0.3)
    P.wait_until(lambda: cut_count(api, "client_disconnected") == before + 1, "the count")
    logged = api.log_path.read_text()[len(log_before):]
    assert "Traceback" not in logged and "unhandled error" not in logged
    assert [x for x in logged.splitlines() if "cut after" in x] != []
    assert len(logged.splitlines()) == 1, logged
    P.wait_until(lambda: no_job_files(api), "the partial upload removed")


def test_a_trickling_upload_is_cut_with_408_and_leaves_no_file(api: P.Proc) -> None:
    before = cut_count(api, "too_slow")
    started = time.monotonic()
    with open_upload(api.meta["url"], api.meta["key"], 500_000) as sock:
        sock.sendall(form_head())
        try:
            for _ in range(40):  # 10 bytes every 0.1 s: 100 B/s, under the 2000 B/s minimum
                sock.sendall(b"\0" * 10)
                time.sleep(0.1)
        except OSError:  # the server cut us and closed
            pass
        answer = read_answer(sock, timeout=5)
    assert answer.status == 408
    assert answer.headers["connection"] == "close"
    assert time.monotonic() - started < 3 * WINDOW_S + 1
    assert cut_count(api, "too_slow") == before + 1
    assert no_job_files(api)


def test_a_silent_client_is_cut_when_its_window_ends(api: P.Proc) -> None:
    with open_upload(api.meta["url"], api.meta["key"], 500_000) as sock:
        sock.sendall(form_head())
        answer = read_answer(sock, timeout=5)
    assert answer.status == 408
    assert no_job_files(api)


def test_an_upload_past_the_total_time_is_cut(api: P.Proc) -> None:
    before = cut_count(api, "too_long")
    with open_upload(api.meta["url"], api.meta["key"], 900_000) as sock:
        sock.sendall(form_head())
        try:
            for _ in range(int(MAX_S / 0.1) + 20):  # 5000 B/s: fast enough, but too long
                sock.sendall(b"\0" * 500)
                time.sleep(0.1)
        except OSError:
            pass
        answer = read_answer(sock, timeout=5)
    assert answer.status == 408
    assert cut_count(api, "too_long") == before + 1
    assert no_job_files(api)
