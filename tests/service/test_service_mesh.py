"""Replicas behind client-side balancing, as real ``rewardserve serve`` processes on 127.0.0.1
(the demo model on the CPU): rolling restarts lose no call, a killed replica's callers retry on
the other one, tokens reload on SIGHUP, and a busy tokenizer does not keep a drained process alive.

Counts are printed (``pytest -s``) for the issue's report; assertions are on outcomes only.
"""
from __future__ import annotations

import collections
import json
import shutil
import signal
import threading
import time

import pytest
from rewardserve_client import RewardClient, RewardServeError

from mesh_testlib import Replica, stop_all

pytestmark = pytest.mark.slow

TOKEN = "mesh-test-token-0123456789"
TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
TRACEPARENT = f"00-{TRACE_ID}-b7ad6b7169203331-01"
# The server side of the stop timeline, short: 1 s of drain delay, 5 s of grace.
DRAIN = ("--drain-delay-s", "1", "--grace-period-s", "5")


class Load:
    """Steady calls from several threads through one balancing client; every outcome is kept."""

    def __init__(self, client: RewardClient, threads: int = 4) -> None:
        self.client = client
        self.outcomes: collections.Counter = collections.Counter()
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, args=(n,), daemon=True) for n in range(threads)]

    def __enter__(self) -> "Load":
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(60)

    def _run(self, n: int) -> None:
        i = 0
        while not self._stop.is_set():
            i += 1
            try:
                reply = self.client.encode([[1 + n, 2 + i % 50, 3]], timeout=30)
                outcome = "OK" if len(reply.results) == 1 else "bad reply"
            except RewardServeError as exc:
                outcome = exc.code.name
                with self._lock:
                    self.failures.append(f"{exc.code.name}: {exc}")
            with self._lock:
                self.outcomes[outcome] += 1

    def wait_calls(self, more: int) -> None:
        """Let ``more`` further calls complete (whatever their outcome)."""
        target = sum(self.outcomes.values()) + more
        while sum(self.outcomes.values()) < target:
            time.sleep(0.05)


def test_rolling_restart_loses_no_call_and_a_killed_replica_fails_only_its_own_calls(demo_model_dir):
    replicas = [Replica(demo_model_dir, *DRAIN) for _ in range(2)]
    try:
        for replica in replicas:
            replica.start()
        for replica in replicas:
            replica.wait_serving()
        target = "ipv4:" + ",".join(r.address for r in replicas)
        served = collections.Counter()
        with RewardClient(target, max_retries=10, max_backoff=1.0) as client, Load(client) as load:
            load.wait_calls(40)
            for n, replica in enumerate(replicas):  # restart each in turn
                served[n] += replica.handled()
                replica.signal(signal.SIGTERM)
                assert replica.wait_exit(60) == 0, replica.log
                replica.start()
                replica.wait_serving()
                load.wait_calls(40)  # the restarted replica is back in the rotation
            restart_outcomes = dict(load.outcomes)
            restart_failures = list(load.failures)
            for n, replica in enumerate(replicas):
                served[n] += replica.handled()

            # SIGKILL: no drain at all. Calls in flight on it fail over (UNAVAILABLE is retried).
            before_kill = dict(load.outcomes)
            replicas[1].proc.kill()
            replicas[1].wait_exit(30)
            load.wait_calls(80)
            survivor_before = replicas[0].handled()
            load.wait_calls(40)
            assert replicas[0].handled() > survivor_before  # the survivor takes every call now
        kill_failures = _failed(load.outcomes) - _failed(before_kill)
        kill_calls = sum(load.outcomes.values()) - sum(before_kill.values())
        print("\nrolling restart:", json.dumps({"outcomes": restart_outcomes, "served_per_replica": dict(served),
                                                "kill_calls": kill_calls, "kill_failed": kill_failures}))
    finally:
        stop_all(replicas)
    assert restart_failures == [] and set(restart_outcomes) == {"OK"}, restart_failures
    assert served[0] > 0 and served[1] > 0, served  # both replicas served calls
    # Only calls in flight on the killed replica may fail (at most one per load thread).
    assert kill_failures <= 4, load.failures
    assert all("drain" in r.log or "draining" in r.log for r in replicas)


def test_sighup_reloads_the_token_file_and_tokens_never_reach_the_json_log(demo_model_dir, tmp_path):
    tokens = tmp_path / "tokens"
    tokens.write_text(f"{TOKEN}\n")
    replica = Replica(demo_model_dir, "--auth-token-file", str(tokens), "--log-level", "DEBUG", "--log-format", "json",
                      *DRAIN).start()
    try:
        replica.wait_serving()  # health needs no token
        with RewardClient(replica.address, auth_token=TOKEN, max_retries=0) as client:
            assert client.model_info(timeout=30).model
        with RewardClient(replica.address, auth_token="wrong-" + TOKEN, max_retries=0) as wrong:
            with pytest.raises(RewardServeError) as info:
                wrong.model_info(timeout=30)
            assert info.value.code.name == "UNAUTHENTICATED" and TOKEN not in str(info.value)
        new_token = "rotated-" + TOKEN
        tokens.write_text(f"# rotated\n{new_token}\n")
        replica.signal(signal.SIGHUP)
        with RewardClient(replica.address, auth_token=new_token, max_retries=0,
                          metadata={"traceparent": TRACEPARENT}) as rotated:
            _until(lambda: _succeeds(rotated))
        with RewardClient(replica.address, auth_token=TOKEN, max_retries=0) as old:
            with pytest.raises(RewardServeError) as info:
                old.model_info(timeout=30)
            assert info.value.code.name == "UNAUTHENTICATED"
        replica.signal(signal.SIGTERM)
        assert replica.wait_exit(60) == 0
    finally:
        stop_all([replica])
    assert TOKEN not in replica.log
    entries = [json.loads(line) for line in replica.lines if line.startswith("{")]
    assert sum("1 bearer token(s) accepted" in e["message"] for e in entries) == 2  # at start, on SIGHUP
    traced = [e for e in entries if e.get("trace_id") == TRACE_ID]
    assert traced and all(e["message"].startswith("GetModelInfo request_id=") for e in traced)


def test_a_busy_tokenizer_does_not_keep_a_drained_process_alive(demo_model_dir, tmp_path):
    """A chat template that renders for hours keeps a tokenizer-pool thread busy; after the grace
    period the call ends UNAVAILABLE and the process exits anyway."""
    model = tmp_path / "spinning-model"
    shutil.copytree(demo_model_dir, model)
    config_path = model / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    template = config.get("chat_template") or (model / "chat_template.jinja").read_text()
    spin = ("{% if messages[0]['content'] == 'spin' %}{% for i in range(100000) %}{% for j in range(100000) %}"
            "{% endfor %}{% endfor %}{% endif %}")
    if "chat_template" in config:
        config["chat_template"] = spin + template
        config_path.write_text(json.dumps(config))
    else:
        (model / "chat_template.jinja").write_text(spin + template)
    replica = Replica(model, "--drain-delay-s", "0", "--grace-period-s", "1").start()
    try:
        replica.wait_serving()
        outcome: dict = {}

        def call() -> None:
            with RewardClient(replica.address, max_retries=0) as client:
                try:
                    client.chat_reward([[{"role": "user", "content": "spin"}]], timeout=120)
                    outcome["code"] = "OK"
                except RewardServeError as exc:
                    outcome["code"] = exc.code.name
        caller = threading.Thread(target=call, daemon=True)
        caller.start()
        _until(lambda: replica.count("grpc_server_started_total", grpc_method="ChatReward") == 1)
        time.sleep(0.5)  # the call is open on the server: let the pool thread pick it up
        signalled = time.monotonic()
        replica.signal(signal.SIGTERM)
        code = replica.wait_exit(60)  # without the fix: never (the template spins for hours)
        exited_after = time.monotonic() - signalled
        caller.join(30)
    finally:
        stop_all([replica])
    print(f"\nbusy tokenizer: exit {code} {exited_after:.2f} s after SIGTERM (grace period 1 s)")
    assert code == 0, replica.log
    assert outcome.get("code") == "UNAVAILABLE", (outcome, replica.log)
    assert "grace period over" in replica.log


def _failed(outcomes: dict) -> int:
    return sum(n for outcome, n in outcomes.items() if outcome != "OK")


def _succeeds(client: RewardClient) -> bool:
    try:
        client.model_info(timeout=30)
        return True
    except RewardServeError:
        return False


def _until(predicate, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition never met"
        time.sleep(0.05)
