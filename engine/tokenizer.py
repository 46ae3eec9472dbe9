"""Tokenization and chat templates (fast tokenizers only). Thread-safe for concurrent reads."""
from __future__ import annotations

import hashlib
import threading
from pathlib import Path
from typing import Any, Sequence

from rewardserve.engine.chat_markers import TemplateMarkers, learn_markers
from rewardserve.engine.errors import InvalidInputError
from rewardserve.engine.types import ChatInput

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja")


class Tokenizer:
    """Wraps a transformers fast tokenizer: text → ids, conversation → ids."""

    def __init__(self, hf_tokenizer: Any, folder: Path | None = None, chat_template: str | None = None):
        self.hf = hf_tokenizer
        self.folder = folder
        self.chat_template = chat_template or getattr(hf_tokenizer, "chat_template", None)
        self._markers: dict[str, TemplateMarkers | None] = {}
        self._markers_lock = threading.Lock()

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
            text = self.hf.apply_chat_template(
                list(chat.messages), chat_template=template, tokenize=False,
                add_generation_prompt=chat.add_generation_prompt,
                continue_final_message=chat.continue_final_message, **chat.chat_template_kwargs)
        except Exception as exc:  # jinja errors, raise_exception() in templates
            raise InvalidInputError(field, f"chat template failed: {exc}", index) from None
        return self.encode(text, add_special_tokens=False)

    def render_text(self, messages: Sequence[dict[str, Any]], template: str | None = None, **options: Any) -> str:
        """Render messages with a chat template (the model's unless given) to text, untokenized."""
        return self.hf.apply_chat_template(list(messages), chat_template=template or self.chat_template,
                                           tokenize=False, **options)

    def markers(self, template: str | None = None) -> TemplateMarkers | None:
        """The turn markers of ``template`` (the model's unless given); None when not learnable.

        Learned once per template text: request-level template overrides are cached too.
        """
        template = template or self.chat_template
        if not template:
            return None
        with self._markers_lock:
            if template not in self._markers:
                self._markers[template] = learn_markers(lambda msgs: self.render_text(msgs, template))
            return self._markers[template]

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


KNOWN_ROLES = ("system", "user", "assistant", "tool", "developer")


def check_messages(messages: tuple, field: str, index: int | None) -> None:
    """Reject empty conversations, unknown roles and non-text content before templating."""
    if not messages:
        raise InvalidInputError(field, "conversation has no messages", index)
    for i, message in enumerate(messages):
        role = message.get("role") if isinstance(message, dict) else None
        if role not in KNOWN_ROLES:
            where = f"{field}[{i}].role" if index is None else f"{field}"
            raise InvalidInputError(where, f"unknown role {role!r} in message {i} "
                                    f"(expected one of {', '.join(KNOWN_ROLES)})", index)
        if not isinstance(message.get("content", ""), str):
            raise InvalidInputError(field, f"message {i} content must be text", index)
