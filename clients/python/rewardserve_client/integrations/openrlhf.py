"""OpenRLHF: an HTTP proxy speaking ``--remote_rm_url``'s protocol in front of a rewardserve server.

    rewardserve-client openrlhf-proxy --target rm-host:50051 --port 5000 [--policy-tokenizer NAME]
    # then: openrlhf.cli.train_ppo_ray ... --remote_rm_url http://proxy-host:5000/get_reward

``POST /get_reward`` takes ``{"query": [...], "prompts": [...], "labels": [...]}`` (``prompts``
and ``labels`` optional; when given they must match ``query`` in length) and answers
``{"rewards": [...], "scores": [...]}``, one raw reward per query. Each query is a whole
sequence as OpenRLHF decodes it (the policy's chat template, special tokens and padding
included): the server strips the padding, and with ``--policy-tokenizer`` re-templates it for
the reward model; without it the text is read with the reward model's own tokenizer.

Failures are HTTP errors with a JSON body ``{"error", "code", "request_id"}``, never silent
scores: 400 bad request, 429 overloaded (``Retry-After``), 503 unavailable, 504 deadline,
502 anything else from the server. Standard library only (``http.server``), one thread per
connection, one gRPC channel shared by all.
"""
from __future__ import annotations

import json
import logging
import math
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Dict, List, Optional, Tuple

import grpc

from rewardserve_client.client import RewardClient
from rewardserve_client.errors import RewardServeError

logger = logging.getLogger(__name__)
PATH = "/get_reward"
MAX_BODY_BYTES = 256 * 1024 * 1024

_HTTP_STATUS = {
    grpc.StatusCode.INVALID_ARGUMENT: HTTPStatus.BAD_REQUEST,
    grpc.StatusCode.RESOURCE_EXHAUSTED: HTTPStatus.TOO_MANY_REQUESTS,
    grpc.StatusCode.UNAVAILABLE: HTTPStatus.SERVICE_UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED: HTTPStatus.GATEWAY_TIMEOUT,
}


class BadRequest(ValueError):
    """The HTTP request itself is wrong (400)."""


def parse_body(body: bytes) -> Tuple[List[str], Optional[list], Optional[list]]:
    """``query`` (required, strings) and the optional ``prompts`` and ``labels``."""
    try:
        payload = json.loads(body or b"null")
    except ValueError as exc:
        raise BadRequest(f"body is not JSON: {exc}") from None
    if not isinstance(payload, dict) or not isinstance(payload.get("query"), list):
        raise BadRequest('expected a JSON object with a "query" list')
    queries = payload["query"]
    if not queries or not all(isinstance(q, str) for q in queries):
        raise BadRequest('"query" must be a non-empty list of strings')
    for key in ("prompts", "labels"):
        value = payload.get(key)
        if value is not None and (not isinstance(value, list) or len(value) != len(queries)):
            raise BadRequest(f'"{key}" must be a list as long as "query" ({len(queries)})')
    return queries, payload.get("prompts"), payload.get("labels")


class OpenRLHFProxy:
    """The proxy server; ``start()`` serves in a background thread, ``serve_forever()`` in this one."""

    def __init__(self, target: str, *, host: str = "127.0.0.1", port: int = 5000,
                 policy_tokenizer: Optional[str] = None, timeout: float = 300.0,
                 client: Optional[RewardClient] = None, **chat_options: Any):
        self.client = client or RewardClient(target, timeout=timeout)
        self.policy_tokenizer = policy_tokenizer or ""
        self.chat_options = chat_options
        self.httpd = ThreadingHTTPServer((host, port), _handler_for(self))
        self.httpd.daemon_threads = True
        self._thread: Optional[threading.Thread] = None

    @property
    def port(self) -> int:
        """The bound port (useful with port 0)."""
        return self.httpd.server_address[1]

    def rewards(self, queries: List[str]) -> Dict[str, Any]:
        """Score the queries; raises RewardServeError when the server fails the call."""
        conversations = [{"rendered": {"text": q, "tokenizer": self.policy_tokenizer}} for q in queries]
        reply = self.client.chat_reward(conversations, **self.chat_options)
        scores = reply.scores
        return {"rewards": scores, "scores": scores}

    def start(self) -> "OpenRLHFProxy":
        """Serve in a daemon thread."""
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="openrlhf-proxy", daemon=True)
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        """Serve in this thread until interrupted."""
        self.httpd.serve_forever()

    def stop(self) -> None:
        """Stop serving and close the gRPC channel."""
        self.httpd.shutdown()
        self.httpd.server_close()
        self.client.close()


def _handler_for(proxy: OpenRLHFProxy) -> type:
    class Handler(_Handler):
        pass
    Handler.proxy = proxy
    return Handler


class _Handler(BaseHTTPRequestHandler):
    proxy: OpenRLHFProxy
    protocol_version = "HTTP/1.1"  # keep-alive: OpenRLHF posts once per micro-batch

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        if self.path.split("?")[0] != PATH:
            return self._send(HTTPStatus.NOT_FOUND, {"error": f"POST {PATH}"})
        try:
            queries, _prompts, _labels = parse_body(self._body())  # prompts, labels: validated only
            self._send(HTTPStatus.OK, self.proxy.rewards(queries))
        except BadRequest as exc:
            self._send(HTTPStatus.BAD_REQUEST, {"error": str(exc), "code": "BAD_REQUEST"})
        except RewardServeError as exc:
            self._send_failure(exc)

    def do_GET(self) -> None:  # noqa: N802
        """``GET /health``: 200 once the proxy runs (the reward server has its own health)."""
        status = HTTPStatus.OK if self.path == "/health" else HTTPStatus.NOT_FOUND
        self._send(status, {"status": "ok"} if status == HTTPStatus.OK else {"error": f"POST {PATH}"})

    def _body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY_BYTES:
            raise BadRequest(f"body larger than {MAX_BODY_BYTES} bytes")
        return self.rfile.read(length)

    def _send_failure(self, exc: RewardServeError) -> None:
        status = _HTTP_STATUS.get(exc.code, HTTPStatus.BAD_GATEWAY)
        headers = {"Retry-After": str(math.ceil(exc.retry_delay))} if exc.retry_delay else {}
        logger.warning("get_reward failed: %s", exc)
        self._send(status, {"error": exc.details, "code": exc.code.name, "request_id": exc.request_id}, headers)

    def _send(self, status: HTTPStatus, payload: dict, headers: Optional[dict] = None) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - http.server's signature
        logger.debug("%s " + format, self.address_string(), *args)
