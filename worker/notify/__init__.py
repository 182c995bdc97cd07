"""Outbound notifications: webhook delivery to user-given URLs, refused where unsafe."""
