"""Drive Debian's chromium with Playwright, and serve the app from a thread to point it at.

Playwright's own browser downloads are never used (``playwright install`` needs the
internet): ``./run test`` installs Debian's ``chromium`` and Playwright launches it by path.
"""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import uvicorn
from playwright.sync_api import Browser, ConsoleMessage, Page, Playwright, Request

from core.settings import Settings
from core.storage.blobs import LocalBlobStore
from core.storage.sqlite import SqliteJobStore
from core.tenants.tenancy import ensure_local_admin
from service.auth import KEY_COOKIE
from service.main import create_app
from stack.processes import free_port

LOOPBACK = {"127.0.0.1", "localhost", "::1", "[::1]"}


def chromium_path() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        raise RuntimeError("no chromium on PATH: `apt-get install chromium` (`./run test` "
                           "does it where apt-get works)")
    return path


def launch(playwright: Playwright) -> Browser:
    # --no-sandbox: CI runs as root, where chromium's sandbox refuses to start;
    # --disable-dev-shm-usage: containers often have a tiny /dev/shm, which crashes tabs.
    return playwright.chromium.launch(
        executable_path=chromium_path(),
        args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])


@dataclass
class Watched:
    """A page with what it did: every request's URL, console errors, uncaught errors and
    dialogs (an ``alert`` from injected markup would show up here)."""

    page: Page
    requests: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    dialogs: list[str] = field(default_factory=list)

    def off_machine(self) -> list[str]:
        """The requests that went anywhere but this machine (data: URLs stay in the page)."""
        return [u for u in self.requests
                if not u.startswith("data:") and urlsplit(u).hostname not in LOOPBACK]


@contextmanager
def watched_page(browser: Browser, javascript: bool = True,
                 signed_in: tuple[str, str] | None = None) -> Iterator[Watched]:
    """A fresh browser context; ``signed_in=(base_url, key)`` starts it with the key's
    cookie, as after the sign-in form (test_signin_form_keeps_the_key_for_the_pages)."""
    context = browser.new_context(java_script_enabled=javascript,
                                  viewport={"width": 1000, "height": 800})
    if signed_in is not None:
        base_url, key = signed_in
        context.add_cookies([{"name": KEY_COOKIE, "value": key, "url": base_url}])
    context.set_default_timeout(60_000)  # CI machines are shared and slow; a failure still fails
    page = context.new_page()
    w = Watched(page)

    def on_console(message: ConsoleMessage) -> None:
        if message.type == "error":
            w.errors.append(message.text)

    def on_request(request: Request) -> None:
        w.requests.append(request.url)

    page.on("console", on_console)
    page.on("pageerror", lambda exc: w.errors.append(str(exc)))
    page.on("request", on_request)
    page.on("dialog", lambda dialog: (w.dialogs.append(dialog.message), dialog.dismiss()))
    try:
        yield w
    finally:
        context.close()


@dataclass
class ServedApp:
    """The real app under uvicorn in a thread, with its store and blobs at hand, so a test
    can set up jobs exactly and move them along while a browser watches."""

    base_url: str
    settings: Settings
    store: SqliteJobStore
    blobs: LocalBlobStore
    key: str  # the local admin key

    @property
    def signed_in(self) -> tuple[str, str]:
        return self.base_url, self.key


@contextmanager
def served_app(root: Path) -> Iterator[ServedApp]:
    # Nothing here sends tasks: a Redis that is not there is fine (clients connect lazily).
    settings = Settings(data_dir=root / "data", redis_url=f"redis://127.0.0.1:{free_port()}/0")
    port = free_port()
    store = SqliteJobStore.from_settings(settings)
    key, _ = ensure_local_admin(settings, store)
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=port,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, name="web-app", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.05)
    try:
        yield ServedApp(f"http://127.0.0.1:{port}", settings, store,
                        LocalBlobStore.from_settings(settings), key)
    finally:
        server.should_exit = True
        thread.join(timeout=10)
