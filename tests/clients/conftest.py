"""Fixtures of the client tests: the fake server (see fake_reward_server.py) and a fake clock."""
import pytest

from fake_reward_server import FakeRewardService, FakeTime, ServerThread


@pytest.fixture
def fake() -> FakeRewardService:
    return FakeRewardService()


@pytest.fixture
def server(fake):
    thread = ServerThread(fake).start()
    yield thread
    thread.stop()


@pytest.fixture
def fake_time() -> FakeTime:
    return FakeTime()
