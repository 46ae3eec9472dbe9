"""The server's frozen configuration, next to the engine's: ``ServeConfig(engine, server)``.

Like ``engine/config.py``, every field carries ``metadata["help"]`` and the ``serve`` CLI is
generated from these dataclasses (``engine/cli_args.py``), so leaf names must stay unique across
the whole tree (no server field may be called like an engine field).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from rewardserve.engine.config import EngineConfig, option

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
EVENT_LOOPS = ("auto", "asyncio", "uvloop")
_MB = 1024 * 1024


@dataclass(frozen=True)
class ServerConfig:
    """How the gRPC server listens, talks and stops."""

    host: str = option("0.0.0.0", "Address to listen on ('[::]' for IPv6, 127.0.0.1 for this machine only).")
    port: int = option(50051, "Port to listen on; 0 picks a free port (logged at start-up).")
    grace_period_s: float = option(30.0, "On SIGTERM/SIGINT: how long in-flight calls may run before they are cancelled.")
    max_receive_message_mb: int = option(64, "Largest request message accepted, in MiB.")
    max_send_message_mb: int = option(256, "Largest reply message sent, in MiB (token_embed replies are big).")
    keepalive_time_ms: int = option(30_000, "Send an HTTP/2 keepalive ping after this long without activity.")
    keepalive_timeout_ms: int = option(10_000, "Close the connection when a keepalive ping is not answered within this.")
    keepalive_min_time_ms: int = option(10_000, "Shortest interval between client pings the server tolerates (shorter: GOAWAY).")
    tls_cert: str | None = option(None, "PEM certificate chain file: serve TLS (needs --tls-key).")
    tls_key: str | None = option(None, "PEM private key file of --tls-cert.")
    tls_client_ca: str | None = option(None, "PEM CA file: require and verify client certificates (mutual TLS).")
    stream_max_in_flight: int = option(256, "StreamReward: most items of one stream queued or computing at once.")
    metrics_port: int = option(0, "Port of the Prometheus metrics endpoint; 0 turns it off.")
    log_level: str = option("INFO", "Logging level.", LOG_LEVELS)
    event_loop: str = option("auto", "Event loop of the server: uvloop (less latency per call; the "
                             "'uvloop' extra), asyncio's own, or auto: uvloop when installed.", EVENT_LOOPS)

    def __post_init__(self) -> None:
        # Fail at start-up, not at the first handshake, when TLS is half configured.
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ValueError("--tls-cert and --tls-key must be given together")
        if self.tls_client_ca and not self.tls_cert:
            raise ValueError("--tls-client-ca needs --tls-cert and --tls-key")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"--port must be in 0..65535, not {self.port}")
        if self.stream_max_in_flight < 1:
            raise ValueError(f"--stream-max-in-flight must be at least 1, not {self.stream_max_in_flight}")

    @property
    def address(self) -> str:
        """``host:port`` as gRPC binds it."""
        return f"{self.host}:{self.port}"

    def channel_options(self) -> list[tuple[str, int]]:
        """gRPC core options: message sizes and keepalive."""
        return [
            ("grpc.max_receive_message_length", self.max_receive_message_mb * _MB),
            ("grpc.max_send_message_length", self.max_send_message_mb * _MB),
            ("grpc.keepalive_time_ms", self.keepalive_time_ms),
            ("grpc.keepalive_timeout_ms", self.keepalive_timeout_ms),
            ("grpc.http2.min_recv_ping_interval_without_data_ms", self.keepalive_min_time_ms),
            ("grpc.http2.min_ping_interval_without_data_ms", self.keepalive_min_time_ms),
            # gRPC enables SO_REUSEPORT by default: a second server on a busy port would
            # silently share it instead of failing. One replica owns its port.
            ("grpc.so_reuseport", 0),
        ]


@dataclass(frozen=True)
class ServeConfig:
    """Everything ``rewardserve serve`` needs: the engine and the server around it."""

    engine: EngineConfig = field(default_factory=EngineConfig)
    server: ServerConfig = field(default_factory=ServerConfig)
