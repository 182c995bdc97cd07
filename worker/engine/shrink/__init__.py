"""Physical channel removal (``pruning.shrink``): analyse, plan, rewrite.

``graph`` follows channel groups through a TorchScript graph, ``plan`` picks the channels to
keep, ``rewrite`` slices tensors into a smaller module, ``stage`` is the pipeline's step.
"""

from worker.engine.shrink.stage import Prepared, Shrunk, prepare

__all__ = ["Prepared", "Shrunk", "prepare"]
