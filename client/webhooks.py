"""Verify the service's webhook deliveries in your receiver (the Standard Webhooks scheme).

Every delivery is a POST with a JSON body and three headers: ``webhook-id``,
``webhook-timestamp`` and ``webhook-signature``. Check them against the endpoint's secret
(``whsec_...``, shown once when the webhook is created) on the raw body, before parsing it::

    import json
    from client.webhooks import WebhookVerificationError, verify

    SECRET = "whsec_..."  # from your secret store, never from the request

    def handle(headers, raw_body: bytes) -> int:  # any framework: headers and raw bytes
        try:
            verify(SECRET, headers, raw_body)
        except WebhookVerificationError as exc:
            print("rejected webhook:", exc)
            return 401
        event = json.loads(raw_body)
        ...  # act on it; the same webhook-id may arrive twice (retries): deduplicate by it
        return 204

With FastAPI/Starlette: ``verify(SECRET, request.headers, await request.body())``.
``verify`` also refuses a timestamp more than five minutes from your clock
(``tolerance_s=``), which stops replays of an old delivery.
"""

from core.webhooks.signing import WebhookVerificationError, verify

__all__ = ["WebhookVerificationError", "verify"]
