"""Real ``rewardserve serve`` processes on 127.0.0.1 for the mesh tests: start, signal, restart
on the same port, wait for SERVING, scrape metrics, and read their log."""
from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Sequence

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


LIMIT_AND_EXEC = ("import os, resource, sys; n = int(sys.argv[1]); "
                  "resource.setrlimit(resource.RLIMIT_NOFILE, (n, n)); os.execv(sys.argv[2], sys.argv[2:])")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_command() -> list[str]:
    script = Path(sys.executable).with_name("rewardserve")
    if script.exists():
        return [str(script), "serve"]
    return [sys.executable, "-c", "import sys; from rewardserve.service.cli import main; sys.exit(main())", "serve"]


class Replica:
    """One server process on a fixed port (so it can be restarted where clients look for it)."""

    def __init__(self, model: Path, *args: str, open_files: int | None = None) -> None:
        self.port = free_port()
        self.metrics_port = free_port()
        self.args = ["--host", "127.0.0.1", "--port", str(self.port), "--model", str(model), "--device", "cpu",
                     "--metrics-port", str(self.metrics_port), *args]
        self.open_files = open_files
        self.proc: subprocess.Popen | None = None
        self.lines: list[str] = []
        self.generations = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> "Replica":
        command = [*serve_command(), *self.args]
        if self.open_files:  # lowered by a tiny launcher (no preexec_fn: forking a threaded process)
            command = [sys.executable, "-c", LIMIT_AND_EXEC, str(self.open_files), *command]
        self.proc = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
        self.generations += 1
        threading.Thread(target=self._read, args=(self.proc,), daemon=True).start()
        return self

    def _read(self, proc: subprocess.Popen) -> None:
        for line in proc.stderr:
            self.lines.append(line)

    def wait_serving(self, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        with grpc.insecure_channel(self.address) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            while time.monotonic() < deadline:
                assert self.proc.poll() is None, f"replica exited {self.proc.returncode}:\n{self.log}"
                try:
                    if health.Check(health_pb2.HealthCheckRequest(), timeout=2).status == \
                            health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.RpcError:
                    pass  # not listening yet
                time.sleep(0.2)
        raise AssertionError(f"replica on {self.address} never became SERVING:\n{self.log}")

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def wait_exit(self, timeout: float = 60) -> int:
        return self.proc.wait(timeout)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)

    def scrape(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as reply:
            return reply.read().decode()

    def count(self, name: str, **labels: str) -> float:
        """The sum of ``name``'s samples whose labels include ``labels`` (this process, since its start)."""
        from prometheus_client.parser import text_string_to_metric_families

        return sum(sample.value for family in text_string_to_metric_families(self.scrape())
                   for sample in family.samples
                   if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()))

    def handled(self, method: str = "Encode", code: str = "OK") -> int:
        """Calls of ``method`` this process answered with ``code`` since its start."""
        return int(self.count("grpc_server_handled_total", grpc_method=method, grpc_code=code))

    @property
    def log(self) -> str:
        return "".join(self.lines)


def stop_all(replicas: Sequence[Replica]) -> None:
    for replica in replicas:
        replica.kill()
