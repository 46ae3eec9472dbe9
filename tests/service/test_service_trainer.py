"""Trainer integration through the real server (demo model, CPU) and real channels: re-templating
of a Llama-3-style policy's token ids and text, pass-through of shared-tokenizer ids, groups,
model identity, and a stream with a failing item among good ones."""
from __future__ import annotations

import grpc
import pytest
from rewardserve_client.v1 import reward_service_pb2 as pb
from rewardserve_client.v1 import reward_service_pb2_grpc as pb_grpc
from transformers import AutoTokenizer

from trainer_testlib import CONVERSATION, LiveServer, build_llama_tokenizer, live_config

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    return AutoTokenizer.from_pretrained(str(build_llama_tokenizer(tmp_path_factory.mktemp("llama"))))


@pytest.fixture(scope="module")
def rm_tokenizer(demo_model_dir):
    return AutoTokenizer.from_pretrained(str(demo_model_dir))


@pytest.fixture(scope="module")
def stub(demo_model_dir, llama):
    server = LiveServer(live_config(demo_model_dir, f"llama={llama.name_or_path}")).start()
    with grpc.insecure_channel(server.target) as channel:
        yield pb_grpc.RewardServiceStub(channel)
    server.stop()


def turns(messages) -> list[pb.ChatMessage]:
    return [pb.ChatMessage(role=m["role"], content=m["content"]) for m in messages]


def ids_of(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def score(stub, *conversations: pb.Conversation, **options) -> list[pb.ChatRewardResult]:
    return list(stub.ChatReward(pb.ChatRewardRequest(conversations=conversations, **options), timeout=60).results)


def test_a_llama_rendered_conversation_scores_like_the_same_messages_sent_directly(stub, llama):
    direct = score(stub, pb.Conversation(messages=turns(CONVERSATION)))[0]
    rendered_text = llama.apply_chat_template(CONVERSATION, tokenize=False)
    assert rendered_text.startswith("<|begin_of_text|><|start_header_id|>system")
    policy_ids = ids_of(llama, rendered_text)
    pad, eot = llama.pad_token_id, llama.convert_tokens_to_ids("<|eot_id|>")
    response_ids = ids_of(llama, CONVERSATION[-1]["content"]) + [eot, pad, pad]  # as generated, right-padded
    forms = [
        pb.Conversation(rendered=pb.PolicyText(tokenizer="llama", token_ids=pb.TokenIds(ids=[pad] * 3 + policy_ids))),
        pb.Conversation(rendered=pb.PolicyText(tokenizer="llama", text=rendered_text + "<|finetune_right_pad_id|>")),
        pb.Conversation(messages=turns(CONVERSATION[:2]),
                        response=pb.PolicyText(tokenizer="llama", token_ids=pb.TokenIds(ids=response_ids))),
        pb.Conversation(messages=turns(CONVERSATION[:2]),
                        response=pb.PolicyText(tokenizer="llama", text="The answer is 4.<|eot_id|>")),
    ]
    for result in score(stub, *forms):
        # The reward model's own rendering, token for token: same count (no BOS of the policy, no
        # doubled BOS, no <|eot_id|>), same raw reward.
        assert (result.num_tokens, result.truncated) == (direct.num_tokens, False)
        assert result.score == pytest.approx(direct.score, abs=1e-6)


def test_shared_tokenizer_ids_pass_straight_through(stub, rm_tokenizer):
    direct = score(stub, pb.Conversation(messages=turns(CONVERSATION)))[0]
    prompt = turns(CONVERSATION[:2])
    own = ids_of(rm_tokenizer, CONVERSATION[-1]["content"]) + [rm_tokenizer.convert_tokens_to_ids("<|im_end|>")]
    # One token per character: a tokenization the tokenizer would never produce from the text.
    spelled = [i for ch in CONVERSATION[-1]["content"] for i in ids_of(rm_tokenizer, ch)]
    same, odd = score(stub, pb.Conversation(messages=prompt, response=pb.PolicyText(token_ids=pb.TokenIds(ids=own))),
                      pb.Conversation(messages=prompt, response=pb.PolicyText(token_ids=pb.TokenIds(ids=spelled))))
    assert same.num_tokens == direct.num_tokens and same.score == pytest.approx(direct.score, abs=1e-6)
    assert odd.num_tokens == direct.num_tokens - len(own) + 1 + len(spelled)  # the ids as given, not re-encoded
    rendered = rm_tokenizer.apply_chat_template(CONVERSATION, tokenize=False)
    whole = score(stub, pb.Conversation(rendered=pb.PolicyText(token_ids=pb.TokenIds(ids=ids_of(rm_tokenizer, rendered)))))
    assert whole[0].num_tokens == direct.num_tokens and whole[0].score == pytest.approx(direct.score, abs=1e-6)


def test_groups_keep_order_and_say_their_group(stub):
    prompt = turns(CONVERSATION[:2])
    answers = [["4", "Four.", "5"], ["It is 4, since 2+2=4."]]
    reply = stub.ChatReward(pb.ChatRewardRequest(
        conversations=[pb.Conversation(messages=turns(CONVERSATION))],
        groups=[pb.ChatGroup(prompt=prompt, responses=[pb.PolicyText(text=a) for a in group], group_id=f"uid-{g}")
                for g, group in enumerate(answers)]), timeout=60)
    results = reply.results
    assert [r.index for r in results] == [0, 1, 2, 3, 4] and not results[0].HasField("group_index")
    assert [(r.group_index, r.response_index, r.group_id) for r in results[1:]] == [
        (0, 0, "uid-0"), (0, 1, "uid-0"), (0, 2, "uid-0"), (1, 0, "uid-1")]
    alone = score(stub, *[pb.Conversation(messages=prompt + turns([{"role": "assistant", "content": a}]))
                          for group in answers for a in group])
    assert [r.score for r in results[1:]] == pytest.approx([r.score for r in alone], abs=1e-6)
    assert reply.usage.num_sequences == 5


def test_truncation_of_the_rendered_conversation_is_reported(stub, llama):
    full = score(stub, pb.Conversation(messages=turns(CONVERSATION)))[0]
    ids = ids_of(llama, llama.apply_chat_template(CONVERSATION, tokenize=False))
    cut = score(stub, pb.Conversation(rendered=pb.PolicyText(tokenizer="llama", token_ids=pb.TokenIds(ids=ids))),
                truncation=pb.Truncation(truncate_prompt_tokens=10))[0]
    assert (cut.num_tokens, cut.truncated) == (10, True) and full.num_tokens > 10


def test_bad_policy_input_names_the_item_and_the_field(stub, llama):
    prompt = turns(CONVERSATION[:2])
    cases = [
        (pb.ChatRewardRequest(conversations=[pb.Conversation(messages=prompt),
                                             pb.Conversation(messages=prompt, response=pb.PolicyText(tokenizer="gpt", text="4"))]),
         "conversations[1]: response.tokenizer: unknown policy tokenizer 'gpt'"),
        (pb.ChatRewardRequest(groups=[pb.ChatGroup(prompt=prompt, responses=[
            pb.PolicyText(text="4"), pb.PolicyText(tokenizer="llama", token_ids=pb.TokenIds(ids=[len(llama)]))])]),
         "groups[0].responses[1]: response.token_ids: token id"),
        (pb.ChatRewardRequest(conversations=[pb.Conversation(rendered=pb.PolicyText(tokenizer="llama", text="no turns here"))]),
         "conversations[0]: rendered: not a conversation rendered with 'llama'"),
    ]
    for request, message in cases:
        with pytest.raises(grpc.RpcError) as info:
            stub.ChatReward(request, timeout=60)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert info.value.details().startswith(message), info.value.details()


def test_model_info_pins_the_reward_model_and_lists_policy_tokenizers(stub, llama):
    info = stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=30)
    assert info.chat_template_sha256 and info.tokenizer_sha256 and info.server_version and info.architecture
    assert info.stream_max_in_flight > 0
    (policy,) = info.policy_tokenizers
    assert (policy.name, policy.vocab_size, policy.shares_vocab, policy.parses_rendered) == (
        "llama", len(llama), False, True)
    assert len(policy.tokenizer_sha256) == len(policy.chat_template_sha256) == 64


def test_a_stream_answers_good_items_beside_a_failing_one(stub):
    items = [pb.StreamItem(id="a", conversation=pb.Conversation(messages=turns(CONVERSATION))),
             pb.StreamItem(id="bad", conversation=pb.Conversation(messages=turns([{"role": "robot", "content": "x"}]))),
             pb.StreamItem(id="b", group_id="g", conversation=pb.Conversation(
                 messages=turns(CONVERSATION[:2]), response=pb.PolicyText(tokenizer="llama", text="The answer is 4.")))]
    answers = {a.id: a for a in stub.StreamReward(iter([pb.StreamRewardRequest(items=items)]), timeout=60)}
    assert answers["a"].result.score == pytest.approx(answers["b"].result.score, abs=1e-6)
    assert answers["b"].result.group_id == "g" and answers["b"].result.index == 2
    assert answers["bad"].error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert answers["bad"].error.message.startswith("conversation: unknown role 'robot'")
