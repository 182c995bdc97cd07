"""Receive ``POST /v1/jobs``'s multipart body as a stream, straight into the blob store.

Why not ``UploadFile``: starlette's form parser spools every file part to a temporary file
before the route runs, so a 10 GB upload is written to /tmp in full before we can say 413,
and then copied again into the job folder. Parsing ``request.stream()`` ourselves with
python-multipart's streaming parser writes each chunk once, to its final place, hashing and
counting it on the way, and stops the moment the limit is passed. Memory stays at one chunk
(uvicorn hands us 64 KiB at a time), whatever the upload's size.

The stream is paced (``service/upload_pace.py``): an upload below the minimum rate or past
the total time is cut with 408. A client that disconnects mid-upload is not a server error:
one WARNING line, no traceback, and ``pruner_uploads_cut_total{reason="client_disconnected"}``.
Every answer given before the body was read in full says ``Connection: close``, so the
server never reads (and discards) the rest of a body it has refused.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import logging
import sys
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request

from core.settings import Settings
from core.storage.protocols import UPLOAD, BlobStore
from service.errors import (
    FieldError,
    InsufficientStorage,
    PayloadTooLarge,
    UnsupportedMediaType,
    ValidationFailed,
)
from service.upload_pace import UploadPace, UploadTooSlow

MODEL_FIELD = "model"
SPEC_FIELD = "spec"
MAX_SPEC_BYTES = 256 * 1024
# Multipart framing and the spec field on top of the model file itself.
FORM_OVERHEAD_BYTES = MAX_SPEC_BYTES + 64 * 1024
CLOSE = {"Connection": "close"}  # an answer before the body's end: read no more of it
log = logging.getLogger("service.uploads")


@dataclass
class ReceivedForm:
    spec: bytes | None = None
    model_bytes: int = 0
    model_sha256: str | None = None  # None: there was no model part
    filename: str | None = None  # the file part's, if the client sent a usable one


@dataclass
class _Receiver:
    """python-multipart callbacks: route each part's bytes to the blob store or a buffer."""

    blobs: BlobStore
    job_id: str
    max_model_bytes: int
    files: ExitStack
    file_field: str = MODEL_FIELD  # the file part (the dataset route: ``dataset``)
    file_name: str = UPLOAD  # its name in the blob store
    form: ReceivedForm = field(default_factory=ReceivedForm)
    ended: bool = False
    _header_field: bytearray = field(default_factory=bytearray)
    _header_value: bytearray = field(default_factory=bytearray)
    _disposition: bytes = b""
    _part: str | None = None
    _sink: BinaryIO | None = None
    _hash: Any = None
    _spec: bytearray = field(default_factory=bytearray)

    def callbacks(self) -> Any:  # python-multipart's MultipartCallbacks
        return {
            "on_part_begin": self._part_begin,
            "on_header_field": lambda d, s, e: self._header_field.extend(d[s:e]),
            "on_header_value": lambda d, s, e: self._header_value.extend(d[s:e]),
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": self._part_data,
            "on_part_end": self._part_end,
            "on_end": self._end,
        }

    def _part_begin(self) -> None:
        self._disposition = b""
        self._part = None

    def _header_end(self) -> None:
        if bytes(self._header_field).strip().lower() == b"content-disposition":
            self._disposition = bytes(self._header_value)
        self._header_field.clear()
        self._header_value.clear()

    def _headers_finished(self) -> None:
        _, params = parse_options_header(self._disposition)
        name = params.get(b"name", b"").decode("utf-8", "replace")
        if name in (self.file_field, SPEC_FIELD) and self._seen(name):
            raise _invalid(name, f"the form has more than one `{name}` field")
        self._part = name
        if name == self.file_field:
            self.form.filename = _filename(params.get(b"filename"))
            self._sink = self.files.enter_context(self.blobs.writer(self.job_id, self.file_name))
            self._hash = hashlib.sha256()
            self.form.model_sha256 = ""  # seen; set for real at the part's end

    def _seen(self, name: str) -> bool:
        return self.form.model_sha256 is not None if name == self.file_field else bool(self._spec)

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        chunk = data[start:end]
        if self._part == self.file_field:
            self.form.model_bytes += len(chunk)
            if self.form.model_bytes > self.max_model_bytes:
                raise PayloadTooLarge(
                    f"the {self.file_field} file is larger than the limit of "
                    f"{self.max_model_bytes} bytes",
                    extra={"limit_bytes": self.max_model_bytes},
                )
            assert self._sink is not None
            self._sink.write(chunk)
            self._hash.update(chunk)
        elif self._part == SPEC_FIELD:
            self._spec.extend(chunk)
            if len(self._spec) > MAX_SPEC_BYTES:
                raise PayloadTooLarge(f"the spec field is larger than {MAX_SPEC_BYTES} bytes")
        # Any other field is read past and dropped: it counts toward the request limit only.

    def _part_end(self) -> None:
        if self._part == self.file_field:
            self.form.model_sha256 = self._hash.hexdigest()
        elif self._part == SPEC_FIELD:
            self.form.spec = bytes(self._spec)
        self._part = None

    def _end(self) -> None:
        self.ended = True


def _invalid(name: str, msg: str) -> ValidationFailed:
    error = FieldError(loc=["body", name], msg=msg, type="value_error")
    return ValidationFailed(f"{name}: {msg}", errors=[error])


def _filename(raw: bytes | None) -> str | None:
    """The client's file name, kept only as a label: its last path part, printable, short."""
    if not raw:
        return None
    name = raw.decode("utf-8", "replace").replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(ch for ch in name if ch.isprintable())[:255]
    return name or None


def multipart_boundary(request: Request, file_field: str = MODEL_FIELD) -> bytes:
    content_type, params = parse_options_header(request.headers.get("content-type"))
    boundary = params.get(b"boundary")
    if content_type != b"multipart/form-data" or not boundary:
        parts = ("a `model` file and a `spec` field (JSON)" if file_field == MODEL_FIELD
                 else f"a `{file_field}` file")
        raise UnsupportedMediaType(f"send multipart/form-data with {parts}")
    return boundary


def check_content_length(request: Request, max_model_bytes: int) -> None:
    """Refuse early, before reading a byte, when the client announces too much."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit():
        if int(declared) > max_model_bytes + FORM_OVERHEAD_BYTES:
            raise PayloadTooLarge(
                f"the request ({declared} bytes) exceeds the upload limit of "
                f"{max_model_bytes} bytes",
                extra={"limit_bytes": max_model_bytes}, headers=dict(CLOSE),
            )


async def _paced_chunks(request: Request, pace: UploadPace) -> Any:
    """``request.stream()``, each chunk awaited no longer than the pace allows.

    The wait for a chunk is a task that a timeout leaves running (cancelling it would end
    the stream), so a wait that ends a hair before the window does just waits again."""
    stream = request.stream().__aiter__()

    async def next_chunk() -> bytes:
        return await anext(stream)

    pending: asyncio.Task[bytes] | None = None
    try:
        while True:
            pending = pending or asyncio.ensure_future(next_chunk())
            done, _ = await asyncio.wait({pending}, timeout=pace.wait_s())
            if not done:
                pace.check()  # raises once the window or the total time has run out
                continue
            arrived, pending = pending, None
            try:
                chunk = arrived.result()
            except StopAsyncIteration:
                return
            pace.received(len(chunk))
            yield chunk
    finally:
        if pending is not None:
            pending.cancel()


async def receive_form(
    request: Request, blobs: BlobStore, job_id: str, settings: Settings, *,
    max_bytes: int | None = None, file_field: str = MODEL_FIELD, file_name: str = UPLOAD,
) -> ReceivedForm:
    """Stream the body: the model part into ``UPLOAD`` of ``job_id``, the spec into memory.

    On any error the partial upload is discarded (the writer removes its temporary file).
    The caller must still delete the job's folder when it does not accept the job.
    """
    boundary = multipart_boundary(request, file_field)
    max_model_bytes = settings.max_upload_bytes if max_bytes is None else max_bytes
    limit = max_model_bytes + FORM_OVERHEAD_BYTES
    files = ExitStack()
    total = 0
    try:
        receiver = _Receiver(blobs, job_id, max_model_bytes, files, file_field, file_name)
        parser = MultipartParser(boundary, receiver.callbacks())
        async for chunk in _paced_chunks(request, UploadPace.of(settings)):
            total += len(chunk)
            if total > limit:
                raise PayloadTooLarge(f"the request exceeds the upload limit of {limit} bytes",
                                      extra={"limit_bytes": max_model_bytes},
                                      headers=dict(CLOSE))
            parser.write(chunk)
        parser.finalize()
        if not receiver.ended:
            raise _invalid(file_field, "the multipart body ended early (no closing boundary)")
    except MultipartParseError as exc:
        files.__exit__(*sys.exc_info())  # discards the partial upload
        raise _invalid(file_field, f"malformed multipart body: {exc}") from exc
    except OSError as exc:
        files.__exit__(*sys.exc_info())
        raise _storage_error(exc) from exc
    except (ClientDisconnect, UploadTooSlow) as exc:
        # Off the event loop: a few hundred cut at the same moment (one window's end) would
        # otherwise unlink their files in a row while every other request waits.
        await run_in_threadpool(files.__exit__, *sys.exc_info())
        reason = exc.reason if isinstance(exc, UploadTooSlow) else "client_disconnected"
        request.state.metrics.uploads_cut.labels(reason).inc()
        log.warning("upload of job %s cut after %d bytes: %s", job_id, total, reason)
        raise
    except BaseException:
        files.__exit__(*sys.exc_info())
        raise
    # Closing the writer fsyncs the file: off the event loop.
    try:
        await run_in_threadpool(files.close)
    except OSError as exc:
        raise _storage_error(exc) from exc
    return receiver.form


def _storage_error(exc: OSError) -> Exception:
    """A full disk is the service's problem, not a bug: 507 with Retry-After, never 500."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return InsufficientStorage("no room left to store the upload; retry later",
                                   headers={"Retry-After": "60"})
    return exc
