"""Model file formats, defined once: what an upload is read as and what a job writes.

``ModelFormat`` names a format; ``FORMAT_FILES`` says, for each, the file it is stored as in a
job's folder, the extension of its download name and the upload container it arrives in.
Adding a format is one member and one row here, plus its writer (``worker/engine/saving.py``)
and, if it can be uploaded, its loader (``worker/engine/loading.py``).
"""

from __future__ import annotations

from enum import StrEnum
from typing import Final, NamedTuple


class UploadFormat(StrEnum):
    """The container an upload arrives in, as the door sniffs it from its first bytes."""

    ZIP = "zip"  # torch.jit.save, torch.save or torch.export.save archive (core.uploads tells)
    SAFETENSORS = "safetensors"
    COMPRESSED = "compressed"  # the compressed layout's magic (core/uploads/compressed.py)


class ModelFormat(StrEnum):
    TORCHSCRIPT = "torchscript"  # torch.jit.save archive: code and weights
    STATE_DICT = "state_dict"  # torch.save(model.state_dict()): weights, loaded weights_only
    SAFETENSORS = "safetensors"  # weights, no pickle at all
    # Compact: non-zero values + a bitmask in safetensors (core/uploads/compact.py)
    SPARSE_SAFETENSORS = "sparse_safetensors"
    # torch.export.save archive: an ExportedProgram (graph JSON + raw weights), checked by
    # core/uploads/pt2.py before torch.export.load ever sees it
    PT2 = "pt2"
    # Deep Compression: sparse structure + codes + codebook/scales, zstd (the NumPy-only
    # reader is client/decode.py; the layout core/uploads/compressed.py)
    COMPRESSED = "compressed"
    # Downloads only (never uploaded, never an output_format): written by the deploy phase
    # when spec.deploy asks for them.
    ONNX = "onnx"  # exported from the eager model, checked in ONNX Runtime
    # onnxruntime.quantization.quantize_dynamic of the ONNX file, kept only when ONNX Runtime
    # runs it faster than the fp32 file (worker/engine/deploy.py)
    ONNX_INT8 = "onnx_int8"
    TORCHAO_INT8 = "torchao_int8"  # torch.save of a torchao int8 state_dict (weights_only)

    @property
    def file_name(self) -> str:
        """File name in the job's folder (never derived from anything a client sends)."""
        return FORMAT_FILES[self].file_name

    @property
    def extension(self) -> str:
        """Extension of the download's file name."""
        return FORMAT_FILES[self].extension

    @property
    def container(self) -> UploadFormat | None:
        """The container an upload in this format arrives in; None: a download only."""
        return FORMAT_FILES[self].container

    @property
    def uploadable(self) -> bool:
        return self.container is not None


class FormatFiles(NamedTuple):
    file_name: str
    extension: str
    container: UploadFormat | None


FORMAT_FILES: Final[dict[ModelFormat, FormatFiles]] = {
    ModelFormat.TORCHSCRIPT: FormatFiles("model.torchscript.pt", "pt", UploadFormat.ZIP),
    ModelFormat.STATE_DICT: FormatFiles("model.state_dict.pt", "pth", UploadFormat.ZIP),
    ModelFormat.SAFETENSORS: FormatFiles("model.safetensors", "safetensors",
                                         UploadFormat.SAFETENSORS),
    ModelFormat.SPARSE_SAFETENSORS: FormatFiles("model.sparse.safetensors", "sparse.safetensors",
                                                UploadFormat.SAFETENSORS),
    ModelFormat.PT2: FormatFiles("model.pt2", "pt2", UploadFormat.ZIP),
    ModelFormat.COMPRESSED: FormatFiles("model.prz", "prz", UploadFormat.COMPRESSED),
    ModelFormat.ONNX: FormatFiles("model.onnx", "onnx", None),
    ModelFormat.ONNX_INT8: FormatFiles("model.int8.onnx", "int8.onnx", None),
    ModelFormat.TORCHAO_INT8: FormatFiles("model.int8.pt", "int8.pt", None),
}

# The spec's output_format also takes "same": the format the model was uploaded in.
SAME_FORMAT: Final = "same"
