"""``.pt2`` (torch.export) in and out.

In: the archive has passed ``core.uploads.pt2`` (in the API and again in this job process,
``loading._checked_format``) before ``torch.export.load`` reads it; the program's
``module()`` (an ``fx.GraphModule``) is what the job prunes, fine-tunes and evaluates. Its
submodules are plain holders of parameters, so each is labelled with the layer class it was
exported from (``nn_module_stack``) for the default targets (``pruning.layer_kind``).

Out: the pruned module (from any input format; TorchScript through torch's converter)
re-exported with a dynamic batch dimension from an MNIST-shaped example ((2, 1, 28, 28), else
(2, 784)), then ``torch.export.save``.
"""

from __future__ import annotations

import types
import warnings
from pathlib import Path

import torch
from torch import nn

from core.jobs.error_codes import JobErrorCode
from core.settings import Settings
from worker.engine import audit
from worker.engine.errors import EngineError
from worker.engine.script_copy import reloaded

EXPORTED_KIND = "exported_kind"  # the attribute layer_kind reads on a GraphModule's holders
_EXAMPLES = ((2, 1, 28, 28), (2, 784))


def load_exported(path: Path, settings: Settings) -> torch.fx.GraphModule:
    """The checked program's module on the CPU, or EngineError(invalid_model)."""
    try:
        with path.open("rb") as f:  # a file object: torch warns about names without .pt2
            program = torch.export.load(f)
        module = program.module()
    except Exception as exc:  # torch raises many kinds for archives it cannot rebuild
        raise EngineError(
            JobErrorCode.INVALID_MODEL, f"not a loadable torch.export program: {exc}"
        ) from exc
    if not isinstance(module, torch.fx.GraphModule):
        raise EngineError(JobErrorCode.INVALID_MODEL, "the exported program has no module")
    _label_layers(module)
    _switchable(module)
    audit.check_tensors(dict(module.state_dict()), settings)
    return module


def module_kinds(module: torch.fx.GraphModule) -> dict[str, str]:
    """Module path -> the class it was exported from ("Conv2d"), from ``nn_module_stack``."""
    kinds: dict[str, str] = {}
    for node in module.graph.nodes:
        for path, type_name in (node.meta.get("nn_module_stack") or {}).values():
            kinds[str(path)] = str(type_name).rsplit(".", 1)[-1]
    return kinds


def _label_layers(module: torch.fx.GraphModule) -> None:
    kinds = module_kinds(module)
    for name, sub in module.named_modules():
        if name in kinds and type(sub) is nn.Module:
            setattr(sub, EXPORTED_KIND, kinds[name])


def _switchable(module: torch.fx.GraphModule) -> None:
    """torch makes an exported module's train()/eval() raise; here they set the flags and
    the graph's own mode arguments (BatchNorm's and dropout's ``training``), so fine-tuning
    updates BatchNorm statistics and evaluation does not, as for any nn.Module."""

    def train(self: torch.fx.GraphModule, mode: bool = True) -> torch.fx.GraphModule:
        nn.Module.train(self, mode)
        _set_mode_arguments(self, mode)
        return self

    def eval_(self: torch.fx.GraphModule) -> torch.fx.GraphModule:
        return train(self, False)

    module.train = types.MethodType(train, module)  # type: ignore[method-assign]
    module.eval = types.MethodType(eval_, module)  # type: ignore[method-assign]


_MODE_ARGUMENT = {  # op -> index of its `training` argument
    torch.ops.aten.batch_norm.default: 5,
    torch.ops.aten.dropout.default: 2,
}


def _set_mode_arguments(module: torch.fx.GraphModule, mode: bool) -> None:
    changed = False
    for node in module.graph.nodes:
        index = _MODE_ARGUMENT.get(node.target)
        if index is not None and len(node.args) > index and node.args[index] is not mode:
            node.update_arg(index, mode)
            changed = True
    if changed:
        module.recompile()


def save_exported(module: nn.Module, path: Path) -> None:
    """torch.export.save of ``module``: an nn.Module, an exported program's module, or a
    (checked) TorchScript module, converted by torch's TorchScript-to-export converter first.
    Raises EngineError(unsupported_model) when torch cannot export it."""
    try:
        if isinstance(module, torch.jit.ScriptModule):
            module = _from_torchscript(module)
        program = _export(module)
    except ValueError as exc:
        raise EngineError(
            JobErrorCode.UNSUPPORTED_MODEL, f"the model cannot be saved as .pt2: {exc}"
        ) from exc
    torch.export.save(program, str(path))


def _from_torchscript(module: torch.jit.ScriptModule) -> nn.Module:
    """torch._export.converter (experimental in torch 2.14) turns the TorchScript graph into
    an exported program; its module is then re-exported like any other, with a dynamic batch
    and no guard code (the converter's own program carries guards_code, which our door
    refuses)."""
    from torch._export.converter import TS2EPConverter

    failures = []
    for shape in _EXAMPLES:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                # a copy: the converter inlines the graphs it is given, in place
                program = TS2EPConverter(reloaded(module), (torch.zeros(shape),)).convert()
            converted: nn.Module = program.module()
            return converted
        except Exception as exc:  # noqa: BLE001 - the next example shape may fit
            failures.append(f"{list(shape)}: {exc}")
    raise ValueError("the TorchScript module does not convert to torch.export: "
                     + "; ".join(failures))


def _export(module: nn.Module) -> torch.export.ExportedProgram:
    failures = []
    device = next((p.device for p in module.parameters()), torch.device("cpu"))
    for shape in _EXAMPLES:
        example = torch.zeros(shape, device=device)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return torch.export.export(
                    module, (example,), dynamic_shapes=({0: torch.export.Dim("batch")},)
                )
        except Exception as exc:  # noqa: BLE001 - the next example shape may fit
            failures.append(f"{list(shape)}: {exc}")
    raise ValueError("torch.export.export failed for " + "; ".join(failures))
