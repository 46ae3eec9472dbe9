"""Request chat templates in stoppable worker processes: same text as in-process rendering,
and a hostile template costs only its time, size or memory budget."""
from __future__ import annotations

import time

import pytest

from rewardserve.engine.errors import InvalidInputError
from rewardserve.engine.template_pool import TemplateError, TemplatePool
from rewardserve.engine.tokenizer import Tokenizer
from rewardserve.engine.types import ChatInput

MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"},
            {"role": "assistant", "content": "4"}]
TEMPLATE = ("{{ bos_token }}{% for m in messages %}<{{ m['role'] }}>{{ m['content'] | trim }}</s>{% endfor %}"
            "{% if add_generation_prompt %}<assistant>{% endif %}{{ extra | default('') }}")
ENDLESS = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"


@pytest.fixture(scope="module")
def pool():
    pool = TemplatePool(workers=1, timeout_s=1.0, max_chars=100_000, memory_bytes=256 * 1024 * 1024)
    yield pool
    pool.close()


@pytest.fixture
def tokenizer(demo_model_dir, pool):
    tok = Tokenizer.load(demo_model_dir)
    tok.use_request_templates(pool, cache_size=4)
    return tok


@pytest.mark.parametrize("options", [{}, {"add_generation_prompt": True, "extra": "!"},
                                     {"continue_final_message": True}])
def test_worker_renders_what_apply_chat_template_renders(tokenizer, options):
    expected = tokenizer.hf.apply_chat_template(MESSAGES, chat_template=TEMPLATE, tokenize=False, **options)
    assert tokenizer.render_text(MESSAGES, TEMPLATE, **options) == expected


def test_endless_template_is_stopped_at_its_time_budget_and_the_pool_recovers(pool, tokenizer):
    killed = pool.num_killed
    start = time.monotonic()
    with pytest.raises(TemplateError, match="longer than the budget of 1000 ms"):
        pool.render(ENDLESS, MESSAGES, {})
    assert time.monotonic() - start < 5
    assert pool.num_killed == killed + 1
    assert tokenizer.render_text(MESSAGES, TEMPLATE) == tokenizer.hf.apply_chat_template(
        MESSAGES, chat_template=TEMPLATE, tokenize=False)


def test_output_and_memory_budgets(pool):
    with pytest.raises(TemplateError, match="rendered 9999999 characters, more than the budget of 100000"):
        pool.render("{{ 'ab ' * 3333333 }}", MESSAGES, {})
    with pytest.raises(TemplateError, match="more memory than a request template may use"):
        pool.render("{{ 'ab' * 1000000000 }}", MESSAGES, {})
    assert pool.render("{{ messages[1]['content'] }}", MESSAGES, {}) == "2+2?"


def test_failing_template_names_chat_template_and_item(tokenizer):
    chat = ChatInput(messages=tuple(MESSAGES), chat_template=ENDLESS)
    with pytest.raises(InvalidInputError, match=r"^chat_template\[3\]: rendering took longer"):
        tokenizer.render_chat(chat, "conversations", 3)
    broken = ChatInput(messages=tuple(MESSAGES), chat_template="{{ raise_exception('no system role') }}")
    with pytest.raises(InvalidInputError, match="no system role"):
        tokenizer.render_chat(broken, "conversations", 0)


def test_marker_cache_is_bounded(tokenizer):
    for i in range(10):
        tokenizer.markers(TEMPLATE + f"{{# {i} #}}")
    assert len(tokenizer._markers) == 4  # noqa: SLF001 - the bound is the point of the test


def test_without_a_pool_request_templates_are_refused(demo_model_dir):
    tok = Tokenizer.load(demo_model_dir)
    with pytest.raises(InvalidInputError, match="^chat_template: request chat templates are off"):
        tok.render_chat(ChatInput(messages=tuple(MESSAGES), chat_template=TEMPLATE))
    assert tok.render_chat(ChatInput(messages=tuple(MESSAGES)))  # the model's own template renders in-process
