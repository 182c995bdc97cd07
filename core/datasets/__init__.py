"""Datasets as tenant resources, in core's terms (no numpy, no torch):

- ``record``: ids, the built-in names, what the checks found (``DatasetInfo``), the stored
  record and what the API shows;
- ``check``: the front, ``check_dataset``: size, container, then
- ``safetensors_file`` / ``npz_file``: each container's arrays from headers alone (npz
  parsed as a zip of ``.npy`` with the standard library; object arrays refused);
- ``rules``: names, dtypes, shapes, label range, split codes, mean and std;
- ``store``: the records in the job store's database, with quota and idempotency.

A refusal is a ``DatasetRejected`` (an ``UploadRejected``) whose ``field`` names the array.
"""

from core.datasets.arrays import DatasetRejected
from core.datasets.check import check_dataset

__all__ = ["DatasetRejected", "check_dataset"]
