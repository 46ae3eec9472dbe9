"""One error family: every refusal by the client is an InvalidArgumentError (a RewardServeError)
naming the parameter and the item, raised before anything is sent, by both clients and the CLI."""
import asyncio
import json

import grpc
import pytest

from fake_reward_server import Fail
from rewardserve_client import (AsyncRewardClient, InvalidArgumentError, RewardClient,
                                RewardServeError, cli)

USER = {"role": "user", "content": "q"}
GOOD = [USER, {"role": "assistant", "content": "a"}]

# (method, args, kwargs, the start of the message)
REFUSALS = [
    ("encode", (["x"],), {"task": "clasify"},
     "task: unknown value 'clasify'; expected one of: classify, token_classify, embed, token_embed"),
    ("encode", (["x"],), {"task": 1}, "task: expected a str, got int"),
    ("encode", ([],), {}, "inputs: must not be empty (encode)"),
    ("encode", ([1, 2, 3],), {}, "encode: inputs is a flat list of ints"),
    ("encode", (5,), {}, "encode: inputs must be a list of texts or token id lists, got int"),
    ("encode", (["a", 5],), {}, "inputs[1]: expected str, a sequence of token ids or a conversation, got int"),
    ("encode", (["a", {"text": "x"}],), {}, "inputs[1]: unknown keys ['text']; expected 'messages'"),
    ("encode", (["a", [USER, {"role": "assistant"}]],), {}, "inputs[1].messages[1]: missing 'content'"),
    ("encode", ([GOOD],), {"chat_template_kwargs": ["x"]}, "chat_template_kwargs: expected a dict, got list"),
    ("encode", ([GOOD],), {"chat_template": 5}, "chat_template: expected a str, got int"),
    ("encode", ([[1, -1]],), {}, "inputs[0].token_ids[1]: token ids are integers in [0, 2**32), got -1"),
    ("encode", ([[1, "2"]],), {}, "inputs[0].token_ids[1]: token ids are integers in [0, 2**32), got '2'"),
    ("encode", (["x"],), {"pooling_type": "max"}, "pooling_type: unknown value 'max'; expected one of: "),
    ("encode", (["x"],), {"truncation_side": "middle"}, "truncation_side: unknown value 'middle'"),
    ("encode", (["x"],), {"truncate_prompt_tokens": "10"}, "truncate_prompt_tokens: invalid value '10' (str)"),
    ("encode", (["x"],), {"priority": "high"}, "priority: invalid value 'high' (str)"),
    ("encode", (["x"],), {"step_tag_id": -1}, "step_tag_id: invalid value -1 (int)"),
    ("encode", (["x"],), {"dimensions": 2.5}, "dimensions: invalid value 2.5 (float)"),
    ("encode", (["x"],), {"returned_token_ids": [1, "a"]}, "returned_token_ids[1]: token ids are integers"),
    ("encode", (["x"],), {"returned_token_ids": 3}, "returned_token_ids: expected a sequence of token ids"),
    ("encode", (["x"],), {"add_special_tokens": "no"}, "add_special_tokens: invalid value 'no' (str)"),
    ("encode", (["x"],), {"request_id": 7}, "request_id: expected a str, got int"),
    ("encode", (["x"],), {"timeout": 0}, "timeout: must be a positive number of seconds or None, got 0"),
    ("reward", ([],), {}, "inputs: must not be empty (reward)"),
    ("chat_reward", ([],), {}, "conversations: must not be empty when no groups are given (chat_reward)"),
    ("chat_reward", ("hello",), {}, "conversations: expected a list, got str"),
    ("chat_reward", ([GOOD, [USER, {"role": "assistant"}]],), {},
     "conversations[1].messages[1]: missing 'content'"),
    ("chat_reward", ([[{"content": "x"}]],), {}, "conversations[0].messages[0]: missing 'role'"),
    ("chat_reward", ([[{"role": "user", "content": None}]],), {},
     "conversations[0].messages[0].content: expected a str, got NoneType"),
    ("chat_reward", ([[("user", "hi")]],), {},
     "conversations[0].messages[0]: expected a {'role': ..., 'content': ...} dict, got tuple"),
    ("chat_reward", (["just text"],), {}, "conversations[0]: expected a list of messages or a dict, got str"),
    ("chat_reward", ([{"messages": [USER], "answer": "4"}],), {}, "conversations[0]: unknown keys ['answer']"),
    ("chat_reward", ([{"messages": "hi"}],), {}, "conversations[0].messages: expected a list of messages, got str"),
    ("chat_reward", ([{"messages": [USER], "response": {"text": "4", "token_ids": [4]}}],), {},
     "conversations[0].response: set exactly one of text and token_ids"),
    ("chat_reward", ([{"messages": [USER], "response": 4}],), {},
     "conversations[0].response: expected text, token ids or PolicyText, got int"),
    ("chat_reward", ([{"rendered": [1, -5]}],), {}, "conversations[0].rendered.token_ids[1]: token ids"),
    ("chat_reward", ([{"rendered": {"text": "x", "tokenizer": 3}}],), {},
     "conversations[0].rendered.tokenizer: expected a str, got int"),
    ("chat_reward", (), {"groups": [{"prompt": [USER]}]}, "groups[0]: missing 'responses'"),
    ("chat_reward", (), {"groups": [{"prompt": [USER], "responses": ["a", 5]}]},
     "groups[0].responses[1]: expected text, token ids or PolicyText, got int"),
    ("chat_reward", (), {"groups": [{"prompt": [{"role": "user"}], "responses": ["a"]}]},
     "groups[0].prompt[0]: missing 'content'"),
    ("chat_reward", (), {"groups": [{"prompt": [USER], "responses": ["a"], "group_id": 9}]},
     "groups[0].group_id: expected a str, got int"),
    ("chat_reward", ([GOOD],), {"chat_template_kwargs": {"x": object()}},
     "chat_template_kwargs['x']: not representable as JSON (object)"),
    ("chat_reward", ([GOOD],), {"chat_template_kwargs": ["x"]}, "chat_template_kwargs: expected a dict, got list"),
    ("chat_reward", ([GOOD],), {"add_generation_prompt": "yes"}, "add_generation_prompt: invalid value 'yes'"),
    ("chat_reward", ([GOOD],), {"chat_template": 5}, "chat_template: invalid value 5 (int)"),
    ("score", ("q", ["d"]), {"top_n": -1}, "top_n: must be a non-negative integer, got -1"),
    ("score", ("q", ["d"]), {"top_n": True}, "top_n: must be a non-negative integer, got True"),
    ("score", ("q", []), {}, "documents: must not be empty (score)"),
    ("score", ("q", 5), {}, "documents: expected a list of texts or token id lists, got int"),
    ("score", ({"text": "q"}, ["d"]), {}, "query: expected str or a sequence of token ids, got dict"),
    ("score", ("q", ["d", [1, -2]]), {}, "documents[1].token_ids[1]: token ids are integers in [0, 2**32)"),
    ("score", ("q", ["d"]), {"instruction": 3}, "instruction: expected a str, got int"),
    ("score", ("q", ["d"]), {"truncation_side": "middle"}, "truncation_side: unknown value 'middle'"),
    ("score", ("q", ["d"]), {"priority": "high"}, "priority: invalid value 'high' (str)"),
    ("score", ("q", ["d"]), {"timeout": 0}, "timeout: must be a positive number of seconds or None, got 0"),
    ("model_info", (), {"timeout": -1}, "timeout: must be a positive number of seconds or None, got -1"),
]
IDS = [f"{method}-{expected.split(':')[0]}-{n}" for n, (method, _, _, expected) in enumerate(REFUSALS)]

SENT = ("Encode", "Reward", "ChatReward", "GetModelInfo", "Score")


def check(error: BaseException, expected: str) -> None:
    assert isinstance(error, InvalidArgumentError) and isinstance(error, RewardServeError)
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details.startswith(expected), error.details
    assert str(error) == f"INVALID_ARGUMENT: {error.details}"  # nothing was sent: no request id


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("method, args, kwargs, expected", REFUSALS, ids=IDS)
def test_blocking_client_refusals_name_parameter_and_item(server, fake, method, args, kwargs, expected):
    with RewardClient(server.target, timeout=5) as client:
        with pytest.raises(RewardServeError) as caught:
            getattr(client, method)(*args, **kwargs)
    check(caught.value, expected)
    assert sum(fake.calls(m) for m in SENT) == 0


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("method, args, kwargs, expected", REFUSALS, ids=IDS)
def test_async_client_refusals_are_the_same(server, fake, method, args, kwargs, expected):
    async def main():
        async with AsyncRewardClient(server.target, timeout=5) as client:
            with pytest.raises(RewardServeError) as caught:
                await getattr(client, method)(*args, **kwargs)
        return caught.value

    check(asyncio.run(main()), expected)
    assert sum(fake.calls(m) for m in SENT) == 0


def test_invalid_argument_is_still_a_value_error():
    """Handlers written for the client's earlier plain ValueError keep working."""
    with pytest.raises(ValueError):
        RewardClient("127.0.0.1:1").encode(["x"], task="clasify")


@pytest.mark.parametrize("kwargs, expected", [
    ({"timeout": -1}, "timeout: must be a positive number of seconds or None, got -1"),
    ({"max_retries": -1}, "max_retries: must be an integer of at least 0, got -1"),
    ({"jitter": 2}, "jitter: must be a number in [0.0, 1.0], got 2"),
    ({"initial_backoff": "fast"}, "initial_backoff: must be a number at least 0.0, got 'fast'"),
    ({"backoff_multiplier": 0.5}, "backoff_multiplier: must be a number at least 1.0, got 0.5"),
])
@pytest.mark.parametrize("cls", [RewardClient, AsyncRewardClient])
def test_constructor_refusals_name_the_argument(cls, kwargs, expected):
    with pytest.raises(InvalidArgumentError) as caught:
        cls("127.0.0.1:1", **kwargs)
    check(caught.value, expected)


def test_malformed_metadata_is_refused():
    with pytest.raises(InvalidArgumentError, match=r"metadata\[0\]: expected a \(key, value\) pair"):
        RewardClient("127.0.0.1:1", metadata=["x-team"])


def test_a_target_that_is_not_a_string_is_refused():
    with pytest.raises(InvalidArgumentError, match="target: expected 'host:port'"):
        RewardClient(("127.0.0.1", 50051))


@pytest.mark.parametrize("kwargs, expected", [
    ({"max_in_flight": 0}, "max_in_flight: must be an integer of at least 1, got 0"),
    ({"timeout": "soon"}, "timeout: must be a positive number of seconds or None, got 'soon'"),
    ({"truncation_side": "up"}, "truncation_side: unknown value 'up'"),
])
def test_stream_option_refusals_in_both_clients(server, kwargs, expected):
    with RewardClient(server.target) as client:
        with pytest.raises(InvalidArgumentError) as caught:
            client.stream([("a", GOOD)], **kwargs)
    check(caught.value, expected)

    async def main():
        async with AsyncRewardClient(server.target) as client:
            with pytest.raises(InvalidArgumentError) as caught:
                client.stream(**kwargs)
        return caught.value

    check(asyncio.run(main()), expected)


def test_blocking_stream_answers_items_before_a_bad_one_then_raises_it(server, fake):
    items = [("a", GOOD), ("b", [USER, {"role": "assistant"}]), ("c", GOOD)]
    answered = []
    with RewardClient(server.target, timeout=5) as client:
        with pytest.raises(InvalidArgumentError) as caught:
            for answer in client.stream(items):
                answered.append(answer.id)
    check(caught.value, "items[1].conversation.messages[1]: missing 'content'")
    assert answered == ["a"]  # "c" was never sent


def test_blocking_stream_refuses_items_that_are_not_tuples(server):
    with RewardClient(server.target, timeout=5) as client:
        with pytest.raises(InvalidArgumentError) as caught:
            list(client.stream([GOOD]))
    check(caught.value, "items[0]: expected an (id, conversation) or (id, conversation, group_id) tuple")


def test_a_failing_item_iterator_reaches_the_caller_as_itself(server):
    def items():
        yield "a", GOOD
        raise KeyError("the trainer's own bug")

    with RewardClient(server.target, timeout=5) as client:
        with pytest.raises(KeyError, match="the trainer's own bug"):
            list(client.stream(items()))


def test_async_stream_submit_refusals(server):
    async def main():
        async with AsyncRewardClient(server.target, timeout=5) as client:
            stream = client.stream()
            with pytest.raises(RewardServeError) as not_open:
                await stream.submit(GOOD)
            async with stream:
                with pytest.raises(InvalidArgumentError) as bad:
                    await stream.submit([USER, {"role": "assistant"}], id="b")
                first = await stream.submit(GOOD, id="a")
                with pytest.raises(InvalidArgumentError) as duplicate:
                    await stream.submit(GOOD, id="a")
                assert (await first).score == 2.0  # the stream goes on
        return not_open.value, bad.value, duplicate.value

    not_open, bad, duplicate = asyncio.run(main())
    assert not_open.code == grpc.StatusCode.FAILED_PRECONDITION and "submit: the stream is not open" in str(not_open)
    check(bad, "submit(id='b').conversation.messages[1]: missing 'content'")
    check(duplicate, "submit: id 'a' is already in flight")


def test_cli_refuses_a_bad_conversation_naming_file_line_and_message(server, fake, tmp_path, capsys):
    path = tmp_path / "in.jsonl"
    path.write_text(json.dumps(GOOD) + "\n" + json.dumps([USER, {"role": "assistant"}]) + "\n")
    assert cli.main(["chat-reward", "--target", server.target, "--input", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"INVALID_ARGUMENT: --input {path}:2: conversation.messages[1]: missing 'content'" in err
    assert "Traceback" not in err and fake.calls("ChatReward") == 0


def test_cli_refuses_a_line_that_is_not_json(server, tmp_path, capsys):
    path = tmp_path / "in.jsonl"
    path.write_text("{not json\n")
    assert cli.main(["chat-reward", "--target", server.target, "--input", str(path)]) == 2
    assert f"--input {path}:1: not JSON" in capsys.readouterr().err


def test_cli_refuses_bad_options_with_exit_2(server, capsys):
    assert cli.main(["info", "--target", server.target, "--timeout", "0"]) == 2
    assert "timeout: must be a positive number" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exited:
        cli.main(["chat-reward", "--input", "-", "--batch-size", "0"])
    assert exited.value.code == 2 and "--batch-size: must be at least 1" in capsys.readouterr().err


def test_cli_exits_2_when_the_server_refuses_the_input(server, fake, tmp_path, capsys):
    fake.push("ChatReward", Fail(
        grpc.StatusCode.INVALID_ARGUMENT, "conversations[0].messages[0].role: unknown role 'robot'"))
    path = tmp_path / "in.jsonl"
    path.write_text(json.dumps([{"role": "robot", "content": "x"}]) + "\n")
    assert cli.main(["chat-reward", "--target", server.target, "--input", str(path)]) == 2
    assert "unknown role 'robot'" in capsys.readouterr().err


def test_trainer_adapter_refusals_are_in_the_family_too():
    from rewardserve_client.integrations.trl import build_items

    with pytest.raises(InvalidArgumentError, match="prompts: 2 prompts but 1 completions"):
        build_items(["p", "q"], ["c"])
    with pytest.raises(InvalidArgumentError, match="completion_ids: 2 completion_ids but 1 completions"):
        build_items(["p"], ["c"], completion_ids=[[1], [2]])
    with pytest.raises(InvalidArgumentError, match="prompt: expected a text or a list of messages, got int"):
        build_items([3], ["c"])
