"""HTML for people: the job list, a live job page, a submission form, the offline report,
and the interactive API docs with their assets served from here (no CDN).

The pages use the same store, submission path and errors as the JSON API; they add no
state of their own. They are left out of the OpenAPI document, except the offline report
(``GET /v1/jobs/{id}/report.html``), which is part of the API.
"""

from __future__ import annotations

import uuid
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from swagger_ui_bundle import swagger_ui_path

from core.jobs.public import JOBS_PATH, JobPublic
from core.jobs.record import JobStatus
from core.storage.protocols import REPORT, BlobStore, JobStore
from core.tenants.accounts import Scope, grants
from report_html import render_report, report_context
from service.auth import CHALLENGE, KEY_COOKIE, PageDep, ReadDep, check_same_origin
from service.deps import (
    AccountsDep,
    BlobsDep,
    CeleryDep,
    MetricsDep,
    RedisDep,
    SettingsDep,
    StoreDep,
)
from service.errors import (
    AUTH_ERRORS,
    ApiError,
    Forbidden,
    Gone,
    JobNotFinished,
    NoModel,
    NotFound,
    Problem,
    problem_responses,
)
from service.job_access import finished_report, load_job
from service.submit import submit
from service.web.pages import (
    HTML_HEADERS,
    REPORT_CSP,
    TEMPLATES,
    example_spec,
    load_report,
    progress_fraction,
    progress_text,
    report_summary,
)

PAGE_SIZE = 50
SWAGGER_ASSETS = "/static/swagger-ui"
WEB_ASSETS = "/static/web"

pages = APIRouter(include_in_schema=False)
api = APIRouter(prefix=JOBS_PATH, tags=["jobs"])


def _page(template: str, status_code: int = 200, headers: dict[str, str] | None = None,
          **context: Any) -> HTMLResponse:
    body = TEMPLATES.get_template(template).render(**context)
    return HTMLResponse(body, status_code=status_code, headers={**HTML_HEADERS, **(headers or {})})


def _error_page(error: ApiError) -> HTMLResponse:
    return _page("error.html.j2", error.status, error.headers, title=error.title,
                 detail=error.detail)


def _signin_page(next_url: str, detail: str | None = None, status_code: int = 401
                 ) -> HTMLResponse:
    return _page("signin.html.j2", status_code, CHALLENGE, next=next_url, detail=detail)


def _index_page(store: JobStore, blobs: BlobStore, tenant: str, status: JobStatus | None,
                cursor: str | None, problem: Problem | None = None,
                spec_text: str | None = None, status_code: int = 200,
                headers: dict[str, str] | None = None) -> HTMLResponse:
    try:
        records, next_cursor = store.list(status=status, limit=PAGE_SIZE, cursor=cursor,
                                          tenant=tenant)
    except ValueError:
        return _error_page(NotFound("that page of jobs does not exist (stale cursor)"))
    rows = [{"job": r, "progress": progress_text(r.progress),
             "fraction": progress_fraction(r.status, r.progress),
             "summary": report_summary(blobs, r)} for r in records]
    next_url = None
    if next_cursor:
        next_url = f"/?cursor={next_cursor}" + (f"&status={status.value}" if status else "")
    return _page("index.html.j2", status_code, headers, rows=rows, next_url=next_url,
                 status=status.value if status else None, statuses=[s.value for s in JobStatus],
                 problem=problem, spec_text=spec_text or example_spec(),
                 form_key=uuid.uuid4().hex)


@pages.get("/signin", response_class=HTMLResponse)
def signin_form(next: str = "/") -> HTMLResponse:
    return _signin_page(_local_path(next), status_code=200)


@pages.post("/signin", response_class=HTMLResponse)
async def signin(request: Request, settings: SettingsDep, accounts: AccountsDep) -> Response:
    """Check the pasted key, then keep it in an HttpOnly, SameSite=Strict cookie."""
    check_same_origin(request)  # no other page may sign a browser in (to its own key)
    form = await request.form()
    key, next_url = str(form.get("key", "")).strip(), _local_path(str(form.get("next", "/")))
    if settings.auth == "enabled":
        state = request.state
        found = await run_in_threadpool(accounts.authenticate, key, state.pepper)
        if found is None:
            return _signin_page(next_url, "That key is not valid (unknown, malformed or "
                                "revoked).")
    response = RedirectResponse(next_url, status_code=303)
    response.set_cookie(KEY_COOKIE, key, httponly=True, samesite="strict",
                        secure=request.url.scheme == "https", path="/")
    return response


@pages.post("/signout", response_class=HTMLResponse)
def signout(request: Request) -> Response:
    check_same_origin(request)
    response = RedirectResponse("/signin", status_code=303)
    response.delete_cookie(KEY_COOKIE, path="/")
    return response


def _local_path(url: str) -> str:
    """Only a path on this site: never an open redirect."""
    return url if url.startswith("/") and not url.startswith("//") else "/"


@pages.get("/", response_class=HTMLResponse)
def index(who: PageDep, store: StoreDep, blobs: BlobsDep, status: JobStatus | None = None,
          cursor: str | None = None) -> HTMLResponse:
    """The job list, newest first, and the submission form."""
    if who is None:
        return _signin_page("/")
    if not grants(who.scopes, Scope.JOBS_READ):
        return _error_page(Forbidden("this key lacks the 'jobs:read' scope"))
    return _index_page(store, blobs, who.tenant, status, cursor)


@pages.post("/jobs", response_class=HTMLResponse)
async def submit_form(
    request: Request,
    who: PageDep,
    settings: SettingsDep,
    store: StoreDep,
    blobs: BlobsDep,
    celery: CeleryDep,
    redis: RedisDep,
    metrics: MetricsDep,
    key: str | None = None,
) -> Response:
    """The form's submission: the API's own path, then to the job's page (303).

    ``key`` is the Idempotency-Key the form was rendered with, so a form sent twice (a
    double click, a reload) makes one job."""
    if who is None:
        return _signin_page("/")
    if not grants(who.scopes, Scope.JOBS_WRITE):
        return _error_page(Forbidden("this key lacks the 'jobs:write' scope"))
    try:
        record, is_new = await submit(request, settings=settings, store=store, blobs=blobs,
                                      celery=celery, redis=redis, idempotency_key=key,
                                      tenant=who.tenant)
    except ApiError as exc:
        problem = Problem(type="", title=exc.title, status=exc.status, detail=exc.detail,
                          code=exc.code, errors=exc.errors)
        return await run_in_threadpool(_index_page, store, blobs, who.tenant, None, None,
                                       problem, None, exc.status, exc.headers)
    if is_new:
        metrics.upload_bytes.inc(record.upload_bytes)
    return RedirectResponse(f"/jobs/{record.id}", status_code=303)


@pages.get("/jobs/{job_id}", response_class=HTMLResponse)
def job_page(job_id: str, who: PageDep, store: StoreDep, blobs: BlobsDep) -> HTMLResponse:
    """One job, live while it runs (server-sent events), with its report once it ended (a
    failed job has one only when the engine left it, as a target's frontier)."""
    if who is None:
        return _signin_page(f"/jobs/{job_id}")
    if not grants(who.scopes, Scope.JOBS_READ):
        return _error_page(Forbidden("this key lacks the 'jobs:read' scope"))
    try:
        record = load_job(store, job_id, who.tenant)
    except ApiError as exc:
        return _error_page(exc)
    report = None
    if record.status in (JobStatus.SUCCEEDED, JobStatus.FAILED) \
            and record.files_expired_at is None and blobs.exists(job_id, REPORT):
        report = load_report(blobs, job_id)  # a failed job's: e.g. a target's frontier
    charts = report_context(report) if report is not None else {}
    return _page("job.html.j2", job=JobPublic.from_record(record),
                 progress=progress_text(record.progress),
                 fraction=progress_fraction(record.status, record.progress),
                 spec_json=record.spec.model_dump_json(indent=2), **{**charts, "report": report})


@api.get(
    "/{job_id}/report.html",
    response_class=HTMLResponse,
    summary="The report as a self-contained HTML page, for reading and sharing offline.",
    responses={200: {"content": {"text/html": {}},
                     "description": "The report as one self-contained HTML page: inline CSS and "
                     "SVG charts, no script, nothing fetched from anywhere."},
               **problem_responses(NotFound, JobNotFinished, NoModel, Gone, *AUTH_ERRORS)},
)
def get_report_html(job_id: str, who: ReadDep, store: StoreDep,
                    blobs: BlobsDep) -> HTMLResponse:
    """The report as a self-contained HTML page, for reading and sharing offline."""
    record = load_job(store, job_id, who.tenant)
    finished_report(record, blobs.exists(job_id, REPORT))
    view = load_report(blobs, job_id)
    if view is None:
        raise Gone(f"the report of job {job_id} is no longer stored")
    finished = record.finished_at.strftime("%Y-%m-%d %H:%M UTC") if record.finished_at else ""
    html = render_report(view, title=f"Pruning report: job {job_id}",
                         subtitle=f"Finished {finished}" if finished else None)
    return HTMLResponse(html, headers={
        "Content-Security-Policy": REPORT_CSP, "X-Content-Type-Options": "nosniff",
        "Content-Disposition": f'inline; filename="{job_id}-report.html"',
    })


def install(app: FastAPI) -> None:
    """Add the pages, the report route, the self-hosted API docs and their static files.

    The app must be created with ``docs_url=None, redoc_url=None``: FastAPI's own /docs
    loads Swagger UI from a CDN, and ReDoc has no packaged copy here, so it is not served."""
    app.include_router(pages)
    app.include_router(api)
    app.mount(SWAGGER_ASSETS, StaticFiles(directory=str(swagger_ui_path)), name="swagger-ui")
    app.mount(WEB_ASSETS, StaticFiles(packages=[("service.web", "static")]), name="web")

    async def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title=f"{app.title} · API docs",
            swagger_js_url=f"{SWAGGER_ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{SWAGGER_ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{SWAGGER_ASSETS}/favicon-32x32.png",
            # The validator badge would send the OpenAPI URL to validator.swagger.io.
            swagger_ui_parameters={"validatorUrl": None},
        )

    app.add_api_route("/docs", swagger_ui, methods=["GET"], include_in_schema=False)
