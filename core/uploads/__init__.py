"""Checks of an upload that need no torch: run by the API at the door and again by the worker
before any deserialisation. Judged from the zip central directory, the raw bytes and the
pickle *opcodes* (listed, never executed):

- ``check``: the front, ``check_upload``: size, container, then one of
- ``archive``: torch zip archives: ``zip_format``, the one "TorchScript, state_dict or .pt2?"
  sniffer, TorchScript code that defines ``__setstate__`` (``torch.jit.load`` runs it while
  loading, before any audit), the pickles, and ``.pt2`` handed to ``pt2``;
- ``zip_entries``: zip structure (entry count, sizes, compression ratio, names, duplicates,
  encryption, compression methods, overlaps, the one top-level folder), bounded reads;
- ``pt2``: ``.pt2`` (torch.export) members, records, raw-bytes payloads, sample inputs;
  ``pt2_program`` its program JSON, ``pt2_ops`` the operator allow-list;
- ``pickle_scan``: the symbolic opcode walk (globals, storages, tensors);
- ``allowlists``: the accepted dtypes (one list) and the globals a state_dict may name;
- ``storages``: each storage's declared size against its entry, each tensor's view against
  its storage, tensor and element caps;
- ``safetensors_header``: header length, JSON, dtypes, shapes vs offsets, overlaps, caps;
- ``compact``: the compact layout (``sparse_safetensors``, bitmask + values) holds together;
- ``compressed``: the compressed download (``.prz``): header, caps, stream sizes and zstd
  frame headers, judged before anything is decompressed.

A refusal is an ``UploadRejected`` with a ``RejectKind``: the API maps kinds to HTTP statuses
(``service/errors.py``), the worker to ``JobErrorCode`` (``RejectKind.job_code``).
"""

from core.uploads.check import check_upload
from core.uploads.rejection import RejectKind, UploadRejected

__all__ = ["RejectKind", "UploadRejected", "check_upload"]
