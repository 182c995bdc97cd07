"""A symbolic walk of a torch pickle's opcodes (``pickletools.genops``, never executed).

It lists the globals the pickle names, the storages it declares (torch's persistent ids) and
the tensors rebuilt on them. Nothing is imported, called or constructed: each opcode has a
handler in ``_HANDLERS`` that moves placeholders on a stack; an opcode without one is refused.
"""

from __future__ import annotations

import pickletools
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from core.uploads.rejection import malformed


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


def scan_pickle(data: bytes, what: str) -> PickleScan:
    """Scan ``data`` (an entry named ``what``); a malformed pickle is refused."""
    try:
        return _run(data)
    except (ValueError, IndexError, KeyError, TypeError, struct.error) as exc:
        raise malformed(f"{what} is not a valid pickle ({type(exc).__name__}: {exc})") from None


# --- placeholders on the symbolic stack ------------------------------------------------------


class _Global(NamedTuple):
    name: str  # "module.qualname"


class _StorageRef(NamedTuple):
    key: str


class _Call(NamedTuple):
    func: object
    args: object


class _Opaque:
    """A value the scan does not model (dicts, lists' contents, built objects)."""


_MARK = object()
_TENSOR_REBUILDERS = ("torch._utils._rebuild_tensor_v2", "torch._utils._rebuild_tensor_v3")


@dataclass
class _Machine:
    scan: PickleScan = field(default_factory=PickleScan)
    stack: list[Any] = field(default_factory=list)
    memo: dict[int, Any] = field(default_factory=dict)

    def push(self, value: object) -> None:
        self.stack.append(value)

    def pop(self) -> Any:
        return self.stack.pop()

    def top(self) -> Any:
        return self.stack[-1]  # IndexError on an empty stack: a malformed pickle

    def pop_mark(self) -> list[Any]:
        stack = self.stack
        i = len(stack) - 1
        while stack[i] is not _MARK:
            i -= 1
        items = stack[i + 1 :]
        del stack[i:]
        return items

    def record_global(self, name: str) -> _Global:
        self.scan.seen_globals[name] = None
        return _Global(name)


def _run(data: bytes) -> PickleScan:
    machine = _Machine()
    for op, arg, _pos in pickletools.genops(data):
        if op.name == "STOP":
            break
        handler = _HANDLERS.get(op.name)
        if handler is None:
            raise ValueError(f"unexpected pickle opcode {op.name}")
        handler(machine, arg)
    return machine.scan


# --- handlers, one per opcode (or family) ----------------------------------------------------

Handler = Callable[[_Machine, Any], None]


def _push_arg(m: _Machine, arg: Any) -> None:
    m.push(arg)


def _push(value: object) -> Handler:
    return lambda m, _arg: m.push(value)


def _push_opaque(m: _Machine, _arg: Any) -> None:
    m.push(_Opaque())


def _ignore(_m: _Machine, _arg: Any) -> None:
    pass


def _mark(m: _Machine, _arg: Any) -> None:
    m.push(_MARK)


def _tuple(m: _Machine, _arg: Any) -> None:
    m.push(tuple(m.pop_mark()))


def _tuple_n(n: int) -> Handler:
    def handler(m: _Machine, _arg: Any) -> None:
        if n > len(m.stack) or any(v is _MARK for v in m.stack[-n:]):
            raise IndexError(f"TUPLE{n} on a short stack")
        top = tuple(m.stack[-n:])
        del m.stack[-n:]
        m.push(top)

    return handler


def _list(m: _Machine, _arg: Any) -> None:
    m.push(m.pop_mark())


def _marked_opaque(m: _Machine, _arg: Any) -> None:
    m.pop_mark()
    m.push(_Opaque())


def _drop_marked(m: _Machine, _arg: Any) -> None:
    m.pop_mark()


def _pop(m: _Machine, _arg: Any) -> None:
    m.pop()


def _obj(m: _Machine, _arg: Any) -> None:
    marked = m.pop_mark()
    if marked and isinstance(marked[0], _Global):
        m.push(_Call(marked[0], tuple(marked[1:])))
    else:
        m.push(_Opaque())


def _appends(m: _Machine, _arg: Any) -> None:
    items = m.pop_mark()
    if isinstance(m.top(), list):
        m.top().extend(items)


def _append(m: _Machine, _arg: Any) -> None:
    value = m.pop()
    if isinstance(m.top(), list):
        m.top().append(value)


def _setitem(m: _Machine, _arg: Any) -> None:
    del m.stack[-2:]
    m.top()  # the dict must exist


def _global(m: _Machine, arg: Any) -> None:
    module, qualname = arg.split(" ", 1)
    m.push(m.record_global(f"{module}.{qualname}"))


def _inst(m: _Machine, arg: Any) -> None:
    module, qualname = arg.split(" ", 1)
    glob = m.record_global(f"{module}.{qualname}")
    m.push(_Call(glob, tuple(m.pop_mark())))


def _stack_global(m: _Machine, _arg: Any) -> None:
    qualname, module = m.pop(), m.pop()
    if not isinstance(module, str) or not isinstance(qualname, str):
        raise TypeError("STACK_GLOBAL needs two strings")
    m.push(m.record_global(f"{module}.{qualname}"))


def _ext(m: _Machine, arg: Any) -> None:
    m.push(m.record_global(f"copyreg extension {arg}"))


def _reduce(m: _Machine, _arg: Any) -> None:
    args, func = m.pop(), m.pop()
    if isinstance(func, _Global) and func.name in _TENSOR_REBUILDERS and isinstance(args, tuple):
        m.scan.tensors.append(_tensor_record(func.name, args))
    m.push(_Call(func, args))


def _newobj_ex(m: _Machine, _arg: Any) -> None:
    _kwargs, args, cls = m.pop(), m.pop(), m.pop()
    m.push(_Call(cls, args))


def _build(m: _Machine, _arg: Any) -> None:
    m.pop()
    m.top()


def _put(m: _Machine, arg: Any) -> None:
    m.memo[int(arg)] = m.top()


def _memoize(m: _Machine, _arg: Any) -> None:
    m.memo[len(m.memo)] = m.top()


def _get(m: _Machine, arg: Any) -> None:
    m.push(m.memo[int(arg)])


def _dup(m: _Machine, _arg: Any) -> None:
    m.push(m.top())


def _binpersid(m: _Machine, _arg: Any) -> None:
    m.push(_persistent(m.pop(), m.scan))


def _persid(_m: _Machine, _arg: Any) -> None:
    raise ValueError("text persistent ids (PERSID) are not used by torch")


def _ops(names: str, handler: Handler) -> dict[str, Handler]:
    return dict.fromkeys(names.split(), handler)


_HANDLERS: dict[str, Handler] = {
    **_ops("INT BININT BININT1 BININT2 LONG LONG1 LONG4 STRING BINSTRING SHORT_BINSTRING "
           "BINBYTES SHORT_BINBYTES BINBYTES8 BYTEARRAY8 UNICODE SHORT_BINUNICODE BINUNICODE "
           "BINUNICODE8 FLOAT BINFLOAT", _push_arg),
    "NONE": _push(None), "NEWTRUE": _push(True), "NEWFALSE": _push(False),
    "EMPTY_TUPLE": _push(()),
    **_ops("EMPTY_DICT EMPTY_LIST EMPTY_SET NEXT_BUFFER", _push_opaque),
    **_ops("PROTO FRAME READONLY_BUFFER", _ignore),
    "MARK": _mark, "TUPLE": _tuple,
    "TUPLE1": _tuple_n(1), "TUPLE2": _tuple_n(2), "TUPLE3": _tuple_n(3),
    "LIST": _list,
    **_ops("DICT FROZENSET", _marked_opaque),
    "OBJ": _obj,
    "APPENDS": _appends,
    **_ops("SETITEMS ADDITEMS", _drop_marked),
    "APPEND": _append,
    "SETITEM": _setitem,
    "GLOBAL": _global, "INST": _inst, "STACK_GLOBAL": _stack_global,
    **_ops("EXT1 EXT2 EXT4", _ext),
    **_ops("REDUCE NEWOBJ", _reduce),
    "NEWOBJ_EX": _newobj_ex,
    "BUILD": _build,
    **_ops("PUT BINPUT LONG_BINPUT", _put),
    "MEMOIZE": _memoize,
    **_ops("GET BINGET LONG_BINGET", _get),
    "POP": _pop, "POP_MARK": _drop_marked,
    "DUP": _dup,
    "BINPERSID": _binpersid,
    "PERSID": _persid,
}  # fmt: skip


# --- torch's records ---------------------------------------------------------------------------


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


def int_tuple(value: object) -> tuple[int, ...] | None:
    """``value`` when it is a tuple of ints (bools excluded), else None."""
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
    offset, size, stride = args[1], int_tuple(args[2]), int_tuple(args[3])
    if not isinstance(offset, int) or size is None or stride is None or len(size) != len(stride):
        raise ValueError(f"tensor on storage {args[0].key!r} has a malformed offset/size/stride")
    dtype = None
    if rebuilder.endswith("_v3"):
        if len(args) < 7 or not isinstance(args[6], _Global):
            raise ValueError("_rebuild_tensor_v3 without a dtype")
        dtype = args[6].name
    return TensorRecord(args[0].key, offset, size, stride, dtype)
