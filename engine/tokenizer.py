"""Tokenization and chat templates (fast tokenizers only). Thread-safe for concurrent reads."""
from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any, Sequence

from rewardserve.engine.chat_markers import TemplateMarkers, learn_markers
from rewardserve.engine.errors import InvalidInputError, preview
from rewardserve.engine.template_pool import TemplateError, TemplatePool
from rewardserve.engine.types import ChatInput

REQUEST_TEMPLATES_OFF = ("request chat templates are off on this server (start it with "
                         "--allow-request-chat-template to allow them); leave it empty for the model's own")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja")


class Tokenizer:
    """Wraps a transformers fast tokenizer: text → ids, conversation → ids."""

    def __init__(self, hf_tokenizer: Any, folder: Path | None = None, chat_template: str | None = None):
        self.hf = hf_tokenizer
        self.folder = folder
        self.chat_template = chat_template or getattr(hf_tokenizer, "chat_template", None)
        # Turn markers per template, keyed by the template's digest (a 1 MB template is not kept),
        # least recently used dropped past ``_markers_size``: request templates are many.
        self._markers: OrderedDict[bytes, TemplateMarkers | None] = OrderedDict()
        self._markers_size = 64
        self._markers_lock = threading.Lock()
        self._request_templates: TemplatePool | None = None

    def use_request_templates(self, pool: TemplatePool | None, cache_size: int) -> None:
        """Render request chat templates in ``pool`` (None: refuse them); keep the turn markers
        of at most ``cache_size`` templates."""
        self._request_templates = pool
        self._markers_size = max(1, cache_size)

    @classmethod
    def load(cls, name_or_path: str | Path, chat_template: str | None = None) -> "Tokenizer":
        """Load a fast tokenizer; ``chat_template`` is a file path or the template text."""
        from transformers import AutoTokenizer

        hf = AutoTokenizer.from_pretrained(str(name_or_path))
        if not getattr(hf, "is_fast", False):
            raise ValueError(f"{name_or_path}: only fast tokenizers (tokenizer.json) are supported")
        if chat_template and Path(chat_template).is_file():
            chat_template = Path(chat_template).read_text()
        folder = Path(name_or_path) if Path(name_or_path).is_dir() else None
        return cls(hf, folder, chat_template)

    def __len__(self) -> int:
        return len(self.hf)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Text → token ids."""
        return self.hf(text, add_special_tokens=add_special_tokens)["input_ids"]

    def token_id(self, token: str) -> int | None:
        """The id of a single token, or None when it is not in the vocabulary."""
        tid = self.hf.convert_tokens_to_ids(token)
        return None if tid is None or tid == self.hf.unk_token_id else int(tid)

    def render_chat(self, chat: ChatInput, field: str = "messages", index: int | None = None) -> list[int]:
        """Render a conversation with the (override) chat template and tokenize it.

        The rendered text already holds the template's special tokens, so no more are added
        (no doubled BOS).
        """
        template = chat.chat_template or self.chat_template
        if not template:
            raise InvalidInputError("chat_template", "the model has no chat template; pass one", index)
        check_messages(chat.messages, field, index)
        try:
            text = self._render(chat.messages, chat.chat_template, add_generation_prompt=chat.add_generation_prompt,
                                continue_final_message=chat.continue_final_message, **chat.chat_template_kwargs)
        except TemplateError as exc:  # a request template over its budget, or failing in its worker
            raise InvalidInputError("chat_template", str(exc), index) from None
        except InvalidInputError:
            raise
        except Exception as exc:  # jinja errors, raise_exception() in templates
            raise InvalidInputError(field, f"chat template failed: {preview(str(exc), 200)}", index) from None
        return self.encode(text, add_special_tokens=False)

    def render_text(self, messages: Sequence[dict[str, Any]], template: str | None = None, **options: Any) -> str:
        """Render messages with a chat template (the model's unless given) to text, untokenized."""
        return self._render(messages, template, **options)

    def _render(self, messages: Sequence[dict[str, Any]], request_template: str | None, **options: Any) -> str:
        """The model's template renders here; a request's own template only in the worker pool."""
        if not request_template or request_template == self.chat_template:
            return self.hf.apply_chat_template(list(messages), chat_template=self.chat_template, tokenize=False,
                                               **options)
        if self._request_templates is None:
            raise InvalidInputError("chat_template", REQUEST_TEMPLATES_OFF)
        # What apply_chat_template passes the template: the special tokens, then the options.
        return self._request_templates.render(request_template, messages, {**self.hf.special_tokens_map, **options})

    def markers(self, template: str | None = None) -> TemplateMarkers | None:
        """The turn markers of ``template`` (the model's unless given); None when not learnable.

        Learned once per template: request-level templates are cached too (bounded, see
        ``use_request_templates``).
        """
        template = template or self.chat_template
        if not template:
            return None
        key = hashlib.sha256(template.encode("utf-8", "surrogatepass")).digest()
        with self._markers_lock:
            if key in self._markers:
                self._markers.move_to_end(key)
                return self._markers[key]
        learned = learn_markers(lambda msgs: self.render_text(msgs, template))
        with self._markers_lock:
            self._markers[key] = learned
            while len(self._markers) > self._markers_size:
                self._markers.popitem(last=False)
        return learned

    def encode_rendered(self, text: str) -> list[int]:
        """Tokenize text that may already start with BOS (a rendered template): BOS only once."""
        ids = self.encode(text, add_special_tokens=True)
        bos = self.hf.bos_token_id
        if bos is not None and len(ids) > 1 and ids[0] == bos and ids[1] == bos:
            return ids[1:]
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        """Token ids → text, special tokens kept (they carry the template's structure)."""
        return self.hf.decode(list(ids), skip_special_tokens=False, clean_up_tokenization_spaces=False)

    @property
    def special_tokens(self) -> tuple[str, ...]:
        """Every special token string (BOS, EOS, PAD, end-of-turn markers such as <|eot_id|>, …)."""
        return tuple(self.hf.convert_ids_to_tokens(sorted(self.special_ids)))

    @property
    def special_ids(self) -> frozenset[int]:
        """Every special token id: the named ones and the added tokens marked special."""
        added = getattr(self.hf, "added_tokens_decoder", {}) or {}
        return frozenset(self.hf.all_special_ids) | {i for i, tok in added.items() if getattr(tok, "special", False)}

    @property
    def pad_id(self) -> int | None:
        """The padding token id (None without one)."""
        return self.hf.pad_token_id

    def sha256(self) -> str:
        """Hash of the tokenizer files, so a trainer can pin the tokenizer it was trained with."""
        digest = hashlib.sha256()
        for name in TOKENIZER_FILES:
            path = self.folder / name if self.folder else None
            if path is not None and path.is_file():
                digest.update(name.encode() + b"\0" + path.read_bytes())
        return digest.hexdigest() if self.folder else ""


def longest_token_chars(tokenizer: Tokenizer) -> int:
    """Characters of the vocabulary's longest token string (added tokens included). Raw token
    strings are never shorter than the text they stand for (byte-level BPE spells each byte as one
    character; SentencePiece's '▁' is one space), so no token covers more text than this."""
    vocab = tokenizer.hf.get_vocab()
    return max((len(token) for token in vocab), default=1)


KNOWN_ROLES = ("system", "user", "assistant", "tool", "developer")


def check_messages(messages: tuple, field: str, index: int | None) -> None:
    """Reject empty conversations, unknown roles and non-text content before templating."""
    if not messages:
        raise InvalidInputError(field, "conversation has no messages", index)
    for i, message in enumerate(messages):
        role = message.get("role") if isinstance(message, dict) else None
        if role not in KNOWN_ROLES:
            where = f"{field}[{i}].role" if index is None else f"{field}"
            raise InvalidInputError(where, f"unknown role {preview(role)} in message {i} "
                                    f"(expected one of {', '.join(KNOWN_ROLES)})", index)
        if not isinstance(message.get("content", ""), str):
            raise InvalidInputError(field, f"message {i} content must be text", index)
