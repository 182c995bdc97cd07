"""Physical channel removal (``pruning.shrink``): analyse, plan, rewrite.

``rules`` follows channel groups op by op, read from a TorchScript graph (``graph``) or an
exported program's FX graph (``fx_graph``); ``plan`` picks the channels to
keep, ``rewrite`` slices tensors into a smaller module, ``stage`` is the pipeline's step.
"""

from worker.engine.shrink.stage import Prepared, Shrunk, prepare

__all__ = ["Prepared", "Shrunk", "prepare"]
