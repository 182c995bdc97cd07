"""The pruning engine: pure PyTorch (no Celery, no FastAPI). Entry point:
``worker.engine.pipeline.run_job``; the ``prune-model`` CLI is ``worker.engine.cli``."""

import os

# OpenMP threads spin-wait between parallel regions by default. On a CPU shared with the API,
# the broker or another job, a spinning thread starves the one with work: on the 2-core dev
# machine under load a batch-256 MLP step took 50-70 ms instead of 5 ms. Passive waiting
# costs little when the machine is idle. libgomp reads this when torch loads, so it is set
# here, before the engine imports torch; an explicit OMP_WAIT_POLICY wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
