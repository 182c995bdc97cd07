"""The FastAPI app: ``uvicorn service.main:app`` (or ``create_app(settings)`` in tests).

HTTP only: this package never imports torch (a test checks it in a fresh interpreter), so
the API starts fast and its image stays small. Jobs run in the Celery workers.
"""

from __future__ import annotations

import logging

from fastapi import APIRouter, FastAPI
from fastapi.routing import APIRoute

from core.settings import Settings, get_settings
from service.deps import make_lifespan
from service.errors import install_error_handlers
from service.metrics import new_api_metrics
from service.routes import admin, architectures, datasets, health, jobs, web

DESCRIPTION = """\
Upload a trained PyTorch model (TorchScript, or a state_dict/safetensors file for a built-in
architecture) with a pruning spec. A worker prunes it, fine-tunes it on MNIST with the pruned
weights held at zero, evaluates it, and offers the sparse model and a report.

Every error is RFC 9457 `application/problem+json` with a stable `code`.
"""


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    for name in ("", "uvicorn", "uvicorn.error"):  # ours, and the server's own messages
        logging.getLogger(name).setLevel(settings.log_level)
    app = FastAPI(
        title="Pruning service",
        version="1.0.0",
        description=DESCRIPTION,
        lifespan=make_lifespan(settings, new_api_metrics()),
        docs_url=None,  # served by web.install from packaged assets, not a CDN
        redoc_url=None,
    )
    install_error_handlers(app)
    for router in (jobs.router, datasets.router, architectures.router, admin.router,
                   health.router):
        _docstrings_as_summaries(router)
        app.include_router(router)
    web.install(app)
    return app


def _docstrings_as_summaries(router: APIRouter) -> None:
    """Each route's one-line docstring becomes its OpenAPI summary (not its description)."""
    for route in router.routes:
        if isinstance(route, APIRoute) and route.summary is None and route.endpoint.__doc__:
            route.summary = route.endpoint.__doc__.strip().splitlines()[0]
            route.description = ""


app = create_app()
