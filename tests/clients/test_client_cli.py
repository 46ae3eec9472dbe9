"""The rewardserve-client command line against the fake server."""
import json

import grpc

from fake_reward_server import Fail
from rewardserve_client import cli


def test_info_prints_the_model_as_json(server, capsys):
    assert cli.main(["info", "--target", server.target]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["architecture"] == "Qwen2ForProcessRewardModel" and info["vocab_size"] == 1000


def test_chat_reward_prints_one_json_line_per_conversation(server, fake, tmp_path, capsys):
    path = tmp_path / "in.jsonl"
    lines = [[{"role": "user", "content": "a"}], {"messages": [{"role": "user", "content": "b"}]},
             [{"role": "user", "content": "c"}]]
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n\n")
    code = cli.main(["chat-reward", "--target", server.target, "--input", str(path),
                     "--batch-size", "2"])
    assert code == 0 and fake.calls("ChatReward") == 2
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["index"] for r in rows] == [0, 1, 2]
    assert [r["score"] for r in rows] == [-1.5, -0.5, -1.5]
    assert rows[0]["label_scores"] == {"LABEL_0": 0.25, "LABEL_1": 0.75} and rows[0]["request_id"]


def test_server_errors_exit_non_zero_with_a_message(server, fake, capsys):
    fake.push("GetModelInfo", Fail(grpc.StatusCode.INTERNAL, "boom"))
    assert cli.main(["info", "--target", server.target]) == 1
    assert "INTERNAL: boom" in capsys.readouterr().err


def test_malformed_input_lines_exit_2(server, tmp_path, capsys):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "not messages"}\n')
    assert cli.main(["chat-reward", "--target", server.target, "--input", str(path)]) == 2
    assert "bad.jsonl:1" in capsys.readouterr().err
