"""Start-up failures of ``rewardserve serve``: one line naming the cause and the fix, exit code 2,
no traceback (unless --log-level DEBUG); busy ports are found before torch or the model loader."""
from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from rewardserve.service.cli import main
from rewardserve.service.config import ServerConfig
from rewardserve.service.startup import StartupError, check_ports, run

PREFIX = "rewardserve serve: error: "


@pytest.fixture
def busy_port():
    """A port something listens on (127.0.0.1)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def the_error_line(err: str) -> str:
    """The single error line on stderr (and nothing that looks like a traceback)."""
    lines = [line for line in err.splitlines() if line.startswith(PREFIX)]
    assert len(lines) == 1, err
    assert "Traceback" not in err, err
    return lines[0][len(PREFIX):]


class NeverLoad:
    """The model-preparation seam: records whether start-up got as far as the model."""

    def __init__(self):
        self.calls = 0

    def __call__(self, config):
        self.calls += 1
        raise AssertionError("start-up reached the model loader")


@pytest.mark.parametrize("flag", ["--port", "--metrics-port"])
def test_a_busy_port_fails_before_the_model_is_touched(busy_port, flag, capsys):
    never = NeverLoad()
    argv = ["serve", "--host", "127.0.0.1", "--port", "0", flag, str(busy_port)]
    assert main(argv, prepare_model=never) == 2
    assert never.calls == 0
    line = the_error_line(capsys.readouterr().err)
    assert f"{flag} {busy_port} on 127.0.0.1: the port is already in use" in line
    assert f"pick another port with {flag}" in line


def test_a_busy_port_fails_without_importing_torch(busy_port):
    """The real console script path: checked in a fresh interpreter, where nothing imported torch yet."""
    code = ("import sys\nfrom rewardserve.service.cli import main\n"
            f"code = main(['serve', '--host', '127.0.0.1', '--port', '{busy_port}'])\n"
            "print('torch' in sys.modules, 'rewardserve.engine.loader' in sys.modules, code)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.stdout.split() == ["False", "False", "2"], done.stderr
    assert "the port is already in use" in the_error_line(done.stderr)


def test_check_ports_names_each_problem(busy_port):
    check_ports(ServerConfig(host="127.0.0.1", port=0, metrics_port=0))  # port 0: nothing to check
    with pytest.raises(StartupError, match="both 5000"):
        check_ports(ServerConfig(host="127.0.0.1", port=5000, metrics_port=5000))
    with pytest.raises(StartupError, match="--port .* already in use"):
        check_ports(ServerConfig(host="127.0.0.1", port=busy_port))
    with pytest.raises(StartupError, match="--host no-such-host.invalid: not an address of this machine"):
        check_ports(ServerConfig(host="no-such-host.invalid", port=5000))


def test_a_free_port_in_time_wait_passes_the_check():
    """A port that a stopped server (gRPC sets SO_REUSEADDR) left in TIME_WAIT is free again."""
    with socket.socket() as server:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        client = socket.create_connection(("127.0.0.1", port))
        accepted, _ = server.accept()
        accepted.close()  # the server side closes first: its end goes to TIME_WAIT
        client.close()
    check_ports(ServerConfig(host="127.0.0.1", port=port))


@pytest.mark.parametrize("argv, message", [
    (["serve", "--dtype", "fp8"], "argument --dtype: invalid choice: 'fp8'"),
    (["serve", "--port", "70000"], "--port must be in 0..65535, not 70000"),
    (["serve", "--max-num-seqs", "many"], "argument --max-num-seqs: invalid int value: 'many'"),
    (["serve", "--tls-cert", "c.pem"], "--tls-cert and --tls-key must be given together"),
])
def test_bad_option_values_are_one_line_and_exit_2(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(argv, prepare_model=NeverLoad())
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and "see rewardserve serve --help" in err, err


# ------------------------------------------------- failures of the model itself (the real loader)

def serve_in_process(model: str, *extra: str) -> int:
    return main(["serve", "--host", "127.0.0.1", "--port", "0", "--device", "cpu", "--model", model, *extra])


def assert_no_traceback_logged(caplog):
    assert not [r for r in caplog.records if r.levelno >= logging.INFO and r.exc_info], caplog.text


@pytest.fixture
def broken_copy(demo_model_dir, tmp_path):
    """A copy of the demo checkpoint to break."""
    folder = tmp_path / "model"
    shutil.copytree(demo_model_dir, folder)
    return folder


def test_a_missing_model_folder(tmp_path, capsys, caplog):
    assert serve_in_process(str(tmp_path / "nowhere")) == 2
    line = the_error_line(capsys.readouterr().err)
    assert f"--model {tmp_path / 'nowhere'}: no such folder; pass an existing checkpoint folder" in line
    assert_no_traceback_logged(caplog)


def test_a_file_instead_of_a_folder(tmp_path, capsys):
    (tmp_path / "model.safetensors").write_bytes(b"x")
    assert serve_in_process(str(tmp_path / "model.safetensors")) == 2
    assert "is a file; pass the checkpoint's folder" in the_error_line(capsys.readouterr().err)


def test_a_truncated_checkpoint(broken_copy, capsys, caplog):
    weights = broken_copy / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:5000])
    assert serve_in_process(str(broken_copy)) == 2
    line = the_error_line(capsys.readouterr().err)
    assert f"{broken_copy}: cannot read the checkpoint (SafetensorError" in line and "fetch it again" in line
    assert_no_traceback_logged(caplog)


def test_an_unreadable_config(broken_copy, capsys):
    (broken_copy / "config.json").write_text("{not json")
    assert serve_in_process(str(broken_copy)) == 2
    assert f"{broken_copy}: cannot read the checkpoint" in the_error_line(capsys.readouterr().err)


def test_an_unknown_architecture(broken_copy, capsys, caplog):
    config = json.loads((broken_copy / "config.json").read_text())
    config.update(architectures=["FooForBar"], model_type="foo")
    (broken_copy / "config.json").write_text(json.dumps(config))
    assert serve_in_process(str(broken_copy)) == 2
    line = the_error_line(capsys.readouterr().err)
    assert "architecture FooForBar (model_type 'foo') is not supported; try --convert classify" in line
    assert_no_traceback_logged(caplog)


@pytest.mark.parametrize("device, message", [
    ("gpu", "--device 'gpu': not a device; use auto, cpu, cuda or cuda:N"),
    ("cuda:64", "--device cuda:64: this machine has"),
])
def test_a_bad_device(demo_model_dir, device, message, capsys):
    assert serve_in_process(str(demo_model_dir), "--device", device) == 2
    assert message in the_error_line(capsys.readouterr().err)


@pytest.mark.slow
def test_an_unreachable_hub_and_the_debug_traceback(tmp_path):
    """A hub id with the hub unreachable (HF_ENDPOINT at a closed port): one line; with
    --log-level DEBUG the same line plus the traceback. Subprocesses: huggingface_hub reads
    HF_ENDPOINT when it is imported."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = sock.getsockname()[1]
    env = {**os.environ, "HF_ENDPOINT": f"http://127.0.0.1:{closed}", "HF_HOME": str(tmp_path / "hf"),
           "HF_HUB_OFFLINE": "0", "XDG_CACHE_HOME": str(tmp_path)}
    command = [sys.executable, "-c", "import sys; from rewardserve.service.cli import main; sys.exit(main())",
               "serve", "--host", "127.0.0.1", "--port", "0", "--device", "cpu", "--model", "someorg/some-rm"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 2
    line = the_error_line(done.stderr)
    assert line.startswith("--model someorg/some-rm: not a local folder, the hub is not reachable"), line
    assert "download it where the hub is reachable and pass its folder" in line
    debug = subprocess.run([*command, "--log-level", "DEBUG"], capture_output=True, text=True, timeout=300, env=env)
    assert debug.returncode == 2 and "Traceback" in debug.stderr and PREFIX + line in debug.stderr


def test_run_drives_a_coroutine_on_the_given_loop_and_closes_it():
    """``startup.run`` stands in for asyncio.Runner (Python 3.11+) on 3.10."""
    import asyncio

    loops = []

    def factory():
        loops.append(asyncio.new_event_loop())
        return loops[0]

    async def work():
        asyncio.get_running_loop().create_task(asyncio.sleep(60))  # left over: cancelled at the end
        return 7

    assert run(work(), factory) == 7
    assert loops[0].is_closed()
    assert run(work(), None) == 7
