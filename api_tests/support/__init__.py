"""Helpers the tests import (never from a ``conftest.py``, which holds only fixtures):

- ``stacks``: the real stack as processes (``start_stack``, ``TEST_SETTINGS``), and plain
  functions that drive it over HTTP (``submit``, ``wait_for``, ``wait_running``);
- ``api``: the app in-process against a real redis-server (``running_api``, ``Api``,
  ``make_settings``, ``REFERENCE``, ``ModelFiles``);
- ``problems``: ``assert_problem``, the one check of a problem+json error;
- ``raw_http``: HTTP spoken over a bare socket (a body dripped, a connection dropped);
- ``servers``: whether a missing real server (PostgreSQL, S3, chromium) skips or fails.

What tests and benchmarks both need lives in ``testkit/`` (benchmarks import nothing from
``api_tests/``).
"""
