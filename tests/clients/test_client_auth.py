"""auth_token and REWARDSERVE_AUTH_TOKEN: the bearer token sent with every call, never shown."""
import asyncio
import logging

import grpc
import pytest

from fake_reward_server import Fail
from rewardserve_client import AsyncRewardClient, RewardClient, RewardServeError, cli

TOKEN = "s3cret-token.A1"
ENV = "REWARDSERVE_AUTH_TOKEN"
CONVERSATION = [{"role": "user", "content": "hi"}]


@pytest.fixture(autouse=True)
def no_token_in_environment(monkeypatch):
    monkeypatch.delenv(ENV, raising=False)


def sent_authorization(fake, method: str) -> list:
    return [r.metadata.get("authorization") for r in fake.received[method]]


def test_auth_token_is_sent_on_every_call(server, fake):
    with RewardClient(server.target, timeout=5, auth_token=TOKEN) as client:
        client.model_info()
        client.encode(["x"])
        client.chat_reward([CONVERSATION])
        list(client.stream([("a", CONVERSATION)]))
    for method in ("GetModelInfo", "Encode", "ChatReward"):
        assert sent_authorization(fake, method) == [f"Bearer {TOKEN}"], method
    assert fake.stream_metadata[-1].get("authorization") == f"Bearer {TOKEN}"


def test_async_client_sends_it_too(server, fake):
    async def main():
        async with AsyncRewardClient(server.target, timeout=5, auth_token=TOKEN) as client:
            await client.model_info()
            async with client.stream() as stream:
                await stream.score(CONVERSATION)

    asyncio.run(main())
    assert sent_authorization(fake, "GetModelInfo") == [f"Bearer {TOKEN}"]
    assert fake.stream_metadata[-1].get("authorization") == f"Bearer {TOKEN}"


def test_the_environment_is_the_fallback_read_at_construction(server, fake, monkeypatch):
    monkeypatch.setenv(ENV, "from-env")
    with RewardClient(server.target, timeout=5) as from_env, \
            RewardClient(server.target, timeout=5, auth_token=TOKEN) as explicit:
        monkeypatch.setenv(ENV, "changed-later")
        from_env.model_info()
        explicit.model_info()
    assert sent_authorization(fake, "GetModelInfo") == ["Bearer from-env", f"Bearer {TOKEN}"]


def test_no_token_sends_no_authorization(server, fake):
    with RewardClient(server.target, timeout=5) as client:
        client.model_info()
    assert sent_authorization(fake, "GetModelInfo") == [None]


def test_metadata_authorization_beats_the_environment(server, fake, monkeypatch):
    monkeypatch.setenv(ENV, "from-env")
    with RewardClient(server.target, timeout=5, metadata={"Authorization": "Bearer mine"}) as c:
        c.model_info()
    assert sent_authorization(fake, "GetModelInfo") == ["Bearer mine"]


def test_token_and_metadata_authorization_together_are_refused():
    with pytest.raises(RewardServeError, match="auth_token") as caught:
        RewardClient("127.0.0.1:1", auth_token=TOKEN, metadata={"authorization": "Bearer x"})
    assert TOKEN not in str(caught.value)


@pytest.mark.parametrize("bad", ["", "has space", "new\nline", "caf\u00e9"])
def test_malformed_tokens_are_refused_without_quoting_them(bad):
    with pytest.raises(RewardServeError, match="auth_token") as caught:
        RewardClient("127.0.0.1:1", auth_token=bad)
    assert (bad or "\x00") not in str(caught.value).replace("auth_token", "")


def test_a_malformed_environment_token_names_the_variable(monkeypatch):
    monkeypatch.setenv(ENV, "two words")
    with pytest.raises(RewardServeError, match=ENV) as caught:
        RewardClient("127.0.0.1:1")
    assert "two words" not in str(caught.value)


def test_the_token_is_not_in_reprs(server):
    with RewardClient(server.target, auth_token=TOKEN) as client:
        text = repr(client)
    assert TOKEN not in text and server.target in text and "authenticated=True" in text

    async def async_repr():
        async with AsyncRewardClient(server.target, auth_token=TOKEN) as client:
            return repr(client)

    assert TOKEN not in asyncio.run(async_repr())


def test_the_token_is_not_in_errors_or_logs(server, fake, caplog):
    caplog.set_level(logging.DEBUG)
    fake.push("GetModelInfo", Fail(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong bearer token"))
    with RewardClient(server.target, timeout=5, auth_token=TOKEN) as client:
        with pytest.raises(RewardServeError) as caught:
            client.model_info()
    error = caught.value
    assert error.code == grpc.StatusCode.UNAUTHENTICATED
    assert TOKEN not in str(error) and TOKEN not in repr(error) and TOKEN not in caplog.text


def test_cli_takes_auth_token_and_the_environment(server, fake, monkeypatch, capsys):
    assert cli.main(["info", "--target", server.target, "--auth-token", TOKEN]) == 0
    monkeypatch.setenv(ENV, "from-env")
    assert cli.main(["info", "--target", server.target]) == 0
    assert sent_authorization(fake, "GetModelInfo") == [f"Bearer {TOKEN}", "Bearer from-env"]


def test_cli_errors_do_not_show_the_token(server, fake, capsys):
    fake.push("GetModelInfo", Fail(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong bearer token"))
    assert cli.main(["info", "--target", server.target, "--auth-token", TOKEN]) == 1
    captured = capsys.readouterr()
    assert "UNAUTHENTICATED" in captured.err and TOKEN not in captured.err + captured.out


def test_cli_help_names_the_variable(capsys):
    with pytest.raises(SystemExit):
        cli.main(["info", "--help"])
    assert ENV in capsys.readouterr().out
