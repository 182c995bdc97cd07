"""torch zip archives (torch.save, torch.jit.save and torch.export.save), judged from the
central directory and the pickles' opcodes: entry count, total and per-entry sizes, names,
duplicates, encryption, compression methods, overlapping entries; then, for a ``.pt2``,
``core.uploads.pt2``; else TorchScript code defining ``__setstate__``, the globals a state_dict
pickle names, its storages and tensors (``core.uploads.storages``).

``zip_format`` is the one answer to "which of the three is this archive?": the door and the
worker's loader both take it from here.
"""

from __future__ import annotations

import re
import struct
import zipfile
import zlib
from collections.abc import Collection
from pathlib import Path, PurePosixPath

from core.jobs.formats import ModelFormat
from core.settings import MiB, Settings
from core.uploads.allowlists import check_state_dict_globals
from core.uploads.pickle_scan import scan_pickle
from core.uploads.pt2 import check_pt2, is_pt2
from core.uploads.rejection import UploadRejected, malformed, too_large, unsafe
from core.uploads.storages import check_storages

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

_ALLOWED_COMPRESSION = (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED)
# What zipfile raises on corrupt archives: bad headers and CRCs, broken deflate streams...
_READ_ERRORS = (
    zipfile.BadZipFile, zlib.error, OSError, ValueError, EOFError, NotImplementedError,
    RuntimeError,
)


def zip_format(names: Collection[str], prefix: str) -> ModelFormat:
    """pt2 when the archive has the records torch.export.load reads (``core.uploads.pt2``);
    TorchScript when it has those torch.jit.load reads (``constants.pkl`` or ``code/`` right
    under the archive's one top-level folder), else a torch.save state_dict. Entries anywhere
    else are never read by any of the loaders."""
    if is_pt2(names, prefix):
        return ModelFormat.PT2
    torchscript = f"{prefix}/constants.pkl" in names or any(
        n.startswith(f"{prefix}/code/") for n in names
    )
    return ModelFormat.TORCHSCRIPT if torchscript else ModelFormat.STATE_DICT


def check_zip(path: Path, settings: Settings) -> ModelFormat:
    """Structure of a torch.save / torch.jit.save / torch.export.save archive, then its
    contents; returns which of the three it is."""
    declared = _declared_entry_count(path)
    if declared is not None and declared > settings.max_archive_entries:
        # Refused before zipfile builds an object per entry (millions fit in an upload).
        raise _too_many_entries(declared, settings)
    try:
        archive = zipfile.ZipFile(path)
    except _READ_ERRORS as exc:
        raise malformed(f"the model file is not a readable zip archive ({exc})") from None
    with archive:
        infos = archive.infolist()
        check_entries(infos, settings)
        prefix = single_prefix(infos)
        names = {i.filename: i for i in infos}
        fmt = zip_format(names, prefix)
        if fmt is ModelFormat.PT2:
            check_pt2(archive, names, prefix, settings)
            return fmt
        _check_data_pkl(names, prefix)
        # Whatever the format: code anywhere in the archive is scanned, so no layout can
        # slip a load-time hook past a check that depends on how the archive looks.
        _check_no_load_hooks(archive, infos)
        _check_pickles(archive, names, prefix, settings, fmt)
    return fmt


def _check_pickles(
    archive: zipfile.ZipFile,
    names: dict[str, zipfile.ZipInfo],
    prefix: str,
    settings: Settings,
    fmt: ModelFormat,
) -> None:
    scan = scan_pickle(read_member(archive, names[f"{prefix}/data.pkl"]), "data.pkl")
    if fmt is ModelFormat.STATE_DICT:
        check_state_dict_globals(scan.globals)
    storages = {f"data/{k}": v for k, v in scan.storages.items()}
    tensors = [t._replace(key=f"data/{t.key}") for t in scan.tensors]
    # TorchScript keeps constant tensors in a pickle of their own, with their storages in
    # constants/. (traced_inputs.pkl, whose storages torch writes empty, is not loaded.)
    if f"{prefix}/constants.pkl" in names:
        info = names[f"{prefix}/constants.pkl"]
        extra = scan_pickle(read_member(archive, info), "constants.pkl")
        storages |= {f"constants/{k}": v for k, v in extra.storages.items()}
        tensors += [t._replace(key=f"constants/{t.key}") for t in extra.tensors]
    torchscript = fmt is ModelFormat.TORCHSCRIPT
    check_storages(storages, tensors, names, prefix, settings, torchscript)


def pickle_globals(path: Path) -> list[str]:
    """Globals ("module.name") the ``data.pkl`` of a torch zip archive names, in order; read
    from the opcodes, nothing executed. Raises UploadRejected for a malformed archive."""
    try:
        with zipfile.ZipFile(path) as archive:
            infos = archive.infolist()
            prefix = single_prefix(infos)
            _check_data_pkl({i.filename: i for i in infos}, prefix)
            info = archive.getinfo(f"{prefix}/data.pkl")
            return scan_pickle(read_member(archive, info), "data.pkl").globals
    except (zipfile.BadZipFile, OSError, KeyError) as exc:
        raise malformed(f"the model file is not a readable zip archive ({exc})") from None


def _too_many_entries(count: int, settings: Settings) -> UploadRejected:
    return too_large(
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


def check_entries(infos: list[zipfile.ZipInfo], settings: Settings) -> None:
    """Count, names, duplicates, encryption, compression, ratio, total size, overlaps."""
    if len(infos) > settings.max_archive_entries:
        raise _too_many_entries(len(infos), settings)
    seen: set[str] = set()
    total = 0
    for info in infos:
        name = info.filename
        _check_entry_name(name)
        if name in seen:
            raise malformed(f"the zip archive holds the entry {name!r} twice")
        seen.add(name)
        if info.flag_bits & 0x1:
            raise malformed(f"the zip entry {name!r} is encrypted")
        if info.compress_type not in _ALLOWED_COMPRESSION:
            raise malformed(
                f"the zip entry {name!r} uses compression method {info.compress_type}; "
                "only stored (0) and deflate (8) are accepted"
            )
        total += info.file_size
        ratio = info.file_size / max(info.compress_size, 1)
        if info.file_size >= RATIO_CHECK_MIN_BYTES and ratio > settings.max_compression_ratio:
            raise too_large(
                f"the zip entry {name!r} expands {ratio:.0f}x ({info.compress_size} -> "
                f"{info.file_size} bytes); the limit is {settings.max_compression_ratio:g}x "
                "(PRUNER_MAX_COMPRESSION_RATIO)"
            )
    if total > settings.max_uncompressed_bytes:
        raise too_large(
            f"the zip archive declares {total} uncompressed bytes; the limit is "
            f"{settings.max_uncompressed_bytes} (PRUNER_MAX_UNCOMPRESSED_BYTES)"
        )
    _check_no_overlaps(infos)


def _check_no_overlaps(infos: list[zipfile.ZipInfo]) -> None:
    """Each entry's local header and data end before the next entry starts: overlapping
    entries (one compressed stream read through many names) are how the densest zip bombs
    get past per-entry ratios. 30 bytes + the name is the smallest local header."""
    ordered = sorted(infos, key=lambda i: i.header_offset)
    for this, following in zip(ordered, ordered[1:], strict=False):
        end = this.header_offset + 30 + len(this.orig_filename.encode()) + this.compress_size
        if end > following.header_offset:
            raise malformed(
                f"the zip entries {this.filename!r} and {following.filename!r} overlap"
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
        raise malformed(
            f"the zip entry name {name!r} is absolute, climbs out with '..', or holds a "
            "backslash or NUL"
        )


def single_prefix(infos: list[zipfile.ZipInfo]) -> str:
    """torch archives keep everything under one top-level folder."""
    prefixes = {i.filename.split("/", 1)[0] for i in infos}
    if len(prefixes) != 1 or not all("/" in i.filename for i in infos):
        raise malformed(
            "the zip archive is not a torch.save, torch.jit.save or torch.export.save "
            "archive (expected one top-level folder holding data.pkl or models/)"
        )
    return prefixes.pop()


def _check_data_pkl(names: Collection[str], prefix: str) -> None:
    if f"{prefix}/data.pkl" not in names:
        raise malformed(f"the zip archive has no {prefix}/data.pkl")


def read_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> bytes:
    """A pickle entry, whole, within ``MAX_PICKLE_BYTES``."""
    if info.file_size > MAX_PICKLE_BYTES:
        raise too_large(
            f"the zip entry {info.filename!r} has {info.file_size} bytes; pickles over "
            f"{MAX_PICKLE_BYTES} bytes are refused"
        )
    try:
        with archive.open(info) as f:
            data = f.read(MAX_PICKLE_BYTES + 1)
    except _READ_ERRORS as exc:
        raise malformed(f"the zip entry {info.filename!r} cannot be read ({exc})") from None
    if len(data) != info.file_size:
        raise malformed(f"the zip entry {info.filename!r} is not the size it declares")
    return data


_SETSTATE = re.compile(rb"__setstate__")


def _is_code(name: str) -> bool:
    """TorchScript source: an entry under a ``code/`` folder, at any depth (debug pickles,
    which quote the author's source, excepted)."""
    return "code" in PurePosixPath(name).parts[:-1] and not name.endswith(".debug_pkl")


def _check_no_load_hooks(archive: zipfile.ZipFile, infos: list[zipfile.ZipInfo]) -> None:
    """torch.jit.load calls the ``__setstate__`` of every scripted object it unpickles, so
    such code would run before audit_torchscript could see it: refuse any archive whose
    TorchScript source (the ``code/`` entries torch.jit.load compiles) defines it; ordinary
    nn.Module code never does."""
    code = [i for i in infos if _is_code(i.filename)]
    total = sum(i.file_size for i in code)
    if total > MAX_CODE_BYTES:
        raise too_large(
            f"the TorchScript archive holds {total} bytes of code; at most {MAX_CODE_BYTES} "
            "are accepted"
        )
    for info in code:
        try:
            with archive.open(info) as f:
                data = f.read(MAX_CODE_BYTES + 1)
        except _READ_ERRORS as exc:
            raise malformed(f"the zip entry {info.filename!r} cannot be read ({exc})") from None
        if _SETSTATE.search(data):
            raise unsafe(
                f"the TorchScript archive defines __setstate__ (in {info.filename!r}); "
                "torch.jit.load would run it while loading, before any audit, so such "
                "archives are refused. Script the model without custom __getstate__/"
                "__setstate__, or send a state_dict or safetensors file."
            )
