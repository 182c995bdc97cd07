"""Webhooks: durable delivery rows and backoff, signing, the notify-URL policy."""
