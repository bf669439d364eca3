"""Real object-store servers on loopback, for the remote-logdir tests.

``MotoS3`` runs ``moto_server`` (a real S3-compatible HTTP server) on a port it
binds itself (``-p 0``; the port is read back from its "Running on" line) and
keeps its request log, so a test can count the LIST and GET requests a poll
makes. ``GcsEmulator`` runs ``gcp-storage-emulator``'s server in a child
process that binds port 0 and prints the port. Both are found next to the
test's Python (the venv's bin). Import as ``from objectstores import MotoS3``.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading

from conftest import require_module

BIN = os.path.dirname(sys.executable)


class MotoS3:
    """moto_server on 127.0.0.1; ``endpoint`` is its URL, ``requests`` its access log so far."""

    def __init__(self, port: int = 0) -> None:
        require_module("moto")  # pip install 'moto[server]' (.ci/run installs it)
        require_module("s3fs")
        self.proc = subprocess.Popen(  # port: a restart of a stopped server, for an outage
            [os.path.join(BIN, "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.port = self._read_port()
        self._log: list[str] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._keep_log, daemon=True).start()
        self.endpoint = f"http://127.0.0.1:{self.port}"

    def _read_port(self) -> int:
        for line in self.proc.stdout:  # type: ignore[union-attr]
            m = re.search(r"Running on http://127\.0\.0\.1:(\d+)", line)
            if m:
                return int(m.group(1))
        raise RuntimeError(f"moto_server exited ({self.proc.wait()}) before it listened")

    def _keep_log(self) -> None:
        for line in self.proc.stdout:  # type: ignore[union-attr]
            with self._lock:
                self._log.append(re.sub(r"\x1b\[[0-9;]*m", "", line))

    def requests(self) -> list[str]:
        """'GET /bucket?list-type=2...' for each request served so far."""
        with self._lock:
            return [m.group(1) for line in self._log if (m := re.search(r'"([A-Z]+ \S+) HTTP', line))]

    def wait_for_log(self, n: int) -> list[str]:
        """The log once it holds at least ``n`` requests (werkzeug writes each after answering)."""
        from receivers import wait_until

        return wait_until(lambda: len(r := self.requests()) >= n and r, what=f"{n} requests in moto's log")

    def env(self) -> dict[str, str]:
        """What a user's environment holds to point every S3 client at this server."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": "gradwatch-test-key",
            "AWS_SECRET_ACCESS_KEY": "gradwatch-test-secret-never-logged",
            "AWS_DEFAULT_REGION": "us-east-1",
        }

    def filesystem(self):
        import s3fs

        return s3fs.S3FileSystem(
            key="x", secret="x", client_kwargs={"endpoint_url": self.endpoint}, skip_instance_cache=True
        )

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()


_GCS_SERVER = (
    "import sys, time\n"
    "from gcp_storage_emulator.server import create_server\n"
    "s = create_server('127.0.0.1', 0, in_memory=True, default_bucket=sys.argv[1])\n"
    "s.start()\n"
    "print(s._api._httpd.server_address[1], flush=True)\n"
    "time.sleep(1e9)\n"
)


class GcsEmulator:
    """gcp-storage-emulator on 127.0.0.1 with one bucket; clients find it via ``env()``."""

    def __init__(self, bucket: str = "logs") -> None:
        require_module("gcp_storage_emulator")  # pip install gcp-storage-emulator (.ci/run)
        require_module("gcsfs")
        self.bucket = bucket
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _GCS_SERVER, bucket], stdout=subprocess.PIPE, text=True
        )
        line = self.proc.stdout.readline()  # type: ignore[union-attr]
        if not line.strip().isdigit():
            raise RuntimeError(f"gcp-storage-emulator did not start ({self.proc.poll()})")
        self.endpoint = f"http://127.0.0.1:{int(line)}"

    def env(self) -> dict[str, str]:
        # gcsfs first probes the bucket type over gRPC/TLS, which hangs ~60 s against the
        # emulator before it falls back (shared/ECOSYSTEM.md): off, as for any emulator
        return {"STORAGE_EMULATOR_HOST": self.endpoint, "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false"}

    def filesystem(self):
        import gcsfs

        return gcsfs.GCSFileSystem(token="anon", project="test", skip_instance_cache=True)

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()
