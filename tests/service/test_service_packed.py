"""The wire walk (service/packed.py): large packed token ids are cut out of a request's bytes and
counted without decoding; the rest decodes as the message without them; anything the walk cannot
read exactly falls back to decoding the whole message (None)."""
from __future__ import annotations

import pytest
from rewardserve_client.v1 import reward_service_pb2 as pb

from rewardserve.engine.api import InvalidInputError
from rewardserve.service import packed

ENCODE, REWARD, SCORE = (cls.DESCRIPTOR.full_name for cls in (pb.EncodeRequest, pb.RewardRequest, pb.ScoreRequest))
# Ids of 1 to 3 bytes each, ~1.3 MB in all: past the walk's threshold, past the cut's.
BIG = [(i * 7919) % 300_000 for i in range(500_000)]
SMALL = [5, 300, 70_000]


def ids_message(ids: list[int]) -> pb.TokenIds:
    return pb.TokenIds(ids=ids)


def _unknown(number: int, payload: bytes) -> bytes:
    """A length-delimited record of a field the schema does not have."""
    return packed.varint(number << 3 | 2) + packed.varint(len(payload)) + payload


def check_cut(cut: packed.PackedIds, ids: list[int]) -> None:
    assert len(cut) == len(ids)
    assert list(cut) == ids
    assert cut[:3] == ids[:3] and cut[-4:] == ids[-4:] and cut[len(ids) - 33:] == ids[len(ids) - 33:]
    assert cut[0] == ids[0] and cut[-1] == ids[-1] and cut[1000] == ids[1000]
    assert cut[10:20] == ids[10:20] and cut[::1000] == ids[::1000]


def test_encode_inputs_cut_counted_and_the_rest_decodes_as_the_message_without_them():
    request = pb.EncodeRequest(
        task=pb.POOLING_TASK_CLASSIFY, request_id="r", truncation=pb.Truncation(truncate_prompt_tokens=-1),
        inputs=[pb.EncodeInput(text="a"), pb.EncodeInput(token_ids=ids_message(BIG)),
                pb.EncodeInput(token_ids=ids_message(SMALL)), pb.EncodeInput(token_ids=pb.TokenIds()),
                pb.EncodeInput(token_ids=ids_message(BIG[::-1])),
                pb.EncodeInput(conversation=pb.Conversation(
                    messages=[pb.ChatMessage(role="user", content="hi")],
                    response=pb.PolicyText(token_ids=ids_message(BIG[:40_000]))))])
    stripped = packed.strip(ENCODE, request.SerializeToString())
    assert stripped is not None and set(stripped.ids) == {("inputs", 1, "token_ids"), ("inputs", 4, "token_ids")}
    check_cut(stripped.ids[("inputs", 1, "token_ids")], BIG)
    check_cut(stripped.ids[("inputs", 4, "token_ids")], BIG[::-1])
    expected = pb.EncodeRequest()
    expected.CopyFrom(request)
    expected.inputs[1].token_ids.ClearField("ids")
    expected.inputs[4].token_ids.ClearField("ids")
    rest = pb.EncodeRequest.FromString(stripped.rest)
    assert rest == expected and rest.inputs[1].WhichOneof("input") == "token_ids"  # small ids, nested ones: kept


def test_reward_and_score_fields_are_keyed_by_where_the_engine_reads_them():
    reward = pb.RewardRequest(inputs=[pb.EncodeInput(text="x"), pb.EncodeInput(token_ids=ids_message(BIG))])
    stripped = packed.strip(REWARD, reward.SerializeToString())
    assert set(stripped.ids) == {("inputs", 1, "token_ids")}
    score = pb.ScoreRequest(query=pb.ScoreInput(token_ids=ids_message(BIG)), top_n=2,
                            documents=[pb.ScoreInput(text="d"), pb.ScoreInput(token_ids=ids_message(BIG[1:]))])
    stripped = packed.strip(SCORE, score.SerializeToString())
    assert set(stripped.ids) == {("query", "token_ids"), ("documents", 1, "token_ids")}
    check_cut(stripped.ids[("documents", 1, "token_ids")], BIG[1:])
    rest = pb.ScoreRequest.FromString(stripped.rest)
    assert rest.top_n == 2 and rest.documents[0].text == "d" and not rest.query.token_ids.ids


def test_unknown_fields_are_kept_and_skipped():
    item = pb.EncodeInput(token_ids=ids_message(BIG)).SerializeToString() + _unknown(99, b"zz")
    raw = (pb.EncodeRequest(request_id="u").SerializeToString() + _unknown(50, b"x" * 10)
           + packed.varint(2 << 3 | 2) + packed.varint(len(item)) + item + b"\xa8\x06\x07")  # + field 101 varint
    stripped = packed.strip(ENCODE, raw)
    check_cut(stripped.ids[("inputs", 0, "token_ids")], BIG)
    assert pb.EncodeRequest.FromString(stripped.rest).request_id == "u"


def test_every_varint_length_is_counted():
    ids = [0, 127, 128, 16_383, 16_384, 2**21, 2**28, 2**32 - 1] * 60_000  # ~1.4 MB
    stripped = packed.strip(ENCODE, pb.EncodeRequest(inputs=[pb.EncodeInput(token_ids=ids_message(ids))])
                            .SerializeToString())
    check_cut(stripped.ids[("inputs", 0, "token_ids")], ids)


def _record(number: int, payload: bytes) -> bytes:
    return packed.varint(number << 3 | 2) + packed.varint(len(payload)) + payload


def _fallbacks() -> dict[str, tuple[str, bytes]]:
    whole = pb.EncodeRequest(inputs=[pb.EncodeInput(token_ids=ids_message(BIG))]).SerializeToString()
    item = pb.EncodeInput(token_ids=ids_message(BIG)).SerializeToString()
    query = _record(1, pb.ScoreInput(token_ids=ids_message(BIG)).SerializeToString())
    twice_ids = pb.TokenIds(ids=BIG).SerializeToString() * 2  # two packed records: protobuf concatenates
    unpacked = b"".join(b"\x08" + packed.varint(i) for i in BIG)
    return {
        "truncated bytes": (ENCODE, whole[:-3]),
        "cut inside the outer length": (ENCODE, whole[:len(whole) // 2]),
        "text after token_ids (a oneof: the last wins)": (ENCODE, _record(2, item + b"\x0a\x01t")),
        "token_ids twice in one input (merged)": (ENCODE, _record(2, item + _record(2, b""))),
        "query twice (merged)": (SCORE, query + query),
        "ids split in two packed records": (ENCODE, _record(2, _record(2, twice_ids))),
        "unpacked ids": (ENCODE, _record(2, _record(2, unpacked))),
        "too small to walk": (ENCODE, pb.EncodeRequest(inputs=[pb.EncodeInput(token_ids=ids_message(SMALL))])
                              .SerializeToString()),
        "too many records": (ENCODE, pb.EncodeRequest(inputs=[pb.EncodeInput(text="a")] * (packed.MAX_RECORDS + 1)
                                                      + [pb.EncodeInput(token_ids=ids_message(BIG))]).SerializeToString()),
        "a packed field ending inside a varint": (ENCODE, _record(2, _record(2, _record(1, b"\x01" * 1_100_000 + b"\x81")))),
        "a group wire type": (ENCODE, b"\x0b" + whole),
        "a varint past the end": (ENCODE, whole + b"\x80"),
    }


@pytest.mark.parametrize("case", sorted(_fallbacks()))
def test_what_the_walk_cannot_read_exactly_is_decoded_whole(case):
    name, raw = _fallbacks()[case]
    assert packed.strip(name, raw) is None


def test_one_query_is_cut_where_two_are_not():
    query = _record(1, pb.ScoreInput(token_ids=ids_message(BIG)).SerializeToString())
    assert set(packed.strip(SCORE, query).ids) == {("query", "token_ids")}


def test_only_requests_with_engine_read_ids_are_walked():
    chat = pb.ChatRewardRequest(conversations=[pb.Conversation(
        messages=[pb.ChatMessage(role="user", content="x")], response=pb.PolicyText(token_ids=ids_message(BIG)))])
    assert packed.strip(pb.ChatRewardRequest.DESCRIPTOR.full_name, chat.SerializeToString()) is None


def test_ids_protobuf_would_refuse_are_the_engines_invalid_input_when_read():
    overlong = b"\x81" * 11 + b"\x01"  # an 12-byte varint: protobuf refuses it
    payload = b"\x01" * 1_100_000 + overlong + b"\x02" * 5
    stripped = packed.strip(ENCODE, _record(2, _record(2, _record(1, payload))))
    cut = stripped.ids[("inputs", 0, "token_ids")]
    assert len(cut) == 1_100_006 and cut[:3] == [1, 1, 1] and cut[-5:] == [2] * 5
    with pytest.raises(InvalidInputError, match=r"inputs\[0\]: token_ids: not a decodable"):
        list(cut)


def test_an_over_long_varint_in_the_read_window_is_named_too():
    payload = b"\x81" * 11 + b"\x01" + b"\x02" * 1_100_000
    cut = packed.strip(ENCODE, _record(2, _record(2, _record(1, payload)))).ids[("inputs", 0, "token_ids")]
    assert cut[-3:] == [2, 2, 2]
    with pytest.raises(InvalidInputError, match=r"inputs\[0\]: token_ids: not a decodable"):
        cut[:1]


def test_mutated_and_truncated_large_messages_never_break_the_walk():
    import random

    rng = random.Random(20)
    valid = pb.EncodeRequest(request_id="m", truncation=pb.Truncation(truncate_prompt_tokens=4),
                             inputs=[pb.EncodeInput(text="a"), pb.EncodeInput(token_ids=ids_message(BIG)),
                                     pb.EncodeInput(token_ids=ids_message(SMALL))]).SerializeToString()
    edges = [*range(48), *range(len(valid) - 48, len(valid))]  # the records' tags and lengths
    for case in range(300):
        raw = bytearray(valid)
        for _ in range(rng.randint(1, 4)):
            raw[rng.choice(edges)] = rng.randrange(256)
        if case % 3 == 0:
            raw = raw[:rng.randrange(len(raw))]
        stripped = packed.strip(ENCODE, bytes(raw))  # None, or a walk whose pieces all read back
        if stripped is not None:
            for cut in stripped.ids.values():
                assert len(cut) >= 0 and len(cut[-5:]) == min(5, len(cut))
