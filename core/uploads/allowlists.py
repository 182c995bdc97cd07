"""What an upload may hold: the accepted tensor dtypes (one list, read by the door, the
safetensors check and the worker's tensor audit) and the globals a state_dict pickle may name.
"""

from __future__ import annotations

import re
from typing import Final, NamedTuple

from core.uploads.rejection import unsafe, unsupported


class AcceptedDtype(NamedTuple):
    name: str  # torch.<name>
    itemsize: int  # bytes per element
    storage: str  # the typed storage class torch.save names for it
    safetensors: str  # its safetensors dtype code
    floating: bool  # a weight dtype; the others are integer buffers (num_batches_tracked)


ACCEPTED_DTYPES: Final = (
    AcceptedDtype("float16", 2, "torch.HalfStorage", "F16", True),
    AcceptedDtype("bfloat16", 2, "torch.BFloat16Storage", "BF16", True),
    AcceptedDtype("float32", 4, "torch.FloatStorage", "F32", True),
    AcceptedDtype("float64", 8, "torch.DoubleStorage", "F64", True),
    AcceptedDtype("int64", 8, "torch.LongStorage", "I64", False),
    AcceptedDtype("int32", 4, "torch.IntStorage", "I32", False),
    AcceptedDtype("int16", 2, "torch.ShortStorage", "I16", False),
    AcceptedDtype("int8", 1, "torch.CharStorage", "I8", False),
    AcceptedDtype("uint8", 1, "torch.ByteStorage", "U8", False),
    AcceptedDtype("bool", 1, "torch.BoolStorage", "BOOL", False),
)
UNTYPED_STORAGE = "torch.storage.UntypedStorage"  # numel counts bytes
# Storage class -> element size (what a torch pickle's persistent ids name).
STORAGE_ITEMSIZE: Final = {d.storage: d.itemsize for d in ACCEPTED_DTYPES} | {UNTYPED_STORAGE: 1}
# "torch.float32" -> element size (what _rebuild_tensor_v3 names).
DTYPE_ITEMSIZE: Final = {f"torch.{d.name}": d.itemsize for d in ACCEPTED_DTYPES}
# safetensors dtype code -> element size.
SAFETENSORS_ITEMSIZE: Final = {d.safetensors: d.itemsize for d in ACCEPTED_DTYPES}
_FLOATING = tuple(d for d in ACCEPTED_DTYPES if d.floating)
FLOAT_DTYPE_NAMES: Final = tuple(d.name for d in _FLOATING)  # "float16", ...
FLOAT_SAFETENSORS_CODES: Final = tuple(d.safetensors for d in _FLOATING)  # "F16", ...

# Exactly what torch.save(model.state_dict()) writes for the dtypes we accept (derived by
# saving state_dicts of float16/bfloat16/float32/float64 models with integer buffers and
# listing their GLOBAL opcodes), all of which torch.load(weights_only=True) also accepts.
ALLOWED_STATE_DICT_GLOBALS: Final = frozenset(
    {
        "collections.OrderedDict",
        "torch._utils._rebuild_tensor_v2",
        "torch._utils._rebuild_tensor_v3",
        "torch._utils._rebuild_parameter",
    }
    | set(STORAGE_ITEMSIZE)
    | set(DTYPE_ITEMSIZE)
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


def check_state_dict_globals(found: list[str]) -> None:
    """Refuse a state_dict pickle naming globals outside the allow-list: as unsupported when
    they are torch tensor kinds or nn modules, as unsafe otherwise."""
    outside = [g for g in found if g not in ALLOWED_STATE_DICT_GLOBALS]
    if not outside:
        return
    listed = ", ".join(outside)
    if all(_UNSUPPORTED_TENSOR_GLOBALS.match(g) for g in outside):
        raise unsupported(
            f"the state_dict holds tensors of a kind we do not prune (complex, quantized, "
            f"float8, sparse or meta): {listed}; convert them to float32 first"
        )
    if any(g.startswith("torch.nn.") for g in outside):
        raise unsupported(
            f"the file is a whole pickled model (torch.save(model)), which cannot be loaded "
            f"without running its code; globals found: {listed}. Instead, {SEND_INSTEAD}"
        )
    raise unsafe(
        f"the pickle names globals outside the tensor allow-list, which loading would "
        f"import and call: {listed}. Instead, {SEND_INSTEAD}"
    )

