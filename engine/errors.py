"""Domain errors. The service maps each class to one gRPC status (service/errors.py)."""
from __future__ import annotations


PREVIEW_CHARS = 40  # how much of a caller's value an error message echoes


def preview(value: object, limit: int = PREVIEW_CHARS) -> str:
    """``repr(value)`` cut to a short prefix: an error names the bad value without echoing a
    10 KB role (or template) back into the reply's trailers."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} chars)"


class EngineError(Exception):
    """Base class of every error the engine raises on purpose."""


class ItemError(EngineError):
    """An error about one field (and item) of a request: names them so the caller can find it."""

    def __init__(self, field: str, reason: str, index: int | None = None):
        self.field = field
        self.index = index
        self.reason = reason
        where = field if index is None else f"{field}[{index}]"
        super().__init__(f"{where}: {reason}")

    def at(self, field: str, index: int | None = None) -> "ItemError":
        """The same error re-anchored at ``field[index]`` (where the caller put the item)."""
        return type(self)(field, self.reason, index)


class InvalidInputError(ItemError):
    """A bad input: names the field and the item index so the caller can fix it."""

    def with_prefix(self, prefix: str) -> "InvalidInputError":
        """Re-anchor the field under a request field (e.g. ``inputs`` → ``conversations``)."""
        return InvalidInputError(f"{prefix}{self.field}", self.reason, self.index)


class UnsupportedTaskError(InvalidInputError):
    """The served model cannot do the requested task."""


class ItemFailedError(ItemError):
    """One item could not be computed even on its own (e.g. out of memory at its length).

    Only its request fails; the rest of its batch and every other request are computed.
    """


class EngineOverloadedError(EngineError):
    """The waiting queue is full; retry after ``retry_after_s`` seconds."""

    def __init__(self, reason: str, retry_after_s: float):
        self.retry_after_s = retry_after_s
        super().__init__(reason)


class DeadlineExceededError(EngineError):
    """The request's deadline passed before its work was computed; the work was dropped."""


class EngineUnavailableError(EngineError):
    """The engine is not started, still warming up, or draining."""


class RequestCancelledError(EngineError):
    """The caller cancelled the request; its queued work was removed."""
