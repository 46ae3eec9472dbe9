"""Large token-id requests on a live server (real engine, a BERT cross-encoder, max_model_len 32):
their ids are counted on the wire and never decoded whole (the server's ``decodes`` counts say
which way each request was decoded), an over-long one is refused with the engine's own error
while health checks keep answering, and a truncated one reads the same ids as a small request."""
from __future__ import annotations

import asyncio
import dataclasses

import grpc
import pytest
from grpc_health.v1 import health_pb2
from rewardserve_client.v1 import reward_service_pb2 as pb

from rewardserve.engine.config import EngineConfig, ModelConfig, RunnerConfig
from rewardserve.service.wire import SERVICE
from score_testlib import bert_cross_encoder
from service_testlib import health_status, live_server

pytestmark = pytest.mark.slow
MAX_LEN = 32
BIG = 50_000_000  # ids of one byte each: a 50 MB request


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return bert_cross_encoder(tmp_path_factory.mktemp("ce") / "ckpt")


@pytest.fixture
async def live(model_dir):
    engine = EngineConfig(model=ModelConfig(model=str(model_dir), dtype="float32", max_model_len=MAX_LEN),
                          runner=RunnerConfig(device="cpu"))
    async with live_server(engine_config=engine) as running:
        yield running


def _record(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf record: built by hand, so the test holds no 50M-int list."""
    length, out = len(payload), bytearray([number << 3 | 2])
    while length > 0x7F:
        out.append(length & 0x7F | 0x80)
        length >>= 7
    out.append(length)
    return bytes(out) + payload


def _packed(ids: list[int]) -> bytes:
    """The payload of a packed ``TokenIds.ids``: one varint per id."""
    return pb.TokenIds(ids=ids).SerializeToString()[len(_record(1, bytes(_packed_size(ids)))) - _packed_size(ids):]


def _packed_size(ids: list[int]) -> int:
    return sum(1 + (i >= 1 << 7) + (i >= 1 << 14) + (i >= 1 << 21) + (i >= 1 << 28) for i in ids)


def _token_ids_input(packed_ids: bytes) -> bytes:
    """An EncodeInput / ScoreInput (field 2: token_ids) holding ``packed_ids``."""
    return _record(2, _record(1, packed_ids))


def _raw_call(live, method: str):
    return live.channel.unary_unary(f"/{SERVICE.full_name}/{method}")  # bytes in, bytes out


async def test_four_50mb_over_long_requests_are_refused_by_the_engine_never_decoded_whole(live):
    encode = _raw_call(live, "Encode")
    request = _record(2, _token_ids_input(b"\x05" * BIG))  # EncodeRequest.inputs[0]: 50M ids of 5
    statuses: list[int] = []
    done = asyncio.Event()

    async def probe() -> None:
        while not done.is_set():
            statuses.append(await health_status(live.health))
            await asyncio.sleep(0.02)

    async def refused() -> grpc.aio.AioRpcError:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await encode(request, timeout=60)
        return caught.value

    prober = asyncio.create_task(probe())
    errors = await asyncio.gather(*(refused() for _ in range(4)))
    done.set()
    await prober
    for err in errors:
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert err.details().startswith(f"inputs[0]: input has {BIG} tokens, more than max_model_len {MAX_LEN}; "
                                        "set truncate_prompt_tokens to truncate")
    assert statuses and set(statuses) == {health_pb2.HealthCheckResponse.SERVING}
    assert live.server.decodes.cut == {"Encode": 4}
    assert "Encode" not in live.server.decodes.whole  # the 50 MB were never decoded


async def test_reward_over_long_is_refused_and_truncation_reads_the_ids_a_small_request_sends(live):
    reward, encode = _raw_call(live, "Reward"), _raw_call(live, "Encode")
    info = await live.stub.GetModelInfo(pb.GetModelInfoRequest())
    ids = [5 + (i * 31) % (info.vocab_size - 5) for i in range(1_500_000)]
    wire_ids = _packed(ids)
    assert pb.TokenIds.FromString(_record(1, wire_ids)).ids == ids

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await reward(_record(1, _token_ids_input(wire_ids)), timeout=60)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details().startswith(f"inputs[0]: input has {len(ids)} tokens, more than max_model_len")

    for side, kept in ((pb.TRUNCATION_SIDE_LEFT, ids[-MAX_LEN:]), (pb.TRUNCATION_SIDE_RIGHT, ids[:MAX_LEN])):
        truncation = pb.Truncation(truncate_prompt_tokens=-1, side=side).SerializeToString()
        raw = _record(2, _record(1, b"x")) + _record(2, _token_ids_input(wire_ids)) + _record(4, truncation)
        reply = pb.EncodeResponse.FromString(await encode(raw, timeout=60))
        small = await live.stub.Encode(pb.EncodeRequest(inputs=[pb.EncodeInput(text="x"),
                                                                 pb.EncodeInput(token_ids=pb.TokenIds(ids=kept))]))
        assert reply.results[1].num_tokens == MAX_LEN and reply.results[1].truncated
        assert reply.results[1].data.values == pytest.approx(small.results[1].data.values, abs=1e-5)
        assert reply.results[0].data.values == pytest.approx(small.results[0].data.values, abs=1e-5)
    assert live.server.decodes.cut == {"Reward": 1, "Encode": 2}


async def test_score_documents_and_query_are_counted_on_the_wire(live):
    score = _raw_call(live, "Score")
    info = await live.stub.GetModelInfo(pb.GetModelInfoRequest())
    doc = [5 + (i * 17) % (info.vocab_size - 5) for i in range(1_500_000)]
    query = [7, 8, 9]
    big_doc = pb.ScoreInput(token_ids=pb.TokenIds(ids=doc)).SerializeToString()
    small = pb.ScoreRequest(query=pb.ScoreInput(token_ids=pb.TokenIds(ids=query)),
                            documents=[pb.ScoreInput(text="short")]).SerializeToString()

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await score(small + _record(2, big_doc), timeout=60)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details().startswith(f"documents[1]: the pair has {len(doc) + len(query) + 3} tokens, "
                                             f"more than {MAX_LEN}")

    truncation = _record(4, pb.Truncation(truncate_prompt_tokens=-1).SerializeToString())
    reply = pb.ScoreResponse.FromString(await score(small + _record(2, big_doc) + truncation, timeout=60))
    room = MAX_LEN - len(query) - 3  # [CLS] query [SEP] document [SEP]: the document's end is cut
    expected = await live.stub.Score(pb.ScoreRequest(
        query=pb.ScoreInput(token_ids=pb.TokenIds(ids=query)),
        documents=[pb.ScoreInput(text="short"), pb.ScoreInput(token_ids=pb.TokenIds(ids=doc[:room]))]))
    assert reply.results[1].truncated and reply.results[1].num_tokens == MAX_LEN
    assert [r.score for r in reply.results] == pytest.approx([r.score for r in expected.results], abs=1e-5)

    big_query = _record(1, pb.ScoreInput(token_ids=pb.TokenIds(ids=doc)).SerializeToString())
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await score(big_query + _record(2, pb.ScoreInput(text="d").SerializeToString()) + truncation, timeout=60)
    assert caught.value.details().startswith(f"query: {len(doc)} tokens (with the pair's 3 template tokens) "
                                             "leave no room for documents[0]")
    assert live.server.decodes.cut == {"Score": 3}
