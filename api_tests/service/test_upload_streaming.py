"""The upload is streamed: a real uvicorn receiving 256 MiB neither holds it in memory nor
writes more than the limit when it refuses it (a spooling parser would do both)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from core.settings import Settings
from core.tenants.tenancy import local_admin_key
from stack import processes as P
from testkit.uploads import (
    BOUNDARY,
    CHUNK,
    memory_kib,
    multipart_body,
    written_bytes,
)

UPLOAD_MIB = 256


def start_api(root: Path, redis_url: str, limit_bytes: int) -> P.Proc:
    settings = Settings.of(data_dir=root / "data", redis_url=redis_url,
                           max_upload_bytes=limit_bytes)
    key, _ = local_admin_key(settings)
    api = P.start_api(settings.as_env(), "127.0.0.1", P.free_port(), root / "logs")
    P.wait_until_ready(api)
    api.meta["key"] = key
    return api


@pytest.fixture()
def big_api(tmp_path: Path, redis_url: str, request: pytest.FixtureRequest) -> Iterator[P.Proc]:
    api = start_api(tmp_path, redis_url, request.param)
    try:
        yield api
    finally:
        P.stop(api)


def post_chunked(api: P.Proc) -> int:
    """Send the body chunked (no Content-Length), so only the stream tells its size."""
    url = api.meta["url"]
    headers = {"content-type": f"multipart/form-data; boundary={BOUNDARY}",
               "authorization": f"Bearer {api.meta['key']}"}
    try:
        with httpx.Client(timeout=300) as client:
            return client.post(url + "/v1/jobs", content=multipart_body(UPLOAD_MIB),
                                  headers=headers).status_code
    except httpx.HTTPError:  # the server answered early and closed while we were sending
        return -1


@pytest.mark.parametrize("big_api", [(UPLOAD_MIB + 1) * CHUNK], indirect=True)
def test_a_large_upload_is_never_held_in_memory(big_api: P.Proc) -> None:
    before = memory_kib(big_api.pid)["VmRSS"]
    wrote_before = written_bytes(big_api.pid)
    # The body is zip-looking bytes: streamed in full, then refused by the archive check.
    assert post_chunked(big_api) == 422
    growth_mib = (memory_kib(big_api.pid)["VmHWM"] - before) / 1024
    assert growth_mib < 32, f"peak RSS grew {growth_mib:.0f} MiB for a {UPLOAD_MIB} MiB upload"
    written_mib = (written_bytes(big_api.pid) - wrote_before) / CHUNK
    assert UPLOAD_MIB <= written_mib < UPLOAD_MIB + 8  # written once, not spooled and copied


@pytest.mark.parametrize("big_api", [16 * CHUNK], indirect=True)
def test_an_upload_over_the_limit_is_cut_off_at_the_limit(big_api: P.Proc) -> None:
    wrote_before = written_bytes(big_api.pid)
    status = post_chunked(big_api)
    written_mib = (written_bytes(big_api.pid) - wrote_before) / CHUNK
    assert written_mib < 17, f"wrote {written_mib:.0f} MiB for a 16 MiB limit"
    assert status in (413, -1)  # -1: the client saw the connection close mid-send
    assert not any((Path(big_api.log_path).parent.parent / "data" / "jobs").glob("*/*"))
