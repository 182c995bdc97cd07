"""Who is calling: ``Authorization: Bearer <key>`` -> the key's tenant and scopes.

Every ``/v1`` route depends on one of ``ReadDep`` / ``WriteDep`` / ``AdminDep``; ``/healthz``
and ``/readyz`` stay open, ``/metrics`` needs ``admin``. No key, or a malformed, unknown or
revoked one: 401 with ``WWW-Authenticate: Bearer``; a valid key without the scope: 403. The
web pages (``/``, ``/jobs/{id}``) and the event streams they open send the key as the
``pruner_key`` cookie that the sign-in form sets (HttpOnly, SameSite=Strict). SameSite is
not enough: browsers count every port of a host as one site, so a page served from another
port of the same machine gets the cookie sent. A cookie-signed POST, PUT, PATCH or DELETE
(and the sign-in form's POST) is therefore refused with 403 ``cross_origin`` unless its
``Origin`` (or, without one, its ``Referer``) is the service's own origin (scheme, host and
port); a request with ``Authorization: Bearer`` is not checked (no browser adds that header
on its own). With auth disabled there is no cookie, but a write naming another origin (any
browser's cross-origin POST does) is refused the same way.

With ``PRUNER_AUTH=disabled`` every request is the ``local`` tenant with every scope.
Keys are looked up on every request (no cache), so a revocation holds from the next request
on, on every API process. The key itself is never logged: uvicorn's access log has no
headers, and no message here names it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated
from urllib.parse import urlsplit

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool

from core.jobs.lifecycle import utcnow
from core.tenants.accounts import ALL_SCOPES, LOCAL_TENANT, Scope, grants
from service.errors import CrossOrigin, Forbidden, Unauthorized

KEY_COOKIE = "pruner_key"
_bearer = HTTPBearer(
    auto_error=False, scheme_name="bearer",
    description="An API key: `Authorization: Bearer prn_live_...` (see docs/tenants.md).",
)
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
CHALLENGE = {"WWW-Authenticate": 'Bearer realm="pruner"'}
INVALID = {"WWW-Authenticate": 'Bearer realm="pruner", error="invalid_token"'}


def origin_of(url: str) -> str | None:
    """``scheme://host[:port]`` of a URL as an ``Origin`` header writes it, or None."""
    parts = urlsplit(url)
    if not parts.scheme or not parts.netloc:
        return None
    return f"{parts.scheme.lower()}://{parts.netloc.rpartition('@')[2].lower()}"


def check_same_origin(request: Request, required: bool = True) -> None:
    """403 ``cross_origin`` unless the request's Origin (else its Referer) is this service;
    ``required=False`` lets a request that names no origin at all through (a script: only a
    browser adds these headers, and it always does on a cross-origin POST).

    The service's own origin is the scheme it was reached by (behind a TLS proxy: uvicorn's
    ``--proxy-headers``) and the ``Host`` the browser sent."""
    own = f"{request.url.scheme}://{request.headers.get('host', '').lower()}"
    sent = request.headers.get("origin")
    referer = request.headers.get("referer")
    if not required and sent is None and referer is None:
        return
    claimed = origin_of(sent) if sent and sent != "null" else None
    if sent is None and referer:
        claimed = origin_of(referer)
    if claimed != own:
        raise CrossOrigin(
            f"a {request.method} from a browser must come from this service's own pages "
            f"(Origin {sent or 'missing'}, expected {own}); scripts send "
            "`Authorization: Bearer <key>` instead"
        )


@dataclass(frozen=True)
class Principal:
    tenant: str
    scopes: frozenset[Scope]
    key_id: str | None  # None when auth is disabled


async def principal(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    state = request.state
    if state.settings.auth == "disabled":
        # No key to steal, but any page the user opens could still write through the
        # browser: a write that names another origin is refused here too.
        if request.method in UNSAFE_METHODS:
            check_same_origin(request, required=False)
        return Principal(LOCAL_TENANT, ALL_SCOPES, None)
    # The cookie serves the pages and their event streams (EventSource sends no headers).
    token = (credentials.credentials if credentials is not None
             else request.cookies.get(KEY_COOKIE))
    if not token:
        raise Unauthorized("this route needs an API key: Authorization: Bearer <key>",
                           headers=CHALLENGE)
    if credentials is None and request.method in UNSAFE_METHODS:  # the cookie: a browser
        check_same_origin(request)
    accounts = state.accounts
    if state.store.reads_are_local:  # one indexed SQLite read: cheaper than a thread hop
        key = accounts.authenticate(token, state.pepper)
    else:
        key = await run_in_threadpool(accounts.authenticate, token, state.pepper)
    if key is None:
        raise Unauthorized("the API key is not valid (unknown, malformed or revoked)",
                           headers=INVALID)
    now = utcnow()
    if accounts.needs_touch(key, now):  # a write: never on the event loop
        await run_in_threadpool(accounts.touch, key.key_id, now)
    return Principal(key.tenant, frozenset(key.scopes), key.key_id)


async def page_principal(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal | None:
    """For the HTML pages: the caller, or None (the page then asks to sign in). A
    cross-origin write still raises (403 ``cross_origin``)."""
    try:
        return await principal(request, credentials)
    except Unauthorized:
        return None


def require(scope: Scope) -> object:
    # One dependency per route (calling ``principal`` directly): every dependency level
    # costs FastAPI tens of microseconds per request on the hottest path.
    async def check(
        request: Request,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    ) -> Principal:
        who = await principal(request, credentials)
        if not grants(who.scopes, scope):
            raise Forbidden(f"this key lacks the {scope.value!r} scope")
        return who

    return Depends(check)


ReadDep = Annotated[Principal, require(Scope.JOBS_READ)]
WriteDep = Annotated[Principal, require(Scope.JOBS_WRITE)]
AdminDep = Annotated[Principal, require(Scope.ADMIN)]
PageDep = Annotated[Principal | None, Depends(page_principal)]
