"""The ``rewardserve`` console script: option parsing, the demo default, and a real server process."""
from __future__ import annotations

import logging
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from rewardserve_client.v1 import reward_service_pb2 as pb
from rewardserve_client.v1 import reward_service_pb2_grpc as pb_grpc

from rewardserve.service.cli import loop_factory, parse_serve_config, resolve_model
from rewardserve.service.config import ServeConfig

LISTENING = re.compile(r"rewardserve listening on (\S+):(\d+)")


def test_serve_options_come_from_the_config_tree():
    config = parse_serve_config(["serve", "--model", "/m", "--port", "0", "--grace-period-s", "2.5",
                                 "--max-receive-message-mb", "8", "--max-num-seqs", "7", "--log-level", "DEBUG"])
    assert config.engine.model.model == "/m" and config.engine.scheduler.max_num_seqs == 7
    assert (config.server.port, config.server.grace_period_s, config.server.max_receive_message_mb) == (0, 2.5, 8)
    assert config.server.log_level == "DEBUG"
    assert parse_serve_config(["serve"]) == ServeConfig()


@pytest.mark.parametrize("argv", [
    ["serve", "--no-such-option"],
    ["serve", "--log-level", "LOUD"],
    ["serve", "--tls-cert", "cert.pem"],  # without --tls-key
    ["serve", "--port", "70000"],
    [],
])
def test_bad_command_lines_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as info:
        parse_serve_config(argv)
    assert info.value.code == 2 and capsys.readouterr().err


def test_event_loop_is_uvloop_when_installed_or_asyncio_when_asked(monkeypatch, capsys):
    import uvloop

    assert parse_serve_config(["serve"]).server.event_loop == "auto"
    assert loop_factory("auto") is uvloop.new_event_loop and loop_factory("uvloop") is uvloop.new_event_loop
    assert loop_factory("asyncio") is None
    monkeypatch.setitem(sys.modules, "uvloop", None)  # as if it were not installed
    assert loop_factory("auto") is None
    with pytest.raises(SystemExit) as exit_:
        parse_serve_config(["serve", "--event-loop", "uvloop"])
    assert exit_.value.code == 2 and "uvloop package is not installed" in capsys.readouterr().err


def test_environment_gives_defaults_and_the_command_line_wins(monkeypatch):
    monkeypatch.setenv("REWARDSERVE_PORT", "6000")
    monkeypatch.setenv("REWARDSERVE_HOST", "127.0.0.1")
    assert parse_serve_config(["serve"]).server.address == "127.0.0.1:6000"
    assert parse_serve_config(["serve", "--port", "7000"]).server.port == 7000


def test_no_model_serves_the_demo_model_with_a_loud_warning(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    with caplog.at_level(logging.WARNING):
        config = resolve_model(ServeConfig())
    folder = Path(config.engine.model.model)
    assert folder.is_relative_to(tmp_path) and (folder / "config.json").exists()
    warning = " ".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert "RANDOM weights" in warning and "meaningless" in warning
    assert "rewardserve serve --model DIR|HUB_ID" in warning


def test_an_explicit_model_is_kept():
    config = parse_serve_config(["serve", "--model", "org/reward-7b"])
    assert resolve_model(config) is config


# --------------------------------------------------------------- the real thing (needs the engine)

class ServerProcess:
    """``rewardserve serve`` in a subprocess; stderr is collected by a thread (no pipe stall)."""

    def __init__(self, *args: str) -> None:
        script = Path(sys.executable).with_name("rewardserve")
        command = [str(script)] if script.exists() else [
            sys.executable, "-c", "import sys; from rewardserve.service.cli import main; sys.exit(main())"]
        self.proc = subprocess.Popen([*command, "serve", *args], stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        self.address = None
        self._found = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stderr:
            self.lines.append(line)
            match = LISTENING.search(line)
            if match and not self._found.is_set():
                self.address = f"127.0.0.1:{match.group(2)}"
                self._found.set()
        self._found.set()

    def wait_listening(self, timeout: float) -> str:
        assert self._found.wait(timeout) and self.address, f"never listened:\n{self.log}"
        return self.address

    @property
    def log(self) -> str:
        return "".join(self.lines)


def wait_serving(channel: grpc.Channel, timeout: float) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        reply = health.Check(health_pb2.HealthCheckRequest(), timeout=5)
        if reply.status == health_pb2.HealthCheckResponse.SERVING:
            return
        time.sleep(0.2)
    raise AssertionError("the server never became SERVING")


@pytest.mark.slow
@pytest.mark.parametrize("event_loop, expected", [("auto", "uvloop"), ("asyncio", "asyncio")])
def test_rewardserve_serve_answers_health_scores_and_exits_0_on_sigterm(demo_model_dir, event_loop, expected):
    # demo_model_dir (tests/conftest.py): ensure_demo_model() built in a pytest tmp folder.
    server = ServerProcess("--host", "127.0.0.1", "--port", "0", "--model", str(demo_model_dir),
                           "--device", "cpu", "--grace-period-s", "5", "--event-loop", event_loop)
    try:
        address = server.wait_listening(120)
        with grpc.insecure_channel(address) as channel:
            wait_serving(channel, 180)
            stub = pb_grpc.RewardServiceStub(channel)
            info = stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=30)
            assert info.vocab_size > 0 and info.server_version
            reply = stub.ChatReward(pb.ChatRewardRequest(conversations=[pb.Conversation(
                messages=[pb.ChatMessage(role="user", content="2+2?"),
                          pb.ChatMessage(role="assistant", content="4")])]), timeout=30)
            assert len(reply.results) == 1 and reply.results[0].num_tokens > 0
        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(60) == 0, server.log
    finally:
        if server.proc.poll() is None:
            server.proc.kill()
    assert "draining" in server.log and f"event loop: {expected}" in server.log
