"""The webhook dispatcher: a thread in each worker's main process, every
``webhook_interval_s``; rows and rules in core/webhooks/deliveries.py.

Each pass:
1. every terminal job whose webhook is due becomes one delivery row (when its status is one
   of the webhook's events), then the job is marked ``notified``;
2. every due delivery is leased (compare-and-set), its destination resolved and checked
   (worker/notify/safe_http.py: https, public addresses, allow-list), signed with the
   tenant's secret (Standard Webhooks) and POSTed; a 2xx delivers it, anything else is
   retried with backoff until ``webhook_give_up_s``, and a refused destination (SSRF rules)
   fails at once: it would be refused again.

Several workers may each run one: the lease makes every attempt single, the unique job id
makes every delivery single. Nothing here is in memory only: a restart resumes from the rows.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from datetime import timedelta

from core.jobs.lifecycle import utcnow
from core.settings import Settings
from core.storage.protocols import JobStore
from core.tenants import tenancy
from core.tenants.store import AccountStore
from core.webhooks.deliveries import Attempt, Delivery, DeliveryState, DeliveryStore, backoff_s
from core.webhooks.signing import signature_headers
from worker.notify.safe_http import DestinationRefused, post_json, resolve_destination

log = logging.getLogger("worker.notify")


class Dispatcher:
    def __init__(self, settings: Settings, store: JobStore,
                 rng: random.Random | None = None) -> None:
        self.settings = settings
        self.store = store
        self.deliveries: DeliveryStore = tenancy.deliveries(store)
        self.accounts: AccountStore = tenancy.accounts(store)
        self.rng = rng or random.Random()

    def run_once(self, stop: threading.Event | None = None) -> int:
        """One pass (cut short between attempts once ``stop`` is set); returns the number
        of attempts made."""
        self.record_due_events()
        attempts = 0
        for delivery, body, token in self.deliveries.due(utcnow()):
            if stop is not None and stop.is_set():
                break
            if self.deliveries.lease(delivery.id, token, utcnow()):
                self.attempt(delivery, body)
                attempts += 1
        return attempts

    def record_due_events(self) -> None:
        for record in self.store.notify_due():
            notify = record.notify
            if notify is not None and record.status.value in notify.events:
                self.deliveries.add(record, notify.url, utcnow())
            self.store.update(record.id, notified=True)

    def attempt(self, delivery: Delivery, body: str) -> None:
        started = time.monotonic()
        tenant = self.accounts.get_tenant(delivery.tenant)
        status: int | None = None
        refused = False
        if tenant is None:
            error: str | None = f"tenant {delivery.tenant!r} no longer exists"
            refused = True
        else:
            try:
                dest = resolve_destination(delivery.url, self.settings.webhook_allowed)
            except DestinationRefused as exc:
                error, refused = f"refused: {exc.reason}", True
            else:
                timestamp = int(time.time())
                headers = {**signature_headers(tenant.signing_secret, delivery.id, timestamp,
                                               body.encode()),
                           "content-type": "application/json",
                           "user-agent": "pruning-service-webhooks/1"}
                result = post_json(dest, body.encode(), headers,
                                   timeout_s=self.settings.webhook_timeout_s)
                status, error = result.status_code, result.error
        attempt = Attempt(at=utcnow(), status_code=status, error=error,
                          duration_ms=round((time.monotonic() - started) * 1000, 1))
        ok = status is not None and 200 <= status < 300 and error is None
        if ok:
            self.deliveries.record_attempt(delivery.id, attempt, DeliveryState.DELIVERED, None)
            log.info("webhook %s for job %s delivered (HTTP %s)", delivery.id,
                     delivery.job_id, status)
            return
        failures = len(delivery.attempts) + 1
        next_at = utcnow() + timedelta(seconds=backoff_s(
            failures, self.settings.webhook_retry_base_s, self.settings.webhook_retry_max_s,
            self.rng))
        give_up_at = delivery.created_at + timedelta(seconds=self.settings.webhook_give_up_s)
        if refused or next_at > give_up_at:
            self.deliveries.record_attempt(delivery.id, attempt, DeliveryState.FAILED, None)
            log.warning("webhook %s for job %s failed for good after %d attempts: %s",
                        delivery.id, delivery.job_id, failures, error)
            return
        self.deliveries.record_attempt(delivery.id, attempt, DeliveryState.PENDING, next_at)
        log.info("webhook %s for job %s attempt %d failed (%s); next at %s", delivery.id,
                 delivery.job_id, failures, error or f"HTTP {status}", next_at.isoformat())


# --- the thread -----------------------------------------------------------------------------

_stop = threading.Event()
_thread: threading.Thread | None = None
_join_s = 0.0


def start_dispatcher(settings: Settings, store: JobStore) -> None:
    global _thread, _join_s
    if _thread is not None and _thread.is_alive():
        return
    dispatcher = Dispatcher(settings, store)
    _stop.clear()
    _join_s = settings.webhook_timeout_s + 1.0  # post_json bounds one attempt by the timeout

    def loop() -> None:
        while not _stop.is_set():
            try:
                dispatcher.run_once(_stop)
            except Exception:  # a database hiccup: the next pass retries
                log.exception("webhook dispatcher pass failed")
            _stop.wait(settings.webhook_interval_s)

    _thread = threading.Thread(target=loop, name="webhooks", daemon=True)
    _thread.start()


def stop_dispatcher() -> None:
    """Stop the thread once the attempt in flight has ended and been recorded: the process
    exits next, and an attempt cut off there would keep its row leased for a minute, then
    be sent again."""
    _stop.set()
    if _thread is not None:
        _thread.join(_join_s)
