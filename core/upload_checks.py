"""Checks of an upload that need no torch: run by the API at the door and again by the worker
before any deserialisation. (Owner: the hostile-uploads work, issue 4.)

What is judged here, from the zip central directory, the raw bytes and the pickle *opcodes*
(listed with ``pickletools.genops``, never executed):

- size over ``max_upload_bytes``; neither a zip archive nor safetensors;
- zip structure: entry count, total declared uncompressed size, per-entry compression ratio,
  absolute / ``..`` / backslash names, duplicate names, encrypted entries, odd compression
  methods, a missing ``data.pkl``;
- TorchScript archives: code that defines ``__setstate__`` (``torch.jit.load`` runs it while
  loading, before any audit could look at it);
- torch.save archives: globals named by ``data.pkl`` outside the tensor allow-list (a whole
  pickled ``nn.Module``, ``os.system``...), disallowed storage dtypes (complex, quantized,
  float8, sparse, meta);
- both zip kinds: each storage's declared size (numel x itemsize from the pickle) against its
  entry's size, each tensor's shape/stride against its storage, the tensor and element caps;
- safetensors header: length cap, JSON, dtypes, shapes vs data offsets, overlapping or
  out-of-range offsets, tensor count and element caps.

``UploadRejected.code`` is the ProblemCode the API answers with; ``job_code`` the JobErrorCode a
job fails with when the worker finds the same problem.
"""

from __future__ import annotations

import json
import math
import pickletools
import re
import struct
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, NamedTuple

from core.compact_checks import CompactRejected, check_compact_safetensors
from core.errors import JobErrorCode, ProblemCode
from core.jobs import UploadFormat
from core.settings import MiB, Settings

# data.pkl / constants.pkl are read whole and walked opcode by opcode in Python (~0.6 us an
# opcode here): a state_dict's pickle is ~150 bytes per tensor (1.5 MB at the 10 000-tensor
# cap), and 8 MiB bounds the worst case (one-byte opcodes) to ~5 s of a thread.
MAX_PICKLE_BYTES = 8 * MiB
# Entries smaller than this are not judged by their compression ratio: a few KiB of zeros
# compress 200x yet cannot hurt anyone, and TorchScript's deflated sources vary a lot.
RATIO_CHECK_MIN_BYTES = 1 * MiB
# TorchScript source (code/*.py) is scanned for load-time hooks; real models have a few
# hundred KiB of it, and the cap keeps the door's decompression work bounded.
MAX_CODE_BYTES = 64 * MiB

_STATUS_JOB_CODE = {
    413: JobErrorCode.MODEL_TOO_LARGE,
    415: JobErrorCode.INVALID_MODEL,
    422: JobErrorCode.INVALID_MODEL,
}


class UploadRejected(Exception):
    """The upload is refused. ``status`` is the HTTP status the API answers (413, 415, 422);
    ``code`` a stable ProblemCode string; ``job_code`` the JobErrorCode the engine reports."""

    def __init__(
        self, status: int, code: str, message: str, job_code: JobErrorCode | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.job_code = job_code or _STATUS_JOB_CODE.get(status, JobErrorCode.INVALID_MODEL)


def _too_large(message: str) -> UploadRejected:
    return UploadRejected(413, ProblemCode.PAYLOAD_TOO_LARGE, message)


def _invalid(message: str, job_code: JobErrorCode | None = None) -> UploadRejected:
    return UploadRejected(422, ProblemCode.INVALID_UPLOAD, message, job_code)


def sniff_format(head: bytes) -> UploadFormat | None:
    """Format from the first bytes: a zip archive (TorchScript or torch.save) or safetensors."""
    if head[:4] == b"PK\x03\x04":
        return UploadFormat.ZIP
    if len(head) >= 9 and head[8:9] == b"{":
        return UploadFormat.SAFETENSORS
    return None


def check_upload(path: Path, settings: Settings) -> UploadFormat:
    """Judge a stored upload without torch: return its format or raise ``UploadRejected``."""
    size = path.stat().st_size
    if size > settings.max_upload_bytes:
        raise _too_large(
            f"the model file has {size} bytes; the limit is {settings.max_upload_bytes} "
            "(PRUNER_MAX_UPLOAD_BYTES)"
        )
    with path.open("rb") as f:
        head = f.read(16)
    fmt = sniff_format(head)
    if fmt is None:
        raise UploadRejected(
            415,
            ProblemCode.UNSUPPORTED_MEDIA_TYPE,
            "the model file is neither a zip archive (torch.jit.save / torch.save) nor "
            "safetensors",
        )
    if fmt is UploadFormat.ZIP:
        check_zip(path, settings)
    else:
        check_safetensors(path, settings)
    return fmt


def job_error_code(exc: UploadRejected) -> JobErrorCode:
    """The JobErrorCode a job fails with for ``exc`` (for the engine's EngineError)."""
    return exc.job_code


# --- zip archives ---------------------------------------------------------------------------

_ALLOWED_COMPRESSION = (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED)
# What zipfile raises on corrupt archives: bad headers and CRCs, broken deflate streams...
_READ_ERRORS = (
    zipfile.BadZipFile, zlib.error, OSError, ValueError, EOFError, NotImplementedError,
    RuntimeError,
)


def check_zip(path: Path, settings: Settings) -> None:
    """Structure of a torch.save / torch.jit.save archive, then its pickles and storages."""
    declared = _declared_entry_count(path)
    if declared is not None and declared > settings.max_archive_entries:
        # Refused before zipfile builds an object per entry (millions fit in an upload).
        raise _too_many_entries(declared, settings)
    try:
        archive = zipfile.ZipFile(path)
    except _READ_ERRORS as exc:
        raise _invalid(f"the model file is not a readable zip archive ({exc})") from None
    with archive:
        infos = archive.infolist()
        _check_entries(infos, settings)
        prefix = _archive_prefix(infos)
        names = {i.filename: i for i in infos}
        torchscript = f"{prefix}/constants.pkl" in names or any(
            n.startswith(f"{prefix}/code/") for n in names
        )
        if torchscript:
            _check_no_load_hooks(archive, infos, prefix)
        scan = _scan_pickle(_read_member(archive, names[f"{prefix}/data.pkl"]), "data.pkl")
        if not torchscript:
            _check_state_dict_globals(scan.globals)
        storages = {f"data/{k}": v for k, v in scan.storages.items()}
        tensors = [t._replace(key=f"data/{t.key}") for t in scan.tensors]
        # TorchScript keeps constant tensors in a pickle of their own, with their storages in
        # constants/. (traced_inputs.pkl, whose storages torch writes empty, is not loaded.)
        if f"{prefix}/constants.pkl" in names:
            info = names[f"{prefix}/constants.pkl"]
            extra = _scan_pickle(_read_member(archive, info), "constants.pkl")
            storages |= {f"constants/{k}": v for k, v in extra.storages.items()}
            tensors += [t._replace(key=f"constants/{t.key}") for t in extra.tensors]
        _check_storages(storages, tensors, names, prefix, settings, torchscript)


def _too_many_entries(count: int, settings: Settings) -> UploadRejected:
    return _too_large(
        f"the zip archive has {count} entries; the limit is {settings.max_archive_entries} "
        "(PRUNER_MAX_ARCHIVE_ENTRIES)"
    )


_EOCD = b"PK\x05\x06"
_ZIP64_LOCATOR = b"PK\x06\x07"
_ZIP64_EOCD = b"PK\x06\x06"


def _declared_entry_count(path: Path) -> int | None:
    """Entry count from the end-of-central-directory record (zip64 too), read from the last
    64 KiB of the file; None when there is none (zipfile then says what is wrong)."""
    with path.open("rb") as f:
        size = f.seek(0, 2)
        tail_start = max(0, size - (22 + 65535 + 20))
        f.seek(tail_start)
        tail = f.read()
        at = tail.rfind(_EOCD)
        if at < 0 or len(tail) < at + 22:
            return None
        count: int = struct.unpack("<H", tail[at + 10 : at + 12])[0]
        locator = at - 20
        if count != 0xFFFF or locator < 0 or tail[locator : locator + 4] != _ZIP64_LOCATOR:
            return count
        (record_at,) = struct.unpack("<Q", tail[locator + 8 : locator + 16])
        f.seek(record_at)
        record = f.read(56)
    if len(record) < 56 or record[:4] != _ZIP64_EOCD:
        return None
    zip64_count: int = struct.unpack("<Q", record[32:40])[0]
    return zip64_count


def _check_entries(infos: list[zipfile.ZipInfo], settings: Settings) -> None:
    if len(infos) > settings.max_archive_entries:
        raise _too_many_entries(len(infos), settings)
    seen: set[str] = set()
    total = 0
    for info in infos:
        name = info.filename
        _check_entry_name(name)
        if name in seen:
            raise _invalid(f"the zip archive holds the entry {name!r} twice")
        seen.add(name)
        if info.flag_bits & 0x1:
            raise _invalid(f"the zip entry {name!r} is encrypted")
        if info.compress_type not in _ALLOWED_COMPRESSION:
            raise _invalid(
                f"the zip entry {name!r} uses compression method {info.compress_type}; "
                "only stored (0) and deflate (8) are accepted"
            )
        total += info.file_size
        ratio = info.file_size / max(info.compress_size, 1)
        if info.file_size >= RATIO_CHECK_MIN_BYTES and ratio > settings.max_compression_ratio:
            raise _too_large(
                f"the zip entry {name!r} expands {ratio:.0f}x ({info.compress_size} -> "
                f"{info.file_size} bytes); the limit is {settings.max_compression_ratio:g}x "
                "(PRUNER_MAX_COMPRESSION_RATIO)"
            )
    if total > settings.max_uncompressed_bytes:
        raise _too_large(
            f"the zip archive declares {total} uncompressed bytes; the limit is "
            f"{settings.max_uncompressed_bytes} (PRUNER_MAX_UNCOMPRESSED_BYTES)"
        )


def _check_entry_name(name: str) -> None:
    parts = PurePosixPath(name).parts
    if (
        "\\" in name
        or "\x00" in name
        or name.startswith("/")
        or re.match(r"^[A-Za-z]:", name)
        or ".." in parts
    ):
        raise _invalid(
            f"the zip entry name {name!r} is absolute, climbs out with '..', or holds a "
            "backslash or NUL"
        )


def _archive_prefix(infos: list[zipfile.ZipInfo]) -> str:
    """torch archives keep everything under one top-level folder holding ``data.pkl``."""
    prefixes = {i.filename.split("/", 1)[0] for i in infos}
    if len(prefixes) != 1 or not any(i.filename.endswith("/data.pkl") for i in infos):
        raise _invalid(
            "the zip archive is not a torch.save or torch.jit.save archive (expected one "
            "top-level folder holding data.pkl)"
        )
    prefix = prefixes.pop()
    if f"{prefix}/data.pkl" not in {i.filename for i in infos}:
        raise _invalid(f"the zip archive has no {prefix}/data.pkl")
    return prefix


def _read_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> bytes:
    if info.file_size > MAX_PICKLE_BYTES:
        raise _too_large(
            f"the zip entry {info.filename!r} has {info.file_size} bytes; pickles over "
            f"{MAX_PICKLE_BYTES} bytes are refused"
        )
    try:
        with archive.open(info) as f:
            data = f.read(MAX_PICKLE_BYTES + 1)
    except _READ_ERRORS as exc:
        raise _invalid(f"the zip entry {info.filename!r} cannot be read ({exc})") from None
    if len(data) != info.file_size:
        raise _invalid(f"the zip entry {info.filename!r} is not the size it declares")
    return data


_SETSTATE = re.compile(rb"__setstate__")


def _check_no_load_hooks(
    archive: zipfile.ZipFile, infos: list[zipfile.ZipInfo], prefix: str
) -> None:
    """torch.jit.load calls the ``__setstate__`` of every scripted object it unpickles, so
    such code would run before audit_torchscript could see it: refuse any archive whose
    TorchScript source (the ``code/`` entries torch.jit.load compiles) defines it; ordinary
    nn.Module code never does."""
    code = [
        i for i in infos
        if i.filename.startswith(f"{prefix}/code/") and not i.filename.endswith(".debug_pkl")
    ]
    total = sum(i.file_size for i in code)
    if total > MAX_CODE_BYTES:
        raise _too_large(
            f"the TorchScript archive holds {total} bytes of code; at most {MAX_CODE_BYTES} "
            "are accepted"
        )
    for info in code:
        try:
            with archive.open(info) as f:
                data = f.read(MAX_CODE_BYTES + 1)
        except _READ_ERRORS as exc:
            raise _invalid(f"the zip entry {info.filename!r} cannot be read ({exc})") from None
        if _SETSTATE.search(data):
            raise _invalid(
                f"the TorchScript archive defines __setstate__ (in {info.filename!r}); "
                "torch.jit.load would run it while loading, before any audit, so such "
                "archives are refused. Script the model without custom __getstate__/"
                "__setstate__, or send a state_dict or safetensors file.",
                JobErrorCode.UNSAFE_MODEL,
            )


# --- pickle opcodes (never executed) ---------------------------------------------------------


class _Global(NamedTuple):
    name: str  # "module.qualname"


class _StorageRef(NamedTuple):
    key: str


class _Call(NamedTuple):
    func: object
    args: object


class _Opaque:
    """A value the scan does not model (dicts, lists' contents, built objects)."""


class StorageRecord(NamedTuple):
    type_name: str  # "torch.FloatStorage", "torch.storage.UntypedStorage"...
    numel: int  # elements of that storage type (bytes for UntypedStorage)


class TensorRecord(NamedTuple):
    key: str  # storage key
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]
    dtype: str | None  # "torch.float8_e4m3fn" for _rebuild_tensor_v3, None for v2


@dataclass
class PickleScan:
    # Globals in order of first appearance (a dict: membership tests stay O(1) even for a
    # pickle naming a million of them).
    seen_globals: dict[str, None] = field(default_factory=dict)
    storages: dict[str, StorageRecord] = field(default_factory=dict)
    tensors: list[TensorRecord] = field(default_factory=list)

    @property
    def globals(self) -> list[str]:
        return list(self.seen_globals)


_MARK = object()
_CONSTANT_OPS = frozenset(
    "INT BININT BININT1 BININT2 LONG LONG1 LONG4 STRING BINSTRING SHORT_BINSTRING BINBYTES "
    "SHORT_BINBYTES BINBYTES8 BYTEARRAY8 UNICODE SHORT_BINUNICODE BINUNICODE BINUNICODE8 "
    "FLOAT BINFLOAT".split()
)
_FIXED = {"NONE": None, "NEWTRUE": True, "NEWFALSE": False, "EMPTY_TUPLE": ()}
_OPAQUE_OPS = frozenset("EMPTY_DICT EMPTY_LIST EMPTY_SET NEXT_BUFFER".split())
_IGNORED_OPS = frozenset("PROTO FRAME READONLY_BUFFER".split())
_TENSOR_REBUILDERS = ("torch._utils._rebuild_tensor_v2", "torch._utils._rebuild_tensor_v3")


def _pop_mark(stack: list[Any]) -> list[Any]:
    i = len(stack) - 1
    while stack[i] is not _MARK:
        i -= 1
    items = stack[i + 1 :]
    del stack[i:]
    return items


def _scan_pickle(data: bytes, what: str) -> PickleScan:
    """Walk the opcodes of a torch pickle with a symbolic stack: list the globals it names,
    the storages it declares (persistent ids) and the tensors built on them. Nothing is
    imported, called or constructed."""
    try:
        return _run_symbolic(data)
    except (ValueError, IndexError, KeyError, TypeError, struct.error) as exc:
        raise _invalid(f"{what} is not a valid pickle ({type(exc).__name__}: {exc})") from None


def _run_symbolic(data: bytes) -> PickleScan:
    scan = PickleScan()
    stack: list[Any] = []
    memo: dict[int, Any] = {}
    for op, arg, _pos in pickletools.genops(data):
        name = op.name
        if name in _CONSTANT_OPS:
            stack.append(arg)
        elif name in _FIXED:
            stack.append(_FIXED[name])
        elif name in _OPAQUE_OPS:
            stack.append(_Opaque())
        elif name in _IGNORED_OPS:
            pass
        elif name == "STOP":
            break
        else:
            _step(name, arg, stack, memo, scan)
    return scan


def _step(name: str, arg: Any, stack: list[Any], memo: dict[int, Any], scan: PickleScan) -> None:
    if name == "MARK":
        stack.append(_MARK)
    elif name == "TUPLE":
        stack.append(tuple(_pop_mark(stack)))
    elif name in ("TUPLE1", "TUPLE2", "TUPLE3"):
        n = int(name[-1])
        if n > len(stack) or any(v is _MARK for v in stack[-n:]):
            raise IndexError(f"{name} on a short stack")
        top = tuple(stack[-n:])
        del stack[-n:]
        stack.append(top)
    elif name in ("LIST", "DICT", "FROZENSET", "OBJ"):
        marked = _pop_mark(stack)
        if name == "LIST":
            stack.append(marked)
        elif name == "OBJ" and marked and isinstance(marked[0], _Global):
            stack.append(_Call(marked[0], tuple(marked[1:])))
        else:
            stack.append(_Opaque())
    elif name in ("APPENDS", "SETITEMS", "ADDITEMS"):
        items = _pop_mark(stack)
        if name == "APPENDS" and isinstance(stack[-1], list):
            stack[-1].extend(items)
    elif name == "APPEND":
        value = stack.pop()
        if isinstance(stack[-1], list):
            stack[-1].append(value)
    elif name == "SETITEM":
        del stack[-2:]
        stack[-1]  # noqa: B018 - the dict must exist (IndexError otherwise)
    elif name in ("GLOBAL", "INST"):
        module, qualname = arg.split(" ", 1)
        glob = _record_global(scan, f"{module}.{qualname}")
        if name == "INST":
            stack.append(_Call(glob, tuple(_pop_mark(stack))))
        else:
            stack.append(glob)
    elif name == "STACK_GLOBAL":
        qualname, module = stack.pop(), stack.pop()
        if not isinstance(module, str) or not isinstance(qualname, str):
            raise TypeError("STACK_GLOBAL needs two strings")
        stack.append(_record_global(scan, f"{module}.{qualname}"))
    elif name in ("EXT1", "EXT2", "EXT4"):
        stack.append(_record_global(scan, f"copyreg extension {arg}"))
    elif name in ("REDUCE", "NEWOBJ"):
        args, func = stack.pop(), stack.pop()
        stack.append(_call(func, args, scan))
    elif name == "NEWOBJ_EX":
        _kwargs, args, cls = stack.pop(), stack.pop(), stack.pop()
        stack.append(_Call(cls, args))
    elif name == "BUILD":
        stack.pop()
        stack[-1]  # noqa: B018
    elif name in ("PUT", "BINPUT", "LONG_BINPUT"):
        memo[int(arg)] = stack[-1]
    elif name == "MEMOIZE":
        memo[len(memo)] = stack[-1]
    elif name in ("GET", "BINGET", "LONG_BINGET"):
        stack.append(memo[int(arg)])
    elif name == "POP":
        stack.pop()
    elif name == "POP_MARK":
        _pop_mark(stack)
    elif name == "DUP":
        stack.append(stack[-1])
    elif name == "BINPERSID":
        stack.append(_persistent(stack.pop(), scan))
    elif name == "PERSID":
        raise ValueError("text persistent ids (PERSID) are not used by torch")
    else:
        raise ValueError(f"unexpected pickle opcode {name}")


def _record_global(scan: PickleScan, name: str) -> _Global:
    scan.seen_globals[name] = None
    return _Global(name)


def _persistent(pid: object, scan: PickleScan) -> object:
    """torch's persistent id: ('storage', <storage type global>, key, location, numel)."""
    if (
        isinstance(pid, tuple)
        and len(pid) == 5
        and pid[0] == "storage"
        and isinstance(pid[1], _Global)
        and isinstance(pid[2], str)
        and isinstance(pid[4], int)
        and not isinstance(pid[4], bool)
    ):
        if pid[4] < 0:
            raise ValueError(f"storage {pid[2]!r} declares {pid[4]} elements")
        previous = scan.storages.get(pid[2])
        record = StorageRecord(pid[1].name, pid[4])
        if previous is not None and previous != record:
            raise ValueError(f"storage {pid[2]!r} is declared twice, differently")
        scan.storages[pid[2]] = record
        return _StorageRef(pid[2])
    raise ValueError(f"unexpected persistent id {pid!r:.80}")


def _call(func: object, args: object, scan: PickleScan) -> object:
    if isinstance(func, _Global) and func.name in _TENSOR_REBUILDERS and isinstance(args, tuple):
        scan.tensors.append(_tensor_record(func.name, args))
    return _Call(func, args)


def _int_tuple(value: object) -> tuple[int, ...] | None:
    if isinstance(value, tuple) and all(
        isinstance(v, int) and not isinstance(v, bool) for v in value
    ):
        return value
    return None


def _tensor_record(rebuilder: str, args: tuple[Any, ...]) -> TensorRecord:
    # _rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks[, metadata])
    # _rebuild_tensor_v3(storage, offset, size, stride, requires_grad, hooks, dtype[, metadata])
    if len(args) < 4 or not isinstance(args[0], _StorageRef):
        raise ValueError("a tensor is rebuilt from something that is not a storage")
    offset, size, stride = args[1], _int_tuple(args[2]), _int_tuple(args[3])
    if not isinstance(offset, int) or size is None or stride is None or len(size) != len(stride):
        raise ValueError(f"tensor on storage {args[0].key!r} has a malformed offset/size/stride")
    dtype = None
    if rebuilder.endswith("_v3"):
        if len(args) < 7 or not isinstance(args[6], _Global):
            raise ValueError("_rebuild_tensor_v3 without a dtype")
        dtype = args[6].name
    return TensorRecord(args[0].key, offset, size, stride, dtype)


# --- what a state_dict pickle may name --------------------------------------------------------

# Exactly what torch.save(model.state_dict()) writes for the dtypes we accept (derived by
# saving state_dicts of float16/bfloat16/float32/float64 models with integer buffers and
# listing their GLOBAL opcodes), all of which torch.load(weights_only=True) also accepts.
_FLOAT_DTYPES = {"float16": 2, "bfloat16": 2, "float32": 4, "float64": 8}
_INT_DTYPES = {"int64": 8, "int32": 4, "int16": 2, "int8": 1, "uint8": 1, "bool": 1}
_STORAGE_ITEMSIZE = {
    "torch.HalfStorage": 2,
    "torch.BFloat16Storage": 2,
    "torch.FloatStorage": 4,
    "torch.DoubleStorage": 8,
    "torch.LongStorage": 8,
    "torch.IntStorage": 4,
    "torch.ShortStorage": 2,
    "torch.CharStorage": 1,
    "torch.ByteStorage": 1,
    "torch.BoolStorage": 1,
    "torch.storage.UntypedStorage": 1,
}
_DTYPE_ITEMSIZE = {f"torch.{k}": v for k, v in (_FLOAT_DTYPES | _INT_DTYPES).items()}
ALLOWED_STATE_DICT_GLOBALS = frozenset(
    {
        "collections.OrderedDict",
        "torch._utils._rebuild_tensor_v2",
        "torch._utils._rebuild_tensor_v3",
        "torch._utils._rebuild_parameter",
    }
    | set(_STORAGE_ITEMSIZE)
    | set(_DTYPE_ITEMSIZE)
)
# torch's own tensor kinds we do not take: refused as unsupported, not as unsafe.
_UNSUPPORTED_TENSOR_GLOBALS = re.compile(
    r"^torch\.(Complex\w*Storage|Q\w*Storage|complex\w*|q\w*int\w*|float8\w*|uint(16|32|64)"
    r"|per_\w+|_utils\._rebuild_(qtensor|sparse\w*|meta\w*|wrapper_subclass|nested\w*)"
    r"|serialization\._get_layout|Size|sparse_\w+)$"
)
SEND_INSTEAD = (
    "send a state_dict (torch.save(model.state_dict())) with the spec's architecture, a "
    "safetensors file, or a TorchScript archive (torch.jit.save(torch.jit.script(model)))"
)


def _check_state_dict_globals(found: list[str]) -> None:
    outside = [g for g in found if g not in ALLOWED_STATE_DICT_GLOBALS]
    if not outside:
        return
    listed = ", ".join(outside)
    if all(_UNSUPPORTED_TENSOR_GLOBALS.match(g) for g in outside):
        raise _invalid(
            f"the state_dict holds tensors of a kind we do not prune (complex, quantized, "
            f"float8, sparse or meta): {listed}; convert them to float32 first",
            JobErrorCode.UNSUPPORTED_MODEL,
        )
    if any(g.startswith("torch.nn.") for g in outside):
        raise _invalid(
            f"the file is a whole pickled model (torch.save(model)), which cannot be loaded "
            f"without running its code; globals found: {listed}. Instead, {SEND_INSTEAD}",
            JobErrorCode.UNSUPPORTED_MODEL,
        )
    raise _invalid(
        f"the pickle names globals outside the tensor allow-list, which loading would "
        f"import and call: {listed}. Instead, {SEND_INSTEAD}",
        JobErrorCode.UNSAFE_MODEL,
    )


def pickle_globals(path: Path) -> list[str]:
    """Globals ("module.name") the ``data.pkl`` of a torch zip archive names, in order; read
    from the opcodes, nothing executed. Raises UploadRejected for a malformed archive."""
    try:
        with zipfile.ZipFile(path) as archive:
            infos = archive.infolist()
            prefix = _archive_prefix(infos)
            info = archive.getinfo(f"{prefix}/data.pkl")
            return _scan_pickle(_read_member(archive, info), "data.pkl").globals
    except (zipfile.BadZipFile, OSError, KeyError) as exc:
        raise _invalid(f"the model file is not a readable zip archive ({exc})") from None


# --- storages and tensors ---------------------------------------------------------------------


def _check_storages(
    storages: dict[str, StorageRecord],
    tensors: list[TensorRecord],
    entries: dict[str, zipfile.ZipInfo],
    prefix: str,
    settings: Settings,
    torchscript: bool,
) -> None:
    if len(tensors) > settings.max_tensors:
        raise _too_large(
            f"the archive holds {len(tensors)} tensors; the limit is {settings.max_tensors} "
            "(PRUNER_MAX_TENSORS)"
        )
    total = 0
    for key, record in storages.items():
        itemsize = _STORAGE_ITEMSIZE.get(record.type_name)
        if itemsize is None:
            if torchscript:  # the state_dict path refused these globals already
                raise _invalid(
                    f"storage {key!r} has type {record.type_name}; only floating point and "
                    "integer tensors are accepted",
                    JobErrorCode.UNSUPPORTED_MODEL,
                )
            continue
        entry = entries.get(f"{prefix}/{key}")
        if entry is None:
            raise _invalid(f"storage {key!r} has no entry {prefix}/{key} in the archive")
        declared = record.numel * itemsize
        if entry.file_size != declared:
            raise _invalid(
                f"storage {key!r} declares {record.numel} x {itemsize} = {declared} bytes "
                f"but its entry {entry.filename!r} holds {entry.file_size}"
            )
        total += record.numel if record.type_name != "torch.storage.UntypedStorage" else 0
    for tensor in tensors:
        total += _check_tensor_extent(tensor, storages, settings)
    if total > settings.max_parameters:
        raise _too_large(
            f"the archive holds {total} tensor elements; the limit is "
            f"{settings.max_parameters} (PRUNER_MAX_PARAMETERS)"
        )


def _check_tensor_extent(
    tensor: TensorRecord, storages: dict[str, StorageRecord], settings: Settings
) -> int:
    """Check one tensor's view against its storage; return elements counted for the total
    (only views on untyped storages, whose storage numel is in bytes)."""
    record = storages.get(tensor.key)
    if record is None:
        raise _invalid(f"a tensor refers to storage {tensor.key!r}, which is not declared")
    numel = math.prod(tensor.size)
    if any(s < 0 for s in tensor.size) or any(s < 0 for s in tensor.stride) or tensor.offset < 0:
        raise _invalid(f"a tensor on storage {tensor.key!r} has a negative size/stride/offset")
    if numel > settings.max_tensor_elements:
        raise _too_large(
            f"a tensor on storage {tensor.key!r} declares shape {list(tensor.size)} = {numel} "
            f"elements; the limit is {settings.max_tensor_elements} "
            "(PRUNER_MAX_TENSOR_ELEMENTS)"
        )
    storage_itemsize = _STORAGE_ITEMSIZE.get(record.type_name)
    itemsize = _DTYPE_ITEMSIZE.get(tensor.dtype or "", storage_itemsize)
    if storage_itemsize is None or itemsize is None:
        raise _invalid(
            f"the tensor on storage {tensor.key!r} has dtype {tensor.dtype or record.type_name}; "
            "only floating point and integer tensors are accepted",
            JobErrorCode.UNSUPPORTED_MODEL,
        )
    if numel:
        dims = zip(tensor.size, tensor.stride, strict=True)
        last = tensor.offset + sum((s - 1) * st for s, st in dims)
        if (last + 1) * itemsize > record.numel * storage_itemsize:
            raise _invalid(
                f"a tensor of shape {list(tensor.size)} reaches element {last} of storage "
                f"{tensor.key!r}, which holds {record.numel * storage_itemsize // itemsize}"
            )
    return numel if record.type_name == "torch.storage.UntypedStorage" else 0


# --- safetensors ------------------------------------------------------------------------------

SAFETENSORS_ITEMSIZE = {
    "F16": 2, "BF16": 2, "F32": 4, "F64": 8,
    "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1,
}  # fmt: skip
# dtypes the safetensors format knows but we do not prune.
_SAFETENSORS_UNSUPPORTED = {"F8_E5M2", "F8_E4M3", "F8_E8M0", "F4", "F6_E2M3", "F6_E3M2",
                            "C64", "C128", "U16", "U32", "U64"}  # fmt: skip


def check_safetensors(path: Path, settings: Settings) -> None:
    """Header of a safetensors file: length, JSON, dtypes, shapes vs offsets, caps."""
    file_size = path.stat().st_size
    with path.open("rb") as f:
        prefix = f.read(8)
        if len(prefix) < 8:
            raise _invalid("the safetensors file is truncated (no header length)")
        (header_len,) = struct.unpack("<Q", prefix)
        if header_len > settings.max_safetensors_header_bytes:
            raise _too_large(
                f"the safetensors header declares {header_len} bytes; the limit is "
                f"{settings.max_safetensors_header_bytes} (PRUNER_MAX_SAFETENSORS_HEADER_BYTES)"
            )
        if 8 + header_len > file_size:
            raise _invalid(
                f"the safetensors file is truncated: its header declares {header_len} bytes "
                f"but the file has {file_size}"
            )
        raw = f.read(header_len)
    header = _parse_header(raw)
    _check_safetensors_entries(header, file_size - 8 - header_len, settings)
    try:  # the compact sparse layout (sparse_safetensors): its pieces must fit together
        check_compact_safetensors(path, raw, settings)
    except CompactRejected as exc:
        raise UploadRejected(exc.status, exc.code, exc.message, exc.job_code) from None


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"key {key!r} appears twice")
        result[key] = value
    return result


def _parse_header(raw: bytes) -> dict[str, Any]:
    try:
        header = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise _invalid(f"the safetensors header is not valid JSON ({exc})") from None
    if not isinstance(header, dict):
        raise _invalid("the safetensors header is not a JSON object")
    metadata = header.pop("__metadata__", {})
    if not isinstance(metadata, dict) or not all(
        isinstance(v, str) for v in metadata.values()
    ):
        raise _invalid("the safetensors __metadata__ must map strings to strings")
    return header


def _check_safetensors_entries(header: dict[str, Any], data_len: int, settings: Settings) -> None:
    if len(header) > settings.max_tensors:
        raise _too_large(
            f"the safetensors file holds {len(header)} tensors; the limit is "
            f"{settings.max_tensors} (PRUNER_MAX_TENSORS)"
        )
    spans: list[tuple[int, int, str]] = []
    total = 0
    for name, entry in header.items():
        begin, end, numel = _safetensors_entry(name, entry, settings)
        if end > data_len:
            raise _invalid(
                f"tensor {name!r} ends at byte {end} of the data, which has {data_len} bytes"
            )
        spans.append((begin, end, name))
        total += numel
    if total > settings.max_parameters:
        raise _too_large(
            f"the safetensors file holds {total} elements; the limit is "
            f"{settings.max_parameters} (PRUNER_MAX_PARAMETERS)"
        )
    spans.sort()
    for (_b1, e1, n1), (b2, _e2, n2) in zip(spans, spans[1:], strict=False):
        if b2 < e1:
            raise _invalid(f"tensors {n1!r} and {n2!r} overlap in the safetensors data")


def _safetensors_entry(name: str, entry: Any, settings: Settings) -> tuple[int, int, int]:
    if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
        raise _invalid(f"tensor {name!r}: expected exactly dtype, shape and data_offsets")
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if dtype in _SAFETENSORS_UNSUPPORTED:
        raise _invalid(
            f"tensor {name!r} has dtype {dtype}; only floating point (F16, BF16, F32, F64) "
            "and integer tensors are accepted",
            JobErrorCode.UNSUPPORTED_MODEL,
        )
    if dtype not in SAFETENSORS_ITEMSIZE:
        raise _invalid(f"tensor {name!r} has unknown dtype {dtype!r}")
    size = _int_tuple(tuple(shape)) if isinstance(shape, list) else None
    if size is None or any(s < 0 for s in size):
        raise _invalid(f"tensor {name!r}: shape must be a list of non-negative integers")
    numel = math.prod(size)
    if numel > settings.max_tensor_elements:
        raise _too_large(
            f"tensor {name!r} declares shape {list(size)} = {numel} elements; the limit is "
            f"{settings.max_tensor_elements} (PRUNER_MAX_TENSOR_ELEMENTS)"
        )
    span = _int_tuple(tuple(offsets)) if isinstance(offsets, list) else None
    if span is None or len(span) != 2 or not 0 <= span[0] <= span[1]:
        raise _invalid(f"tensor {name!r}: data_offsets must be [begin, end] with begin <= end")
    if span[1] - span[0] != numel * SAFETENSORS_ITEMSIZE[dtype]:
        raise _invalid(
            f"tensor {name!r}: shape {list(size)} of {dtype} needs "
            f"{numel * SAFETENSORS_ITEMSIZE[dtype]} bytes but data_offsets span "
            f"{span[1] - span[0]}"
        )
    return span[0], span[1], numel
