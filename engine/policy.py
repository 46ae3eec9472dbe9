"""Policy tokenizers: the tokenizers (and chat templates) of the models being trained.

A trainer's policy often uses another tokenizer and template than the reward model. The server
is told about them at start-up (``--policy-tokenizer NAME=DIR``) so that requests can carry the
policy's own token ids or rendered text (``PolicyText``) and the engine re-templates them
(engine/retemplate.py). The name ``""`` always means the reward model's own tokenizer.
"""
from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from typing import Sequence

from rewardserve.engine.chat_markers import TemplateMarkers
from rewardserve.engine.errors import EngineError, InvalidInputError, preview
from rewardserve.engine.tokenizer import Tokenizer
from rewardserve.engine.types import OWN_TOKENIZER as OWN
from rewardserve.engine.types import PolicyChat, PolicyText, PolicyTokenizerInfo

__all__ = ["OWN", "PolicyChat", "PolicyText", "PolicyTokenizer", "PolicyTokenizerInfo", "PolicyTokenizers"]
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PolicyTokenizer:
    """One tokenizer whose output can be re-templated for the reward model."""

    name: str
    tokenizer: Tokenizer
    shares_vocab: bool           # same vocabulary as the RM: token ids pass straight through
    same_template: bool          # same chat template too: rendered ids pass straight through

    @property
    def markers(self) -> TemplateMarkers | None:
        """The turn markers of its chat template (None when absent or not learnable)."""
        return self.tokenizer.markers()

    def info(self) -> PolicyTokenizerInfo:
        """Its GetModelInfo entry."""
        template = self.tokenizer.chat_template
        return PolicyTokenizerInfo(
            name=self.name, tokenizer_sha256=self.tokenizer.sha256(),
            chat_template_sha256=hashlib.sha256(template.encode()).hexdigest() if template else "",
            vocab_size=len(self.tokenizer), shares_vocab=self.shares_vocab,
            parses_rendered=self.markers is not None)


class PolicyTokenizers:
    """The reward model's tokenizer (name ``""``) and the policy tokenizers, by name."""

    def __init__(self, own: Tokenizer | None, policies: Sequence[PolicyTokenizer] = ()):
        self.own = own
        self._by_name = {p.name: p for p in policies}
        if own is not None:
            self._by_name[OWN] = PolicyTokenizer(OWN, own, shares_vocab=True, same_template=True)

    @classmethod
    def load(cls, specs: Sequence[str], own: Tokenizer | None) -> "PolicyTokenizers":
        """Load ``NAME=DIR`` specs (blocking: reads tokenizer files); refuses bad or duplicate names."""
        if specs and own is None:
            raise EngineError("--policy-tokenizer needs the reward model's own tokenizer (none was loaded)")
        policies: list[PolicyTokenizer] = []
        for spec in specs:
            name, _, source = spec.partition("=")
            if not name or not source or name in {p.name for p in policies}:
                raise EngineError(f"--policy-tokenizer {spec!r}: expected a unique NAME=DIR")
            policies.append(_load_one(name, source, own))
        return cls(own, policies)

    def get(self, name: str, field: str, index: int, part: str = "tokenizer") -> PolicyTokenizer:
        """The tokenizer called ``name``; an unknown name is the caller's error (``field[index]: part: …``)."""
        if name not in self._by_name:
            known = ", ".join(repr(n) for n in self.names()) or "none"
            raise InvalidInputError(field, f"{part}: unknown policy tokenizer {preview(name)} (this server knows: "
                                    f"{known}; start it with --policy-tokenizer NAME=DIR)", index)
        return self._by_name[name]

    def names(self) -> list[str]:
        """Every name requests may use ("" is the reward model's own)."""
        return sorted(self._by_name)

    def infos(self) -> tuple[PolicyTokenizerInfo, ...]:
        """GetModelInfo entries of the configured policy tokenizers (not the RM's own)."""
        return tuple(p.info() for name, p in sorted(self._by_name.items()) if name != OWN)


def _load_one(name: str, source: str, own: Tokenizer) -> PolicyTokenizer:
    try:
        tok = Tokenizer.load(source)
    except (OSError, ValueError) as exc:
        raise EngineError(f"--policy-tokenizer {name}={source}: cannot load it ({exc})") from exc
    shares = tok.hf.get_vocab() == own.hf.get_vocab()
    policy = PolicyTokenizer(name, tok, shares_vocab=shares,
                             same_template=shares and bool(tok.chat_template) and tok.chat_template == own.chat_template)
    if tok.chat_template and policy.markers is None:
        log.warning("policy tokenizer %s: its chat template does not wrap turns in learnable markers; "
                    "send messages + response instead of rendered conversations", name)
    log.info("policy tokenizer %s from %s: %s vocabulary", name, source,
             "the reward model's" if shares else "its own")
    return policy
