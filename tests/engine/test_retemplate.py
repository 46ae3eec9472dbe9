"""Re-templating without a model: learned template markers, parsing, artefact stripping, BOS
handling with a reward model whose template writes BOS, and the --policy-tokenizer option."""
from __future__ import annotations

import argparse

import pytest

from rewardserve.engine.chat_markers import UnparsableRendering, learn_markers, strip_tokens
from rewardserve.engine.cli_args import add_config_arguments, config_from_args
from rewardserve.engine.config import EngineConfig
from rewardserve.engine.demo import build_tokenizer
from rewardserve.engine.errors import EngineError, InvalidInputError
from rewardserve.engine.policy import PolicyChat, PolicyText, PolicyTokenizers
from rewardserve.engine.retemplate import Retemplater
from rewardserve.engine.tokenizer import Tokenizer
from rewardserve.engine.types import ChatInput, TokensInput
from trainer_testlib import CONVERSATION, build_llama_tokenizer


@pytest.fixture(scope="module")
def chatml(tmp_path_factory) -> Tokenizer:
    folder = tmp_path_factory.mktemp("chatml")
    build_tokenizer(folder)
    return Tokenizer.load(folder)


@pytest.fixture(scope="module")
def llama(tmp_path_factory) -> Tokenizer:
    return Tokenizer.load(build_llama_tokenizer(tmp_path_factory.mktemp("llama")))


def test_markers_are_learned_from_the_template(chatml, llama):
    markers = llama.markers()
    assert markers.head == "<|begin_of_text|>"
    assert markers.turn("user").prefix == "<|start_header_id|>user<|end_header_id|>\n\n"
    assert markers.turn("assistant").suffix == "<|eot_id|>"
    assert markers.turn("system").prefix == "<|start_header_id|>system<|end_header_id|>\n\n"
    assert chatml.markers().turn("assistant").suffix == "<|im_end|>\n" and chatml.markers().head == ""


@pytest.mark.parametrize("ending", ["", "<|end_of_text|>", "<|finetune_right_pad_id|>" * 3])
def test_a_rendering_parses_back_into_its_turns(llama, ending):
    strip = lambda rest: strip_tokens(rest, llama.special_tokens, end=True)  # noqa: E731
    assert llama.markers().parse(llama.render_text(CONVERSATION) + ending, strip) == CONVERSATION
    cut = llama.render_text(CONVERSATION[:2], add_generation_prompt=True) + "The answer"  # length limit hit
    assert llama.markers().parse(cut + ending, strip)[-1] == {"role": "assistant", "content": "The answer"}


# Mistral-7B-Instruct's template: nothing marks an answer; the roles alternate, answers end with EOS.
MISTRAL_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token }}"
    "{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}")


TWO_EXCHANGES = [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "4."},
                 {"role": "user", "content": "And [2+3]?"}, {"role": "assistant", "content": "5, I think."}]


@pytest.fixture(scope="module")
def mistral(tmp_path_factory) -> Tokenizer:
    folder = tmp_path_factory.mktemp("mistral")
    build_tokenizer(folder, specials=(), chat_template=MISTRAL_TEMPLATE, bos_token="<s>", eos_token="</s>")
    return Tokenizer.load(folder)


def test_inst_templates_parse_with_unmarked_answers(mistral):
    markers = mistral.markers()
    assert markers.head == "<s>" and markers.turn("user").prefix == "[INST] "
    assert markers.turn("assistant").prefix == "" and markers.turn("assistant").suffix == "</s>"
    assert markers.turn("system") is None  # the template refuses system turns
    strip = lambda rest: strip_tokens(rest, mistral.special_tokens, end=True)  # noqa: E731
    assert markers.parse(mistral.render_text(TWO_EXCHANGES) + "</s>", strip) == TWO_EXCHANGES
    cut = mistral.render_text(TWO_EXCHANGES[:3]) + "The answer"  # a response cut by the length limit
    assert markers.parse(cut, strip) == [*TWO_EXCHANGES[:3], {"role": "assistant", "content": "The answer"}]


@pytest.mark.parametrize("text", [
    "[INST] q1 [/INST]a1[INST] q2 [/INST]a2",             # decoded without its end-of-sequence tokens
    "<s>[INST] q1 [/INST]a1</s> [INST] q2 [/INST]a2</s>",  # stray text between turns
    "<s>Be terse.\n\n[INST] q1 [/INST]a1</s>",           # text before the first turn
])
def test_inst_renderings_that_do_not_alternate_cleanly_are_refused(mistral, text):
    strip = lambda rest: strip_tokens(rest, mistral.special_tokens, end=True)  # noqa: E731
    with pytest.raises(UnparsableRendering):
        mistral.markers().parse(text, strip)


def test_a_mistral_policy_rendering_is_scored_in_the_rms_own_template(mistral, chatml):
    resolver = Retemplater(PolicyTokenizers(chatml, [_policy("mistral", mistral, chatml)]))
    rendered = PolicyText("mistral", text=mistral.render_text(TWO_EXCHANGES))
    chat = resolver.resolve(PolicyChat(messages=(), rendered=rendered), 0)
    assert isinstance(chat, ChatInput) and list(chat.messages) == TWO_EXCHANGES


def test_templates_that_do_not_wrap_turns_are_not_learnable():
    folded = lambda msgs: "".join(m["content"] for m in msgs)  # noqa: E731 - no markers at all
    assert learn_markers(folded) is None
    restyling = lambda msgs: "|".join(f"{len(msgs)}:{m['content']}" for m in msgs)  # noqa: E731
    assert learn_markers(restyling) is None


def test_no_doubled_bos_when_the_reward_model_writes_its_own(llama, chatml):
    # The RM is the Llama-style one here (its template writes BOS); the policy speaks ChatML.
    tokenizers = PolicyTokenizers(llama, [_policy("chatml", chatml, llama)])
    resolver = Retemplater(tokenizers)
    rendered = chatml.render_text(CONVERSATION) + "<|endoftext|><|endoftext|>"
    chat = resolver.resolve(PolicyChat(messages=(), rendered=PolicyText("chatml", text=rendered)), 0)
    assert isinstance(chat, ChatInput) and list(chat.messages) == CONVERSATION
    ids = llama.render_chat(chat)
    bos = llama.hf.bos_token_id
    assert ids.count(bos) == 1 and ids[0] == bos and ids == llama.render_chat(ChatInput(tuple(CONVERSATION)))
    assert llama.encode_rendered(llama.render_text(CONVERSATION)) == ids  # BOS already there: not added again
    assert llama.encode_rendered("plain text")[0] == bos                   # raw text: BOS added once


def test_shared_vocabulary_response_ids_are_spliced_between_the_rms_own_markers(llama):
    resolver = Retemplater(PolicyTokenizers(llama))
    eot, pad = llama.token_id("<|eot_id|>"), llama.pad_id
    response = llama.encode("The answer is 4.", add_special_tokens=False)
    chat = PolicyChat(messages=tuple(CONVERSATION[:2]), response=PolicyText(token_ids=tuple(response + [eot, pad, pad])))
    spliced = resolver.resolve(chat, 0)
    assert isinstance(spliced, TokensInput)
    assert list(spliced.token_ids) == llama.render_chat(ChatInput(tuple(CONVERSATION)))
    assert list(spliced.token_ids).count(llama.hf.bos_token_id) == 1


def test_policy_errors_name_the_part_of_the_conversation(llama, chatml):
    resolver = Retemplater(PolicyTokenizers(llama, [_policy("chatml", chatml, llama)]))
    with pytest.raises(InvalidInputError, match=r"conversations\[3\]: response.tokenizer: unknown policy tokenizer 'x'"):
        resolver.resolve(PolicyChat(messages=tuple(CONVERSATION[:2]), response=PolicyText("x", text="4")), 3)
    with pytest.raises(InvalidInputError, match=r"rendered: excludes messages and response"):
        resolver.resolve(PolicyChat(messages=tuple(CONVERSATION), rendered=PolicyText(text="x")), 0)
    with pytest.raises(InvalidInputError, match=r"response.token_ids: token id 9999 is outside"):
        resolver.resolve(PolicyChat(messages=tuple(CONVERSATION[:2]),
                                    response=PolicyText("chatml", token_ids=(1, 9999))), 0)


def test_policy_tokenizer_option_is_repeatable_and_validated(tmp_path, llama):
    parser = argparse.ArgumentParser()
    add_config_arguments(parser, EngineConfig)
    args = parser.parse_args(["--policy-tokenizer", "a=/x", "--policy-tokenizer", "b=/y"])
    assert config_from_args(EngineConfig, args).model.policy_tokenizer == ("a=/x", "b=/y")
    assert config_from_args(EngineConfig, parser.parse_args([])).model.policy_tokenizer == ()
    for spec in ("noequals", "=dir", f"a={tmp_path / 'missing'}"):
        with pytest.raises(EngineError):
            PolicyTokenizers.load([spec], llama)


def _policy(name, tokenizer, own):
    from rewardserve.engine.policy import PolicyTokenizer

    return PolicyTokenizer(name, tokenizer, shares_vocab=tokenizer.hf.get_vocab() == own.hf.get_vocab(),
                           same_template=False)
