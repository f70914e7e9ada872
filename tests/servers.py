"""Real servers on 127.0.0.1 for the remote-storage tests: Debian's nginx (HTTP with
Range requests), moto's standalone S3 server and gcp-storage-emulator (GCS JSON API).
Each is started by a test, logs every request to a file the test reads, and is
stopped by the PID it started."""
from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

START_TIMEOUT_S = 60.0  # a loaded 2-core machine can be slow to start a server
NGINX_CANDIDATES = ("/usr/sbin/nginx", "/usr/bin/nginx")
_REQUEST = re.compile(r'"(GET|HEAD|PUT|POST|DELETE) (\S+) HTTP/[\d.]+" (\d{3})')


def free_port() -> int:
    """A port nothing listens on now (bound to port 0, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, alive=lambda: True, timeout: float = START_TIMEOUT_S) -> None:
    """Block until 127.0.0.1:port accepts a connection (or raise)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive():
            raise RuntimeError(f"the server for port {port} exited before listening")
        with socket.socket() as sock:
            sock.settimeout(1.0)
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout:.0f} s")


def requests_in(log_path: Path) -> list[tuple[str, str, int]]:
    """(method, path, status) of every request a server logged."""
    if not log_path.exists():
        return []
    return [(m.group(1), m.group(2), int(m.group(3)))
            for m in map(_REQUEST.search, log_path.read_text(errors="replace").splitlines()) if m]


def served_folder(prefix: str = "lt-www-") -> Path:
    """A fresh folder for nginx to serve, outside pytest's basetemp (pytest keeps that
    one private, mode 700, which nginx's www-data workers cannot enter). Remove it with
    shutil.rmtree when done."""
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix=prefix))
    folder.chmod(0o755)
    return folder


def nginx_binary() -> str | None:
    """Debian's nginx, or None when it is not installed (`make test` installs it as root)."""
    return next((path for path in NGINX_CANDIDATES if os.access(path, os.X_OK)), shutil.which("nginx"))


class Nginx:
    """nginx serving `root` on 127.0.0.1:port; its files live in `workdir`."""

    def __init__(self, root: Path, workdir: Path, port: int | None = None):
        self.root, self.workdir = Path(root), Path(workdir)
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.access_log = self.workdir / "access.log"
        self.pid_file = self.workdir / "nginx.pid"
        self.conf = self.workdir / "nginx.conf"

    def _write_conf(self) -> None:
        temp = {name: self.workdir / f"{name}_temp" for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")}
        (self.workdir / "htpasswd").write_text("tester:{PLAIN}not-the-password\n")
        self.conf.write_text(f"""
daemon on;
worker_processes 1;
pid {self.pid_file};
error_log {self.workdir / 'error.log'};
events {{ worker_connections 256; }}
http {{
    access_log {self.access_log};
    {''.join(f'{name}_temp_path {path}; ' for name, path in temp.items())}
    server {{
        listen 127.0.0.1:{self.port};
        root {self.root};
        location / {{ }}
        # the access-denied tests: a folder nobody may read (403), shards behind a password (401)
        location /denied/ {{ deny all; }}
        location ~ ^/private/.*\\.tar$ {{ auth_basic "lt-dist tests"; auth_basic_user_file {self.workdir / 'htpasswd'}; }}
    }}
}}
""")

    def start(self) -> "Nginx":
        """Start (or restart on the same port) and wait until it answers."""
        binary = nginx_binary()
        if binary is None:
            raise RuntimeError("nginx is not installed")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._write_conf()
        # nginx's workers run as www-data: the served tree must be readable by others
        for path in (self.root, *self.root.parents):
            if path == Path("/"):
                break
            path.chmod(path.stat().st_mode | 0o055)
        subprocess.run(["chmod", "-R", "a+rX", str(self.root)], check=True)
        subprocess.run([binary, "-c", str(self.conf), "-p", str(self.workdir)], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=START_TIMEOUT_S)
        wait_for_port(self.port)
        return self

    def stop(self) -> None:
        """Stop the master by the PID it wrote (its workers follow) and wait for it."""
        if not self.pid_file.exists():
            return
        pid = int(self.pid_file.read_text().strip())
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline and _alive(pid):
            time.sleep(0.05)
        with socket.socket() as sock:  # the port is closed once the master has gone
            sock.settimeout(1.0)
            while time.monotonic() < deadline and sock.connect_ex(("127.0.0.1", self.port)) == 0:
                time.sleep(0.05)

    def requests(self) -> list[tuple[str, str, int]]:
        return requests_in(self.access_log)


@contextlib.contextmanager
def nginx_serving(workdir: Path) -> Iterator["Nginx"]:
    """nginx on 127.0.0.1 over a fresh, empty served folder for the block; stopped and the
    folder removed after. The caller checks nginx_binary() first."""
    root = served_folder()
    server = Nginx(root, workdir).start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


def publish(dataset: Path, server: "Nginx", name: str) -> str:
    """Copy a packed dataset folder to server.root/NAME/ds (readable by nginx's workers); its URL."""
    shutil.copytree(dataset, server.root / name / "ds")
    subprocess.run(["chmod", "-R", "a+rX", str(server.root)], check=True)
    return f"{server.url}/{name}/ds"


class _ServerProcess:
    """A test server run as our own subprocess on 127.0.0.1:port, its output in workdir/LOG_NAME."""

    LOG_NAME = "server.log"

    def __init__(self, workdir: Path):
        self.workdir = Path(workdir)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = self.workdir / self.LOG_NAME
        self.process: subprocess.Popen | None = None

    def _spawn(self, command: list[str]) -> None:
        """Start `command` (its request log on stdout/stderr) and wait until the port answers."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir)
        wait_for_port(self.port, alive=lambda: self.process.poll() is None)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=START_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def requests(self) -> list[tuple[str, str, int]]:
        return requests_in(self.log)


class MotoS3(_ServerProcess):
    """moto's standalone S3 server (`moto_server`) on 127.0.0.1:port; its request log
    (werkzeug's, on stderr) goes to workdir/moto.log."""

    LOG_NAME = "moto.log"

    def start(self) -> "MotoS3":
        binary = Path(sys.executable).with_name("moto_server")
        command = [str(binary)] if binary.exists() else [sys.executable, "-m", "moto.server"]
        self._spawn([*command, "-H", "127.0.0.1", "-p", str(self.port)])
        return self

    def env(self) -> dict[str, str]:
        """Environment for any AWS client (s3fs, boto3) to use this server."""
        return {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": self.url,
                "AWS_EC2_METADATA_DISABLED": "true"}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie child of ours would still answer: nginx daemonizes, so it is not ours
    return True


class GcsEmulator(_ServerProcess):
    """gcp-storage-emulator (a GCS JSON-API server) on 127.0.0.1:port, in memory; its
    request log (http.server's, on stderr) goes to workdir/gcs.log. Clients find it by
    STORAGE_EMULATOR_HOST (env()), which gcsfs reads itself."""

    LOG_NAME = "gcs.log"

    def start(self) -> "GcsEmulator":
        binary = Path(sys.executable).with_name("gcp-storage-emulator")
        command = [str(binary)] if binary.exists() else [sys.executable, "-m", "gcp_storage_emulator"]
        self._spawn([*command, "start", "-H", "127.0.0.1", "--port", str(self.port), "--no-store-on-disk"])
        return self

    def env(self) -> dict[str, str]:
        """Environment for gcsfs (and google-cloud-storage) to use this server."""
        return {"STORAGE_EMULATOR_HOST": self.url}

    def create_bucket(self, name: str) -> None:
        """POST /storage/v1/b, as `gsutil mb` would (the emulator checks no credentials)."""
        import json
        import urllib.request

        request = urllib.request.Request(f"{self.url}/storage/v1/b?project=test", method="POST",
                                         data=json.dumps({"name": name}).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=START_TIMEOUT_S) as response:
            response.read()
