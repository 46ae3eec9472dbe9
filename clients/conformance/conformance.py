"""The conformance suite's Python side: the reference answers, the comparison rule, and the
Python client's runner. The Node and Go runners (clients/node/conformance/run.ts,
clients/go/cmd/conformance) implement the same rule; cases.json says what it is.

    python clients/conformance/conformance.py TARGET [REFERENCE_OUT]

writes the reference file for TARGET and runs the Python client against it.
"""
from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import grpc
from google.protobuf import json_format
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from rewardserve_client import RewardClient, RewardServeError
from rewardserve_client.v1 import reward_service_pb2 as pb
from rewardserve_client.v1 import reward_service_pb2_grpc as pb_grpc

CASES = Path(__file__).with_name("cases.json")
_REQUESTS = {"encode": pb.EncodeRequest, "chatReward": pb.ChatRewardRequest,
             "modelInfo": pb.GetModelInfoRequest, "score": pb.ScoreRequest}
_METHODS = {"encode": "Encode", "chatReward": "ChatReward", "modelInfo": "GetModelInfo", "score": "Score"}
_ZERO: tuple = (None, 0, 0.0, False, "", [], {})  # what proto3 JSON leaves out


def load_cases(path: Path = CASES) -> dict:
    return json.loads(path.read_text())


# ---------------------------------------------------------------- the comparison rule

@dataclass(frozen=True)
class Rule:
    """|a - b| <= abs + rel * |b| for numbers; keys in ``ignore`` are skipped at any depth;
    a missing key equals its proto3 default (JSON leaves defaults out)."""

    abs: float
    rel: float
    ignore: frozenset

    @classmethod
    def of(cls, suite: dict) -> "Rule":
        tol = suite["tolerance"]
        return cls(float(tol["abs"]), float(tol["rel"]), frozenset(suite["ignore"]))


def differences(expected: Any, actual: Any, rule: Rule, path: str = "$") -> list[str]:
    """Where ``actual`` departs from ``expected`` (empty: they agree)."""
    if isinstance(expected, dict) or isinstance(actual, dict):
        if expected in _ZERO and actual in _ZERO:
            return []
        if not (isinstance(expected, dict) and isinstance(actual, dict)):
            return [f"{path}: expected {expected!r}, got {actual!r}"]
        out = []
        for key in sorted(set(expected) | set(actual)):
            if key not in rule.ignore:
                out += differences(expected.get(key), actual.get(key), rule, f"{path}.{key}")
        return out
    if isinstance(expected, list) or isinstance(actual, list):
        expected, actual = expected or [], actual or []
        if not (isinstance(expected, list) and isinstance(actual, list)) or len(expected) != len(actual):
            return [f"{path}: expected {len(expected)} items, got {actual!r:.80}"]
        return [d for i, (e, a) in enumerate(zip(expected, actual)) for d in differences(e, a, rule, f"{path}[{i}]")]
    if _is_number(expected) or _is_number(actual):
        e, a = _number(expected), _number(actual)
        if e is None or a is None or not math.isclose(a, e, rel_tol=rule.rel, abs_tol=rule.abs):
            return [f"{path}: expected {expected!r}, got {actual!r}"]
        return []
    if (expected in _ZERO and actual in _ZERO) or expected == actual:
        return []
    return [f"{path}: expected {expected!r}, got {actual!r}"]


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _number(value: Any) -> float | None:
    if value is None:
        return 0.0  # a left-out default
    if isinstance(value, str):  # proto3 JSON writes 64-bit integers and NaN/Infinity as strings
        try:
            return float(value)
        except ValueError:
            return None
    return float(value) if _is_number(value) else None


# ---------------------------------------------------------------- the reference

def _as_json(message) -> Any:
    return json_format.MessageToDict(message)


def _violated_field(error: grpc.RpcError) -> str:
    status = rpc_status.from_call(error)
    for detail in status.details if status else ():
        bad = error_details_pb2.BadRequest()
        if detail.Unpack(bad) and bad.field_violations:
            return bad.field_violations[0].field
    return ""


def reference(target: str, suite: dict) -> dict:
    """Every case's answer from the server through the bare generated stubs (no client library):
    ``{"ok": json}`` or ``{"code", "field", "message"}``; stream cases map item ids to lists."""
    out = {}
    with grpc.insecure_channel(target, options=[("grpc.max_receive_message_length", 256 << 20)]) as channel:
        stub = pb_grpc.RewardServiceStub(channel)
        for case in suite["cases"]:
            if case["call"] == "streamReward":
                out[case["name"]] = _stream_reference(stub, case["request"])
                continue
            request = json_format.ParseDict(case["request"], _REQUESTS[case["call"]]())
            try:
                out[case["name"]] = {"ok": _as_json(getattr(stub, _METHODS[case["call"]])(request, timeout=60))}
            except grpc.RpcError as error:
                out[case["name"]] = {"code": error.code().name, "field": _violated_field(error),
                                     "message": error.details()}
    return out


def _stream_reference(stub, request: dict) -> dict:
    messages = [pb.StreamRewardRequest(options=json_format.ParseDict(request.get("options", {}), pb.StreamRewardOptions()))]
    messages += [pb.StreamRewardRequest(items=[json_format.ParseDict(item, pb.StreamItem())]) for item in request["items"]]
    answers: dict = {}
    for answer in stub.StreamReward(iter(messages), timeout=60):
        entry = ({"ok": _as_json(answer.result)} if answer.HasField("result") else
                 {"code": grpc.StatusCode(_code_by_number(answer.error.code)).name, "message": answer.error.message})
        answers.setdefault(answer.id, []).append(entry)
    return answers


def _code_by_number(number: int) -> Any:
    return next(code.value for code in grpc.StatusCode if code.value[0] == number)


def check_reference(suite: dict, ref: dict) -> list[str]:
    """The case file's expectations checked against the server itself."""
    problems = []
    for case in suite["cases"]:
        got, want = ref[case["name"]], case["expect"]
        if "answers" in want:
            for item_id, item_want in want["answers"].items():
                entries = got.get(item_id, [])
                if len(entries) != 1 or not _outcome_matches(item_want, entries[0]):
                    problems.append(f"{case['name']}[{item_id!r}]: expected {item_want}, server said {entries}")
        elif not _outcome_matches(want, got):
            problems.append(f"{case['name']}: expected {want}, server said {json.dumps(got)[:300]}")
    return problems


def _outcome_matches(want: Any, got: dict) -> bool:
    if want == "ok" or (isinstance(want, dict) and want.get("ok")):
        count = want.get("results") if isinstance(want, dict) else None
        return "ok" in got and (count is None or len(got["ok"].get("results", [])) == count)
    return got.get("code") == want["code"] and (got.get("field") == want["field"] or names(got.get("message", ""), want["field"]))


def names(message: str, field: str) -> bool:
    """Whether an error message names ``field``: it starts with it or contains ``field:``."""
    return message.startswith(field) or f"{field}:" in message


# ---------------------------------------------------------------- the Python client's runner

_TASKS = {f"POOLING_TASK_{name.upper()}": name for name in ("classify", "token_classify", "embed", "token_embed")}


def _input(item: dict) -> Any:
    return item["text"] if "text" in item else list(item.get("tokenIds", {}).get("ids", []))


def _policy(value: dict) -> Any:
    text = {"text": value["text"]} if "text" in value else {"token_ids": value.get("tokenIds", {}).get("ids", [])}
    return {**text, "tokenizer": value.get("tokenizer", "")}


def _conversation(conv: dict) -> Any:
    out: dict = {"messages": conv.get("messages", [])}
    for key in ("response", "rendered"):
        if key in conv:
            out[key] = _policy(conv[key])
    return out


def _encode_kwargs(request: dict) -> dict:
    pooling, truncation = request.get("pooling", {}), request.get("truncation", {})
    kwargs = {"task": _TASKS.get(request.get("task"), None),
              "pooling_type": pooling["poolingType"].removeprefix("POOLING_TYPE_").lower() if "poolingType" in pooling else None,
              "use_activation": pooling.get("useActivation"), "normalize": pooling.get("normalize"),
              "dimensions": pooling.get("dimensions"), "returned_token_ids": pooling.get("returnedTokenIds"),
              "truncate_prompt_tokens": truncation.get("truncatePromptTokens"),
              "add_special_tokens": request.get("addSpecialTokens")}
    return {k: v for k, v in kwargs.items() if v is not None or k == "task"}


def _chat_kwargs(request: dict) -> dict:
    truncation = request.get("truncation", {})
    groups = [{"prompt": g.get("prompt", []), "responses": [_policy(r) for r in g.get("responses", [])],
               "group_id": g.get("groupId", "")} for g in request.get("groups", [])]
    kwargs = {"groups": groups, "chat_template": request.get("chatTemplate"),
              "chat_template_kwargs": request.get("chatTemplateKwargs"),
              "add_generation_prompt": request.get("addGenerationPrompt", False),
              "truncate_prompt_tokens": truncation.get("truncatePromptTokens")}
    return {k: v for k, v in kwargs.items() if v is not None}


def _score_kwargs(request: dict) -> dict:
    truncation = request.get("truncation", {})
    kwargs = {"top_n": request.get("topN", 0), "truncate_prompt_tokens": truncation.get("truncatePromptTokens"),
              "instruction": request.get("instruction"), "priority": request.get("priority", 0)}
    return {k: v for k, v in kwargs.items() if v is not None}


def _tensor(data) -> dict:
    return {"shape": list(data.shape), "values": [float(v) for v in data.ravel().tolist()]}


def _labels(scores: dict) -> list:
    return [{"label": label, "score": float(score)} for label, score in scores.items()]


def _usage(usage) -> dict:
    return {"promptTokens": usage.prompt_tokens, "numSequences": usage.num_sequences}


def _chat_result(r) -> dict:
    out = {"index": r.index, "score": float(r.score), "labelScores": _labels(r.label_scores),
           "stepScores": [{"position": s.position, "score": float(s.score), "labelScores": _labels(s.label_scores)}
                          for s in r.step_scores],
           "numTokens": r.num_tokens, "truncated": r.truncated, "responseIndex": r.response_index,
           "groupId": r.group_id}
    if r.group_index is not None:
        out["groupIndex"] = r.group_index
    return out


def _encode_json(reply) -> dict:
    results = [{"index": r.index, "data": _tensor(r.data), "numTokens": r.num_tokens, "truncated": r.truncated,
                "pooledPositions": list(r.pooled_positions)} for r in reply.results]
    return {"model": reply.model, "task": f"POOLING_TASK_{reply.task.upper()}", "results": results,
            "usage": _usage(reply.usage)}


def _chat_json(reply) -> dict:
    return {"model": reply.model, "results": [_chat_result(r) for r in reply.results], "usage": _usage(reply.usage)}


def _score_json(reply) -> dict:
    results = [{"index": r.index, "score": float(r.score), "numTokens": r.num_tokens, "truncated": r.truncated,
                **({"logit": float(r.logit)} if r.logit is not None else {})} for r in reply.results]
    return {"model": reply.model, "method": f"SCORE_METHOD_{reply.method.upper()}", "results": results,
            "usage": _usage(reply.usage)}


def _model_info_json(info) -> dict:
    return {"model": info.model, "architecture": info.architecture,
            "tasks": [f"POOLING_TASK_{t.upper()}" for t in info.tasks], "labels": list(info.labels),
            "maxModelLen": info.max_model_len, "dtype": info.dtype, "hiddenSize": info.hidden_size,
            "vocabSize": info.vocab_size, "hasChatTemplate": info.has_chat_template,
            "chatTemplateSha256": info.chat_template_sha256, "tokenizerSha256": info.tokenizer_sha256,
            "serverVersion": info.server_version, "isCausal": info.is_causal,
            "defaultPooling": [{"task": f"POOLING_TASK_{task.upper()}", "poolingType": f"POOLING_TYPE_{kind.upper()}"}
                               for task, kind in info.default_pooling.items()],
            "policyTokenizers": [{"name": p.name, "tokenizerSha256": p.tokenizer_sha256,
                                  "chatTemplateSha256": p.chat_template_sha256, "vocabSize": p.vocab_size,
                                  "sharesVocab": p.shares_vocab, "parsesRendered": p.parses_rendered}
                                 for p in info.policy_tokenizers],
            "streamMaxInFlight": info.stream_max_in_flight}


def _outcome(call: Callable[[], Any]) -> dict:
    """A Python client call as {"ok": json} or {"code", "field", "message"}."""
    try:
        return {"ok": call()}
    except RewardServeError as error:
        return {"code": error.code.name, "field": "", "message": error.details}
    except (ValueError, TypeError) as error:  # refused locally, before sending
        return {"code": "INVALID_ARGUMENT", "field": "", "message": str(error)}


def _python_call(client: RewardClient, case: dict) -> Any:
    request = case["request"]
    if case["call"] == "modelInfo":
        return _outcome(lambda: _model_info_json(client.model_info()))
    if case["call"] == "encode":
        inputs = [_input(i) for i in request.get("inputs", [])]
        return _outcome(lambda: _encode_json(client.encode(inputs, **_encode_kwargs(request))))
    if case["call"] == "chatReward":
        conversations = [_conversation(c) for c in request.get("conversations", [])]
        return _outcome(lambda: _chat_json(client.chat_reward(conversations, **_chat_kwargs(request))))
    if case["call"] == "score":
        query, documents = _input(request.get("query", {})), [_input(d) for d in request.get("documents", [])]
        return _outcome(lambda: _score_json(client.score(query, documents, **_score_kwargs(request))))
    items = [(i.get("id", ""), _conversation(i["conversation"]) if "conversation" in i else None, i.get("groupId", ""))
             for i in request["items"]]
    options = request.get("options", {})
    answers: dict = {}
    for answer in client.stream(items, max_in_flight=options.get("maxInFlight", 0)):
        entry = ({"ok": _chat_result(answer.result)} if answer.ok else
                 {"code": answer.error.code.name, "message": answer.error.details})
        answers.setdefault(answer.id, []).append(entry)
    return answers


def compare_case(case: dict, ref: Any, got: Any, rule: Rule) -> list[str]:
    """A client's outcome of ``case`` against the reference and the case's expectation."""
    want = case["expect"]
    if "answers" in want:
        problems = []
        for item_id in sorted(set(ref) | set(got)):
            expected, actual = ref.get(item_id, []), got.get(item_id, [])
            if len(expected) != len(actual):
                problems.append(f"item {item_id!r}: {len(actual)} answers, expected {len(expected)}")
                continue
            for e, a in zip(expected, actual):
                if "ok" in e:
                    problems += [f"item {item_id!r}: {d}" for d in differences(e["ok"], a.get("ok"), rule)]
                elif a.get("code") != e["code"] or not names(a.get("message", ""), want["answers"][item_id]["field"]):
                    problems.append(f"item {item_id!r}: expected {want['answers'][item_id]}, got {a}")
        return problems
    if "ok" in ref:
        if "ok" not in got:
            return [f"expected success, got {got}"]
        return differences(ref["ok"], got["ok"], rule)
    if not _outcome_matches(want, got):
        return [f"expected {want}, got {got}"]
    return []


def run_python(target: str, suite: dict, ref: dict) -> tuple[int, list[str]]:
    """Run every case with the Python client; returns (passed, failure descriptions)."""
    rule, passed, failures = Rule.of(suite), 0, []
    with RewardClient(target, timeout=60) as client:
        for case in suite["cases"]:
            problems = compare_case(case, ref[case["name"]], _python_call(client, case), rule)
            if problems:
                failures.append(f"{case['name']}: " + "; ".join(problems[:5]))
            else:
                passed += 1
    return passed, failures


def main(argv: list[str]) -> int:
    target = argv[1]
    suite = load_cases()
    ref = reference(target, suite)
    if len(argv) > 2:
        Path(argv[2]).write_text(json.dumps(ref))
    problems = check_reference(suite, ref)
    passed, failures = run_python(target, suite, ref)
    for line in problems + failures:
        print("FAIL", line)
    print(f"{passed} passed, {len(failures)} failed")
    return 1 if problems or failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
