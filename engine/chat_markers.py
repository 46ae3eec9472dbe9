"""Learn how a chat template wraps each turn, and parse a rendered conversation back into turns.

Re-templating needs to undo a policy's chat template: the trainer hands over the conversation as
the policy saw it (``<|begin_of_text|><|start_header_id|>user<|end_header_id|>\\n\\nHi<|eot_id|>…``)
and the reward model must read it in its own template. Rather than hard-coding template
families, the markers are *learned* by rendering probe conversations whose contents are
sentinels: whatever surrounds a sentinel is that role's prefix and suffix. That works for every
template that wraps each turn as ``prefix + content + suffix`` and renders a conversation's
prefix as a prefix of the whole (ChatML, Llama 3, Gemma, Phi, DeepSeek, …). One role may be
unmarked if both roles end with a suffix: Mistral's ``[INST] question [/INST]answer</s>`` writes
nothing before an answer. An unmarked turn is read only right after a turn of the other role and
only up to its own suffix with no marked turn inside; anything else (a missing end-of-sequence,
stray text between turns, an answer quoting ``[INST] ``) is refused rather than guessed. A system
prompt that such a template folds into a user turn comes back as part of that turn, as the policy
saw it.
Templates that do not wrap turns this way (e.g. ones that re-render earlier turns) yield no
markers, and their rendered conversations are refused with a clear error instead of being misread.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

Render = Callable[[list[dict[str, str]]], str]

_SENTINELS = tuple(f"RSPROBE{i}Z" for i in range(5))


@dataclass(frozen=True)
class TurnMarkers:
    """What a template writes around one role's content."""

    role: str
    prefix: str
    suffix: str


class UnparsableRendering(ValueError):
    """The text does not follow the template's turn markers."""


@dataclass(frozen=True)
class TemplateMarkers:
    """A template's head (text before the first turn, e.g. BOS) and its per-role turn markers."""

    head: str
    turns: tuple[TurnMarkers, ...]

    def turn(self, role: str) -> TurnMarkers | None:
        """The markers of ``role``, or None when the template was not probed with it."""
        return next((t for t in self.turns if t.role == role), None)

    def parse(self, text: str, strip_end: Callable[[str], str]) -> list[dict[str, str]]:
        """Split a rendered conversation into ``{"role", "content"}`` turns.

        ``strip_end`` removes end-of-sequence/padding artefacts from the end of an unterminated
        final turn (a generation cut by its stop token or by the length limit).
        """
        pos = len(self.head) if text.startswith(self.head) else 0
        messages: list[dict[str, str]] = []
        # Stop once only whitespace and artefacts are left (e.g. <|end_of_text|> after <|eot_id|>).
        while pos < len(text) and (not messages or strip_end(text[pos:]).strip()):
            turn = self._turn_at(text, pos, messages[-1]["role"] if messages else None)
            start = pos + len(turn.prefix)
            end = self._turn_end(text, turn, start)
            if end < 0:  # the final turn has no suffix: the response was cut off or ended at EOS
                messages.append({"role": turn.role, "content": strip_end(text[start:])})
                break
            messages.append({"role": turn.role, "content": text[start:end]})
            pos = end + len(turn.suffix)
        if not messages:
            raise UnparsableRendering("the rendered conversation holds no turn")
        return messages

    def _turn_at(self, text: str, pos: int, previous: str | None) -> TurnMarkers:
        # Longest prefix first: "<|im_start|>assistant" must not be read as a shorter marker.
        for turn in sorted(self.turns, key=lambda t: -len(t.prefix)):
            if turn.prefix and text.startswith(turn.prefix, pos):
                return turn
        unmarked = next((t for t in self.turns if not t.prefix), None)  # Mistral's answers
        if unmarked is not None and previous is not None and previous != unmarked.role:
            return unmarked  # roles alternate: an unmarked turn only follows the other role
        raise UnparsableRendering(f"no turn of the policy's chat template starts at character {pos} "
                                  f"({text[pos:pos + 40]!r})")

    def _turn_end(self, text: str, turn: TurnMarkers, start: int) -> int:
        if turn.suffix and not turn.prefix:  # unmarked: no marked turn may start inside it
            end = text.find(turn.suffix, start)
            inside = text[start:] if end < 0 else text[start:end]
            marker = next((t.prefix for t in self.turns if t.prefix and t.prefix in inside), None)
            if marker is not None:
                raise UnparsableRendering(f"a {turn.role} turn without its end marker {turn.suffix!r} runs into "
                                          f"{marker!r} at character {start + inside.find(marker)}")
            return end
        if turn.suffix:
            return text.find(turn.suffix, start)
        # No suffix: the turn runs to the next turn's prefix.
        found = [i for t in self.turns if t.prefix for i in [text.find(t.prefix, start)] if i >= 0]
        return min(found, default=-1)


def learn_markers(render: Render) -> TemplateMarkers | None:
    """Probe ``render`` (messages → text, no generation prompt); None when it is not learnable."""
    user_a, asst_a, user_b, asst_b, system = _SENTINELS
    probe = [{"role": "user", "content": user_a}, {"role": "assistant", "content": asst_a},
             {"role": "user", "content": user_b}, {"role": "assistant", "content": asst_b}]
    try:
        texts = [render(probe[:k]) for k in range(1, len(probe) + 1)]
    except Exception:  # noqa: BLE001 - a template may refuse probes (raise_exception); not learnable
        return None
    if any(not longer.startswith(shorter) for shorter, longer in zip(texts, texts[1:])):
        return None  # the template re-renders earlier turns: prefixes are not stable
    segments = [texts[0]] + [longer[len(shorter):] for shorter, longer in zip(texts, texts[1:])]
    user = _split("user", segments[2], user_b)
    assistant = _split("assistant", segments[3], asst_b)
    if user is None or assistant is None or segments[1] != _wrap(assistant, asst_a):
        return None
    if not _distinguishable(user, assistant):
        return None  # the roles cannot be told apart in a rendering
    first = _wrap(user, user_a)
    if not segments[0].endswith(first):
        return None
    head = segments[0][:-len(first)]
    turns = [user, assistant]
    system_turn = _learn_system(render, head, user, system, user_a)
    if system_turn is not None and system_turn.prefix:  # an unmarked system turn cannot be found
        turns.append(system_turn)
    return TemplateMarkers(head, tuple(turns))


def _distinguishable(user: TurnMarkers, assistant: TurnMarkers) -> bool:
    """Different prefixes; if one is empty, both turns end with a suffix (that is where the
    unmarked turn starts and ends)."""
    if user.prefix == assistant.prefix:
        return False
    return bool(user.prefix and assistant.prefix) or bool(user.suffix and assistant.suffix)


def _learn_system(render: Render, head: str, user: TurnMarkers, sentinel: str,
                  user_content: str) -> TurnMarkers | None:
    try:
        text = render([{"role": "system", "content": sentinel}, {"role": "user", "content": user_content}])
    except Exception:  # noqa: BLE001 - templates without a system role
        return None
    first = _wrap(user, user_content)
    if not text.endswith(first) or not text.startswith(head):
        return None
    return _split("system", text[len(head):-len(first)], sentinel)


def _split(role: str, segment: str, sentinel: str) -> TurnMarkers | None:
    if segment.count(sentinel) != 1:
        return None
    prefix, suffix = segment.split(sentinel)
    return TurnMarkers(role, prefix, suffix)


def _wrap(turn: TurnMarkers, content: str) -> str:
    return turn.prefix + content + turn.suffix


def strip_tokens(text: str, tokens: Sequence[str], *, start: bool = False, end: bool = False) -> str:
    """Remove any run of ``tokens`` (special-token strings) from the start and/or the end."""
    tokens = [t for t in tokens if t]
    changed = True
    while changed and text:
        changed = False
        for token in tokens:
            if start and text.startswith(token):
                text, changed = text[len(token):], True
            if end and text.endswith(token):
                text, changed = text[:-len(token)], True
    return text
