"""Client-side balancing: round-robin over every address of a target, skipping NOT_SERVING ones.

Two real fake servers on 127.0.0.1, each with the standard health service; the client gets one
``ipv4:`` target naming both. Waits for a health change are polls bounded by a number of calls,
never timed assertions.
"""
import asyncio
import json
import os
import shlex
import shutil
import subprocess
import sys

import grpc
import pytest

from fake_reward_server import Fail, FakeRewardService, ServerThread
from rewardserve_client import AsyncRewardClient, RewardClient, UnavailableError
from rewardserve_client.v1 import reward_service_pb2 as pb

METHOD = "GetModelInfo"


class Replicas:
    """Fake servers on 127.0.0.1 and the multi-address target that names them all."""

    def __init__(self, count: int = 2, addresses=None):
        self.fakes = [FakeRewardService() for _ in range(count)]
        addresses = addresses or ["127.0.0.1:0"] * count
        self.threads = [ServerThread(f, a).start() for f, a in zip(self.fakes, addresses)]

    @property
    def target(self) -> str:
        return "ipv4:" + ",".join(t.target for t in self.threads)

    def calls(self) -> list:
        return [f.calls(METHOD) for f in self.fakes]

    def stop(self) -> None:
        for thread in self.threads:
            thread.stop()


@pytest.fixture
def replicas():
    pair = Replicas()
    yield pair
    pair.stop()


def call_until(client, done, most: int = 300) -> None:
    """Call until ``done()`` (bounded: the health change or connection has to show by then)."""
    for _ in range(most):
        if done():
            return
        client.model_info()
    raise AssertionError(f"not reached within {most} calls")


def served_by(replicas: Replicas, client, n: int) -> list:
    """How many of the next ``n`` calls each replica served."""
    before = replicas.calls()
    for _ in range(n):
        client.model_info()
    return [after - b for after, b in zip(replicas.calls(), before)]


def test_calls_alternate_over_every_address(replicas):
    with RewardClient(replicas.target, timeout=5) as client:
        call_until(client, lambda: all(replicas.calls()))  # both connected and healthy
        assert served_by(replicas, client, 10) == [5, 5]


def test_a_not_serving_replica_gets_no_calls(replicas):
    replicas.threads[0].set_serving(False)
    with RewardClient(replicas.target, timeout=5) as client:
        assert served_by(replicas, client, 20) == [0, 20]


def test_a_replica_that_turns_not_serving_is_skipped_then_used_again(replicas):
    first = replicas.threads[0]
    with RewardClient(replicas.target, timeout=5) as client:
        call_until(client, lambda: all(replicas.calls()))
        first.set_serving(False)  # as a draining server does at SIGTERM
        call_until(client, lambda: served_by(replicas, client, 4)[0] == 0)
        assert served_by(replicas, client, 20) == [0, 20]
        first.set_serving(True)
        call_until(client, lambda: served_by(replicas, client, 4)[0] > 0)


def test_every_replica_not_serving_fails_unavailable(replicas):
    for thread in replicas.threads:
        thread.set_serving(False)
    with RewardClient(replicas.target, timeout=5, max_retries=0) as client:
        with pytest.raises(UnavailableError):
            client.model_info()
    assert replicas.calls() == [0, 0]


def test_retries_are_the_clients_own_and_move_to_the_other_replica(replicas):
    """No gRPC retry policy under ours: 1 + max_retries attempts in all, alternating replicas."""
    with RewardClient(replicas.target, timeout=5, max_retries=3, initial_backoff=0.01) as client:
        call_until(client, lambda: all(replicas.calls()))
        before = replicas.calls()
        for fake in replicas.fakes:
            fake.push(METHOD, *[Fail(grpc.StatusCode.UNAVAILABLE, "draining")] * 10)
        with pytest.raises(UnavailableError):
            client.model_info()
    assert [a - b for a, b in zip(replicas.calls(), before)] == [2, 2]


def test_async_client_skips_a_not_serving_replica(replicas):
    replicas.threads[1].set_serving(False)

    async def main():
        async with AsyncRewardClient(replicas.target, timeout=5) as client:
            for _ in range(20):
                await client.model_info()

    asyncio.run(main())
    assert replicas.calls() == [20, 0]


DNS_NAME = "rewardserve-replicas"
# Run in a child process whose /etc/hosts maps DNS_NAME to both replicas: the model name in each
# reply says which replica answered.
DNS_CLIENT = """
import json, sys
from rewardserve_client import RewardClient
with RewardClient(sys.argv[1], timeout=5) as client:
    print(json.dumps([client.model_info().model for _ in range(40)]))
"""


def _in_private_hosts_file(tmp_path, hosts: str, argv: list) -> subprocess.CompletedProcess:
    """Run ``argv`` in a mount namespace whose /etc/hosts is ``hosts`` (needs root and unshare)."""
    if os.geteuid() != 0 or not shutil.which("unshare"):
        pytest.skip("needs root and unshare(1) to give the client its own /etc/hosts")
    path = tmp_path / "hosts"
    path.write_text(hosts)
    script = f"mount --bind {shlex.quote(str(path))} /etc/hosts && exec {shlex.join(argv)}"
    done = subprocess.run(["unshare", "-m", "sh", "-c", script], capture_output=True, text=True,
                          timeout=60)
    if done.returncode != 0 and "mount" in done.stderr and "ermi" in done.stderr:
        pytest.skip(f"no private mount namespace here: {done.stderr.strip()}")
    return done


def test_a_dns_name_with_two_addresses_is_balanced(tmp_path):
    """``dns:///NAME:PORT`` where NAME has two addresses (127.0.0.1 and 127.0.0.2)."""
    first = ServerThread(FakeRewardService(), "127.0.0.1:0").start()
    second = ServerThread(FakeRewardService(), f"127.0.0.2:{first.port}").start()
    for name, thread in (("first", first), ("second", second)):
        thread.servicer.reply_override["GetModelInfo"] = pb.GetModelInfoResponse(model=name)
    try:
        hosts = f"127.0.0.1 localhost\n127.0.0.1 {DNS_NAME}\n127.0.0.2 {DNS_NAME}\n"
        done = _in_private_hosts_file(tmp_path, hosts, [
            sys.executable, "-c", DNS_CLIENT, f"dns:///{DNS_NAME}:{first.port}"])
    finally:
        first.stop()
        second.stop()
    assert done.returncode == 0, done.stderr
    answered_by = json.loads(done.stdout)
    assert set(answered_by) == {"first", "second"}
    last = answered_by[-10:]  # long connected by then: strict alternation
    assert last.count("first") == last.count("second") == 5
