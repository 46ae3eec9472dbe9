"""Who may call: bearer tokens (``--auth-token-file``) and mTLS subjects (``--tls-allowed-subjects``).

One interceptor checks every call except the health service (probes and load balancers must
reach it without credentials):

- a token file is set: the call needs ``authorization: Bearer <token>`` metadata naming one of
  the file's tokens, else UNAUTHENTICATED. Tokens are compared as SHA-256 digests with
  ``hmac.compare_digest`` against every accepted token (no early exit), so neither the reply nor
  its timing says which tokens exist. Tokens are never logged; the file is re-read on SIGHUP
  (``TokenFile.reload``), keeping the old tokens when the new file is unusable.
- allowed subjects are set: the verified client certificate must name one of them (a subject
  alternative name or the common name), else PERMISSION_DENIED.
"""
from __future__ import annotations

import hashlib
import hmac
import logging
from pathlib import Path
from typing import Any, Iterable, Sequence

import grpc

from rewardserve.service.handlers import wrap_handler

logger = logging.getLogger(__name__)

AUTHORIZATION_KEY = "authorization"
OPEN_PREFIXES = ("/grpc.health.v1.Health/",)  # probes and balancers call these without credentials
UNAUTHENTICATED_MESSAGE = "missing or invalid bearer token"  # the same for every failure: no hints
PERMISSION_DENIED_MESSAGE = "this client certificate is not allowed to call the service"
_SUBJECT_KEYS = ("x509_subject_alternative_name", "x509_common_name")


class AuthFileError(ValueError):
    """The token file cannot be used (missing, unreadable, no token). Never holds a token."""


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def read_tokens(path: str | Path) -> list[str]:
    """The tokens of a token file: one per line, surrounding blanks dropped, '#' lines skipped."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise AuthFileError(f"--auth-token-file {path}: cannot be read ({type(exc).__name__})") from None
    tokens = [line.strip() for line in text.splitlines()]
    tokens = [t for t in tokens if t and not t.startswith("#")]
    if not tokens:
        raise AuthFileError(f"--auth-token-file {path}: holds no token")
    bad = [n for n, t in enumerate(tokens, 1) if any(ch.isspace() or not ch.isprintable() for ch in t)]
    if bad:
        raise AuthFileError(f"--auth-token-file {path}: token {bad[0]} holds a blank or unprintable character")
    return tokens


class TokenFile:
    """The accepted tokens, as digests; ``reload()`` re-reads the file (SIGHUP)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._digests: tuple[bytes, ...] = ()
        self._load()

    def _load(self) -> None:
        self._digests = tuple(_digest(t) for t in read_tokens(self.path))
        logger.info("auth: %d bearer token(s) accepted from %s", len(self._digests), self.path)

    def reload(self) -> bool:
        """Re-read the file; on failure keep the tokens accepted so far (and say so). True when reloaded."""
        try:
            self._load()
        except AuthFileError as exc:
            logger.error("auth: %s; keeping the %d token(s) accepted before", exc, len(self._digests))
            return False
        return True

    def accepts(self, token: str) -> bool:
        """Whether ``token`` is one of the accepted ones (constant time over all of them)."""
        presented = _digest(token)
        found = False
        for accepted in self._digests:
            found |= hmac.compare_digest(presented, accepted)
        return found


def bearer_token(metadata: Iterable[tuple[str, Any]] | None) -> str | None:
    """The token of an ``authorization: Bearer <token>`` entry, or None."""
    for key, value in metadata or ():
        if key == AUTHORIZATION_KEY and isinstance(value, str):
            scheme, _, token = value.strip().partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
    return None


def peer_subjects(auth_context: dict[str, Sequence[bytes]]) -> set[str]:
    """The names a verified client certificate carries: its SANs and its common name."""
    names = set()
    for key in _SUBJECT_KEYS:
        names.update(v.decode(errors="replace") for v in auth_context.get(key, ()))
    return names


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Refuses calls without an accepted token or an allowed client certificate (health is open)."""

    def __init__(self, tokens: TokenFile | None, allowed_subjects: Sequence[str] = ()) -> None:
        self.tokens = tokens
        self.allowed_subjects = frozenset(allowed_subjects)

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None or handler_call_details.method.startswith(OPEN_PREFIXES):
            return handler
        return wrap_handler(handler, self._check)

    async def _check(self, context: grpc.aio.ServicerContext) -> None:
        """Abort the call unless its caller may call (abort raises)."""
        if self.tokens is not None:
            token = bearer_token(context.invocation_metadata())
            if token is None or not self.tokens.accepts(token):
                await context.abort(grpc.StatusCode.UNAUTHENTICATED, UNAUTHENTICATED_MESSAGE)
        if self.allowed_subjects and not peer_subjects(context.auth_context()) & self.allowed_subjects:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, PERMISSION_DENIED_MESSAGE)
