"""A hostile ``.pt2`` corpus, built in the test run: a real ``torch.export.save`` archive of a
small MNIST model, then tampered member by member. Plain functions ``(directory, canary) ->
path``; each payload would overwrite the canary if anything ran it (docs/security.md lists
the cases)."""

from __future__ import annotations

import io
import json
import pickle
import tempfile
import zipfile
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

import torch
from torch import nn

from api_tests.security.hostile import _Exec

Json = dict[str, Any]
Edit = Callable[[Json], None]
PREFIX = "model"  # torch.export.save names the archive's folder after the file's stem


class TinyNet(nn.Module):
    """(N, 1, 28, 28) -> (N, 10): the smallest model that keeps the MNIST contract."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(784, 16)
        self.fc2 = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.fc2(torch.relu(self.fc1(torch.flatten(x, 1))))
        return out


def export_file(module: nn.Module, path: Path) -> Path:
    """torch.export.save of ``module`` with a dynamic batch (the way docs/api.md says)."""
    batch = torch.export.Dim("batch")
    program = torch.export.export(module.eval(), (torch.zeros(2, 1, 28, 28),),
                                  dynamic_shapes=({0: batch},))
    torch.export.save(program, str(path))
    return path


@cache
def _good_bytes() -> bytes:
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as folder:
        return export_file(TinyNet(), Path(folder) / f"{PREFIX}.pt2").read_bytes()


def good_pt2(directory: Path, canary: Path | None = None) -> Path:
    """The untampered archive (exported once per test session)."""
    path = directory / "good.pt2"
    path.write_bytes(_good_bytes())
    return path


def tamper(
    directory: Path, name: str, *, program: Edit | None = None, weights: Edit | None = None,
    constants: Edit | None = None, replace: dict[str, bytes] | None = None,
    add: dict[str, bytes] | None = None,
) -> Path:
    """A copy of the good archive with JSON members edited and raw members replaced or added
    (names relative to the archive's folder)."""
    edits = {"models/model.json": program, "data/weights/model_weights_config.json": weights,
             "data/constants/model_constants_config.json": constants}
    path = directory / name
    with zipfile.ZipFile(good_pt2(directory)) as zin, zipfile.ZipFile(path, "w") as zout:
        for info in zin.infolist():
            member = info.filename[len(PREFIX) + 1:]
            data = zin.read(info)
            edit = edits.get(member)
            if edit is not None:
                loaded = json.loads(data)
                edit(loaded)
                data = json.dumps(loaded).encode()
            zout.writestr(info, (replace or {}).get(member, data))
        for member, data in (add or {}).items():
            zout.writestr(f"{PREFIX}/{member}", data)
    return path


def canary_payload(canary: Path) -> bytes:
    """A plain pickle that overwrites the canary when unpickled (torch.load with
    weights_only=False falls back to plain unpickling for non-zip bytes)."""
    return pickle.dumps(_Exec(f"open({str(canary)!r}, 'w').write('pwned')"), protocol=2)


def torch_save_payload(canary: Path) -> bytes:
    """A torch.save-shaped zip whose data.pkl overwrites the canary."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as z:
        z.writestr("archive/data.pkl", canary_payload(canary))
        z.writestr("archive/byteorder", "little")
        z.writestr("archive/version", "3\n")
    return buffer.getvalue()


def _first(config: Json) -> Json:
    entry: Json = next(iter(config["config"].values()))
    return entry


def _nodes(program: Json) -> list[Json]:
    nodes: list[Json] = program["graph_module"]["graph"]["nodes"]
    return nodes


# --- the corpus ---------------------------------------------------------------------------------


def pickled_weight(directory: Path, canary: Path) -> Path:
    """A weight stored with use_pickle: true, its member a __reduce__ payload."""
    return tamper(directory, "pickled_weight.pt2",
                  weights=lambda c: _first(c).update(use_pickle=True),
                  replace={"data/weights/weight_0": canary_payload(canary)})


def pickled_sample_inputs(directory: Path, canary: Path) -> Path:
    """Sample inputs that fail weights_only=True, so torch retries with weights_only=False."""
    return tamper(directory, "pickled_inputs.pt2",
                  replace={"data/sample_inputs/model.pt": torch_save_payload(canary)})


def _object_constant(prefix: str) -> Edit:
    def edit(config: Json) -> None:
        config["config"]["obj"] = {"path_name": f"{prefix}0", "is_param": False,
                                   "use_pickle": False, "tensor_meta": None}
    return edit


def custom_obj_constant(directory: Path, canary: Path) -> Path:
    """A custom (torchbind) object constant: torch._C._pickle_load_obj of its bytes."""
    return tamper(directory, "custom_obj.pt2", constants=_object_constant("custom_obj_"),
                  add={"data/constants/custom_obj_0": canary_payload(canary)})


def opaque_obj_constant(directory: Path, canary: Path) -> Path:
    """An opaque object constant: pickle.loads of its bytes."""
    return tamper(directory, "opaque_obj.pt2", constants=_object_constant("opaque_obj_"),
                  add={"data/constants/opaque_obj_0": canary_payload(canary)})


def pickled_tensor_constant(directory: Path, canary: Path) -> Path:
    """A tensor constant stored with use_pickle: true."""
    def edit(config: Json) -> None:
        config["config"]["lifted_tensor_0"] = {"path_name": "tensor_0", "is_param": False,
                                               "use_pickle": True, "tensor_meta": None}
    return tamper(directory, "pickled_constant.pt2", constants=edit,
                  add={"data/constants/tensor_0": canary_payload(canary)})


def _retarget(target: str) -> Edit:
    def edit(program: Json) -> None:
        _nodes(program)[0]["target"] = target
    return edit


def custom_op(directory: Path, canary: Path) -> Path:
    return tamper(directory, "custom_op.pt2", program=_retarget("torch.ops.evil.run.default"))


def aten_op_off_the_list(directory: Path, canary: Path) -> Path:
    return tamper(directory, "from_file.pt2",
                  program=_retarget("torch.ops.aten.from_file.default"))


def higher_order_op(directory: Path, canary: Path) -> Path:
    return tamper(directory, "hop.pt2", program=_retarget("torch.ops.higher_order.cond"))


def python_callable(directory: Path, canary: Path) -> Path:
    return tamper(directory, "callable.pt2", program=_retarget("builtins.exec"))


def subgraph_argument(directory: Path, canary: Path) -> Path:
    def edit(program: Json) -> None:
        _nodes(program)[0]["inputs"].append(
            {"name": "g", "arg": {"as_graph": {"name": "true_graph_0", "graph": {}}}, "kind": 1})
    return tamper(directory, "subgraph.pt2", program=edit)


def guards_code(directory: Path, canary: Path) -> Path:
    code = f"open({str(canary)!r}, 'w').write('pwned')"
    return tamper(directory, "guards.pt2", program=lambda p: p.update(guards_code=[code]))


def sympy_expression(directory: Path, canary: Path) -> Path:
    """A tensor size whose expression sympy.sympify would eval."""
    code = f"__import__('builtins').exec(\"open({str(canary)!r}, 'w').write('pwned')\")"

    def edit(program: Json) -> None:
        values = program["graph_module"]["graph"]["tensor_values"]
        values["x"]["sizes"][0] = {"as_expr": {"expr_str": code, "hint": {"as_int": 2}}}
    return tamper(directory, "sympy.pt2", program=edit)


def wrong_schema_version(directory: Path, canary: Path) -> Path:
    return tamper(directory, "schema.pt2",
                  program=lambda p: p.update(schema_version={"major": 9, "minor": 0}))


def short_weight(directory: Path, canary: Path) -> Path:
    """weight_0's member four bytes short of what its shape and dtype need."""
    with zipfile.ZipFile(good_pt2(directory)) as z:
        data = z.read(f"{PREFIX}/data/weights/weight_0")
    return tamper(directory, "short.pt2", replace={"data/weights/weight_0": data[:-4]})


def oversized_view(directory: Path, canary: Path) -> Path:
    """A shape that reaches far past its bytes (torch would build it with as_strided)."""
    return tamper(directory, "view.pt2", weights=lambda c: _first(c)["tensor_meta"].update(
        sizes=[{"as_int": 100_000}, {"as_int": 784}]))


def complex_weight(directory: Path, canary: Path) -> Path:
    return tamper(directory, "complex.pt2",
                  weights=lambda c: _first(c)["tensor_meta"].update(dtype=10))


def aoti_member(directory: Path, canary: Path) -> Path:
    return tamper(directory, "aoti.pt2", add={"data/aotinductor/model/model.so": b"\x7fELF"})


def zip_bomb(directory: Path, canary: Path) -> Path:
    """16 MiB of zeros deflated ~1000x into one more weight member."""
    path = tamper(directory, "bomb.pt2")
    with zipfile.ZipFile(path, "a") as z:
        z.writestr(f"{PREFIX}/data/weights/weight_99", bytes(16 << 20),
                   compress_type=zipfile.ZIP_DEFLATED)
    return path


def traversal(directory: Path, canary: Path) -> Path:
    path = tamper(directory, "traversal.pt2")
    with zipfile.ZipFile(path, "a") as z:
        z.writestr(f"{PREFIX}/../../{canary.name}", b"pwned")
    return path


# name -> (factory, reject kind, a fragment of the message)
CORPUS: dict[str, tuple[Callable[[Path, Path], Path], str, str]] = {
    "pickled_weight": (pickled_weight, "unsafe", "use_pickle: true"),
    "pickled_sample_inputs": (pickled_sample_inputs, "unsafe", "allow-list: __builtin__.exec;"),
    "custom_obj_constant": (custom_obj_constant, "unsafe", "'data/constants/custom_obj_0'"),
    "opaque_obj_constant": (opaque_obj_constant, "unsafe", "'data/constants/opaque_obj_0'"),
    "pickled_tensor_constant": (pickled_tensor_constant, "unsafe", "use_pickle: true"),
    "custom_op": (custom_op, "unsafe", "'torch.ops.evil.run.default', not an ATen op"),
    "aten_op_off_the_list": (aten_op_off_the_list, "unsafe", "outside the allow-list"),
    "higher_order_op": (higher_order_op, "unsafe", "a higher-order op"),
    "python_callable": (python_callable, "unsafe", "'builtins.exec'"),
    "subgraph_argument": (subgraph_argument, "unsafe", "kind 'as_graph'"),
    "guards_code": (guards_code, "unsafe", "guards_code"),
    "sympy_expression": (sympy_expression, "unsafe", "torch would evaluate it"),
    "wrong_schema_version": (wrong_schema_version, "unsupported", "export schema 9.0"),
    "short_weight": (short_weight, "malformed", "the byte length and the dtype/shape"),
    "oversized_view": (oversized_view, "malformed", "the byte length and the dtype/shape"),
    "complex_weight": (complex_weight, "unsupported", "dtype code 10"),
    "aoti_member": (aoti_member, "unsupported", "'data/aotinductor/model/model.so'"),
    "zip_bomb": (zip_bomb, "too_large", "PRUNER_MAX_COMPRESSION_RATIO"),
    "traversal": (traversal, "malformed", "climbs out with '..'"),
}
