"""``.pt2`` archives (``torch.export.save``), judged before ``torch.export.load`` sees them.

``torch.export.load`` (torch 2.14) is not safe on untrusted files: it unpickles weights and
constants whose config says ``use_pickle`` with ``weights_only=False``, unpickles custom and
opaque constants, retries the sample inputs with ``weights_only=False`` after any error,
compiles ``guards_code`` and hands shape expressions to ``sympy.sympify``. So an archive
passes here first, in the API (stdlib only) and again in the job process:

- members: only those ``torch.export.save`` writes for one program named ``model``
  (``_MEMBERS``); custom and opaque constants are refused by name;
- the bookkeeping records say a pt2 archive, little-endian;
- weights and constants configs: every entry raw bytes (``use_pickle: false``), stored under
  ``weight_<n>`` / ``tensor_<n>``, a dtype we accept, a strided CPU layout, and a view that fits
  its member's byte length (aliases of one member share its dtype); the tensor caps;
- the sample inputs: a torch.save archive whose pickle names only the state_dict globals,
  which ``torch.load(weights_only=True)`` accepts, so torch never falls back;
- the program JSON: ``core.uploads.pt2_program``.
Zip-level defences (entry count, sizes, ratio, names, duplicates, encryption, overlaps) are
``core.uploads.zip_entries``'s, run before this (and on the nested sample-inputs archive).
"""

from __future__ import annotations

import io
import json
import math
import re
import zipfile
from collections.abc import Collection
from typing import Any, Final

from core.settings import MiB, Settings
from core.uploads.allowlists import ACCEPTED_DTYPES, ALLOWED_STATE_DICT_GLOBALS
from core.uploads.pickle_scan import scan_pickle
from core.uploads.pt2_program import check_program
from core.uploads.rejection import malformed, too_large, unsafe, unsupported
from core.uploads.zip_entries import READ_ERRORS, check_entries, read_member, single_prefix

MAX_PROGRAM_BYTES: Final = 32 * MiB  # parsed whole in the API: the JSON of ~100k nodes
MAX_CONFIG_BYTES: Final = 16 * MiB  # ~300 bytes per tensor entry
MAX_SAMPLE_INPUTS_BYTES: Final = 16 * MiB
MAX_RECORD_BYTES: Final = 64  # archive_format, byteorder, versions, serialization_id

PROGRAM = "models/model.json"
WEIGHTS_CONFIG = "data/weights/model_weights_config.json"
CONSTANTS_CONFIG = "data/constants/model_constants_config.json"
SAMPLE_INPUTS = "data/sample_inputs/model.pt"
_RECORDS: Final = {  # member -> the content it must have (None: any short text)
    "archive_format": re.compile(r"^pt2$"),
    "archive_version": re.compile(r"^\d+$"),
    "byteorder": re.compile(r"^little$"),
    ".data/version": re.compile(r"^\d+\n?$"),
    ".data/serialization_id": re.compile(r"^\d*$"),
}
_MEMBERS: Final = frozenset({PROGRAM, WEIGHTS_CONFIG, CONSTANTS_CONFIG, SAMPLE_INPUTS}
                            | set(_RECORDS))
_PAYLOAD = re.compile(r"^data/(weights/weight|constants/tensor)_\d+$")
_OBJECT = re.compile(r"(custom_obj|opaque_obj)_")
# torch/_export/serde/schema.py ScalarType -> the accepted dtypes (complex, float8 and the
# unsigned wide ints are absent, so refused).
_SCALAR_TYPES: Final = {1: "uint8", 2: "int8", 3: "int16", 4: "int32", 5: "int64",
                        6: "float16", 7: "float32", 8: "float64", 12: "bool", 13: "bfloat16"}
_ITEMSIZE: Final = {d.name: d.itemsize for d in ACCEPTED_DTYPES}
_STRIDED = 7  # schema.Layout.Strided


def is_pt2(names: Collection[str], prefix: str) -> bool:
    """An archive with the records torch.export.load reads (``archive_format`` or a
    ``models/`` folder right under the archive's one top-level folder)."""
    return f"{prefix}/archive_format" in names or any(
        n.startswith(f"{prefix}/models/") for n in names
    )


def check_pt2(
    archive: zipfile.ZipFile, infos: dict[str, zipfile.ZipInfo], prefix: str,
    settings: Settings,
) -> None:
    """Everything torch.export.load would read, judged as bytes and JSON."""
    members = {name[len(prefix) + 1 :]: info for name, info in infos.items()}
    _check_members(members)
    for record, pattern in _RECORDS.items():
        text = read_member(archive, members[record], MAX_RECORD_BYTES).decode("ascii", "replace")
        if not pattern.match(text):
            raise malformed(f"the member {record!r} says {text[:40]!r}; expected a "
                            "little-endian pt2 archive (torch.export.save)")
    program = _json(archive, members[PROGRAM], MAX_PROGRAM_BYTES)
    check_program(program, PROGRAM)
    total = 0
    count = 0
    for config_name, prefix_name in ((WEIGHTS_CONFIG, "weight"), (CONSTANTS_CONFIG, "tensor")):
        config = _json(archive, members[config_name], MAX_CONFIG_BYTES)
        entries = _config_entries(config, config_name)
        count += len(entries)
        if count > settings.max_tensors:
            raise too_large(f"the archive holds over {settings.max_tensors} tensors "
                            "(PRUNER_MAX_TENSORS)")
        total += _check_payloads(entries, config_name, prefix_name, members, settings)
    if total > settings.max_parameters:
        raise too_large(f"the archive holds {total} tensor elements; the limit is "
                        f"{settings.max_parameters} (PRUNER_MAX_PARAMETERS)")
    _check_sample_inputs(archive, members[SAMPLE_INPUTS], settings)


def _check_members(members: dict[str, zipfile.ZipInfo]) -> None:
    for name in members:
        if name in _MEMBERS or _PAYLOAD.match(name):
            continue
        if _OBJECT.search(name):
            raise unsafe(f"the pt2 member {name!r} is a custom or opaque object, which "
                         "torch.export.load would unpickle; such archives are refused")
        raise unsupported(
            f"the pt2 member {name!r} is not one torch.export.save writes for a single "
            "program named 'model' (AOTInductor packages, extra files and several programs "
            "are not accepted)"
        )
    missing = sorted(m for m in _MEMBERS if m not in members)
    if missing:
        raise malformed(f"the pt2 archive lacks {', '.join(missing)}")


def _json(archive: zipfile.ZipFile, info: zipfile.ZipInfo, limit: int) -> Any:
    try:
        return json.loads(read_member(archive, info, limit))
    except (ValueError, RecursionError) as exc:
        raise malformed(f"the pt2 member {info.filename!r} is not valid JSON ({exc})") from None


def _config_entries(config: Any, name: str) -> dict[str, dict[str, Any]]:
    entries = config.get("config") if isinstance(config, dict) else None
    if not isinstance(entries, dict) or not all(isinstance(e, dict) for e in entries.values()):
        raise malformed(f"the pt2 member {name!r} is not a payload config ({{config: {{...}}}})")
    return entries


def _check_payloads(
    entries: dict[str, dict[str, Any]], config_name: str, kind: str,
    members: dict[str, zipfile.ZipInfo], settings: Settings,
) -> int:
    """Each entry raw bytes that fit its member; returns the element count."""
    total = 0
    dtypes: dict[str, str] = {}
    for fqn, entry in entries.items():
        where = f"{config_name}: {fqn!r}"
        path_name = entry.get("path_name")
        if not isinstance(path_name, str):
            raise malformed(f"{where} has no path_name")
        if _OBJECT.match(path_name):
            raise unsafe(f"{where} is a custom or opaque object ({path_name!r}), which "
                         "torch.export.load would unpickle; such archives are refused")
        if entry.get("use_pickle") is not False:
            raise unsafe(
                f"{where} is stored pickled (use_pickle: true), which torch.export.load "
                "would unpickle with weights_only=False; only raw tensor bytes are accepted "
                "(torch.export.save writes plain tensors that way)"
            )
        member = f"data/{'weights' if kind == 'weight' else 'constants'}/{path_name}"
        if not re.fullmatch(rf"{kind}_\d+", path_name) or member not in members:
            raise malformed(f"{where} names {path_name!r}, which is not a {kind}_<n> member "
                            "of the archive")
        dtype, numel, extent = _tensor_meta(entry.get("tensor_meta"), where)
        if dtypes.setdefault(path_name, dtype) != dtype:
            raise malformed(f"{where} reads {path_name!r} as {dtype}; another entry reads it "
                            f"as {dtypes[path_name]}")
        itemsize = _ITEMSIZE[dtype]
        size = members[member].file_size
        if size % itemsize or extent * itemsize > size:
            raise malformed(
                f"{where} is a {dtype} view reaching {extent * itemsize} bytes into "
                f"{member!r}, which holds {size}; the byte length and the dtype/shape disagree"
            )
        if numel > settings.max_tensor_elements:
            raise too_large(f"{where} has {numel} elements; the limit is "
                            f"{settings.max_tensor_elements} (PRUNER_MAX_TENSOR_ELEMENTS)")
        total += numel
    return total


def _tensor_meta(meta: Any, where: str) -> tuple[str, int, int]:
    """(dtype, element count, elements its view reaches) of a tensor_meta."""
    if not isinstance(meta, dict):
        raise malformed(f"{where} has no tensor_meta")
    dtype = _SCALAR_TYPES.get(meta.get("dtype"))  # type: ignore[arg-type]
    if dtype is None:
        raise unsupported(f"{where} has dtype code {meta.get('dtype')!r}; only float16, "
                          "bfloat16, float32, float64 and integer/bool tensors are accepted")
    if meta.get("layout") != _STRIDED:
        raise unsupported(f"{where} is not a strided (dense) tensor")
    device = meta.get("device")
    if not isinstance(device, dict) or device.get("type") != "cpu":
        raise unsupported(f"{where} lives on {device!r}; export the model on the CPU "
                          "(model.cpu() before torch.export.export)")
    sizes = _ints(meta.get("sizes"), where, "sizes")
    strides = _ints(meta.get("strides"), where, "strides")
    (offset,) = _ints([meta.get("storage_offset")], where, "storage_offset")
    if len(sizes) != len(strides):
        raise malformed(f"{where} has {len(sizes)} sizes but {len(strides)} strides")
    numel = math.prod(sizes)
    reach = sum((n - 1) * s for n, s in zip(sizes, strides, strict=True))
    extent = 0 if numel == 0 else offset + 1 + reach
    return dtype, numel, extent


def _ints(values: Any, where: str, field: str) -> list[int]:
    """Concrete non-negative integers ({"as_int": n}); weights have no symbolic shapes."""
    if not isinstance(values, list):
        raise malformed(f"{where}: {field} is not a list")
    out = []
    for value in values:
        n = value.get("as_int") if isinstance(value, dict) else None
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            raise malformed(f"{where}: {field} holds {value!r}; expected non-negative "
                            "integers")
        out.append(n)
    return out


def _check_sample_inputs(
    archive: zipfile.ZipFile, info: zipfile.ZipInfo, settings: Settings
) -> None:
    """torch loads these with weights_only=True, then weights_only=False if that fails: the
    pickle must be one weights_only accepts, so the fallback never runs."""
    data = read_member(archive, info, MAX_SAMPLE_INPUTS_BYTES)
    if not data:
        return  # torch reads an empty record as "no sample inputs", without unpickling
    try:
        inner = zipfile.ZipFile(io.BytesIO(data))
    except READ_ERRORS as exc:
        raise malformed(f"the pt2 member {SAMPLE_INPUTS!r} is not a torch.save archive "
                        f"({exc})") from None
    with inner:
        infos = inner.infolist()
        check_entries(infos, settings)
        prefix = single_prefix(infos)
        pickled = {i.filename: i for i in infos}.get(f"{prefix}/data.pkl")
        if pickled is None:
            raise malformed(f"the pt2 member {SAMPLE_INPUTS!r} has no data.pkl")
        scan = scan_pickle(read_member(inner, pickled), f"{SAMPLE_INPUTS}/data.pkl")
    outside = [g for g in scan.globals if g not in ALLOWED_STATE_DICT_GLOBALS]
    if outside:
        raise unsafe(
            f"the sample inputs ({SAMPLE_INPUTS}) name globals outside the tensor allow-list: "
            f"{', '.join(outside)}; torch.export.load would retry them with "
            "weights_only=False and call them. Export with tensor example inputs only."
        )
