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
LOG_FORMATS = ("text", "json")
_MB = 1024 * 1024
_MS = 1000


@dataclass(frozen=True)
class ServerConfig:
    """How the gRPC server listens, talks and stops."""

    host: str = option("0.0.0.0", "Address to listen on ('[::]' for IPv6, 127.0.0.1 for this machine only).")
    port: int = option(50051, "Port to listen on; 0 picks a free port (logged at start-up).")
    grace_period_s: float = option(30.0, "On SIGTERM/SIGINT: how long in-flight calls may still run, counted from the "
                                   "end of --drain-delay-s; calls left then end UNAVAILABLE and the process exits.")
    drain_delay_s: float = option(0.0, "On SIGTERM/SIGINT: health turns NOT_SERVING at once, but new calls are still "
                                  "served this long (so load balancers notice) before they are refused UNAVAILABLE.")
    max_receive_message_mb: int = option(64, "Largest request message accepted, in MiB.")
    max_send_message_mb: int = option(256, "Largest reply message sent, in MiB (token_embed replies are big).")
    keepalive_time_ms: int = option(30_000, "Send an HTTP/2 keepalive ping after this long without activity.")
    keepalive_timeout_ms: int = option(10_000, "Close the connection when a keepalive ping is not answered within this.")
    keepalive_min_time_ms: int = option(10_000, "Shortest interval between client pings the server tolerates, with or "
                                        "without calls in flight (pings closer than this, twice: GOAWAY too_many_pings).")
    max_connection_age_s: float = option(300.0, "Ask clients to reconnect (GOAWAY) after a connection lived this long "
                                         "(+-10%% jitter), so balancers spread load over new replicas; 0: never.")
    max_connection_age_grace_s: float = option(30.0, "After --max-connection-age-s: how long calls still running on "
                                               "the old connection may finish before it is closed.")
    max_connection_idle_s: float = option(600.0, "Close a connection that had no call for this long; 0: never.")
    handshake_timeout_s: float = option(10.0, "Close a socket that has not finished its TLS/HTTP/2 handshake after "
                                        "this long (idle sockets cannot pile up).")
    max_connections: int = option(0, "Most open connections at once (more are closed on accept); 0: the open-file "
                                  "limit less a reserve for the model's own files.")
    max_concurrent_streams: int = option(1024, "Most calls in flight on one connection (HTTP/2 "
                                         "SETTINGS_MAX_CONCURRENT_STREAMS); more wait on the client.")
    tls_cert: str | None = option(None, "PEM certificate chain file: serve TLS (needs --tls-key).")
    tls_key: str | None = option(None, "PEM private key file of --tls-cert.")
    tls_client_ca: str | None = option(None, "PEM CA file: require and verify client certificates (mutual TLS).")
    tls_allowed_subjects: tuple[str, ...] = option((), "With --tls-client-ca: only clients whose certificate names "
                                                   "this (a subject alternative name or the common name) are served; "
                                                   "others get PERMISSION_DENIED.")
    auth_token_file: str | None = option(None, "File of accepted bearer tokens, one per line ('#' comments); calls "
                                         "without 'authorization: Bearer <token>' get UNAUTHENTICATED (health stays "
                                         "open). Re-read on SIGHUP.")
    reflection: bool = option(True, "Serve gRPC server reflection (v1 and v1alpha).")
    stream_max_in_flight: int = option(256, "StreamReward: most items of one stream queued or computing at once.")
    metrics_port: int = option(0, "Port of the Prometheus metrics endpoint; 0 turns it off.")
    metrics_host: str | None = option(None, "Address of the metrics endpoint; defaults to --host.")
    log_level: str = option("INFO", "Logging level.", LOG_LEVELS)
    log_format: str = option("text", "Log lines as text, or as one JSON object per line (with the caller's W3C "
                             "traceparent trace and span ids).", LOG_FORMATS)
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
        if self.tls_allowed_subjects and not self.tls_client_ca:
            raise ValueError("--tls-allowed-subjects needs --tls-client-ca (client certificates)")
        for name in ("grace_period_s", "drain_delay_s", "max_connection_age_s", "max_connection_age_grace_s",
                     "max_connection_idle_s", "max_connections"):
            if getattr(self, name) < 0:
                raise ValueError(f"--{name.replace('_', '-')} must not be negative, not {getattr(self, name)}")
        if self.handshake_timeout_s <= 0:
            raise ValueError(f"--handshake-timeout-s must be positive, not {self.handshake_timeout_s}")
        if self.max_concurrent_streams < 1:
            raise ValueError(f"--max-concurrent-streams must be at least 1, not {self.max_concurrent_streams}")
        if self.stream_max_in_flight < 1:
            raise ValueError(f"--stream-max-in-flight must be at least 1, not {self.stream_max_in_flight}")

    @property
    def address(self) -> str:
        """``host:port`` as gRPC binds it."""
        return f"{self.host}:{self.port}"

    @property
    def metrics_address(self) -> str:
        """Where the metrics endpoint binds: --metrics-host, else --host."""
        return self.metrics_host or self.host

    def channel_options(self, max_connections: int) -> list[tuple[str, int]]:
        """gRPC core options: message sizes, keepalive, connection ageing and limits (this is the
        only place that sets them). ``max_connections`` is --max-connections once resolved."""
        return [
            ("grpc.max_receive_message_length", self.max_receive_message_mb * _MB),
            ("grpc.max_send_message_length", self.max_send_message_mb * _MB),
            ("grpc.keepalive_time_ms", self.keepalive_time_ms),
            ("grpc.keepalive_timeout_ms", self.keepalive_timeout_ms),
            ("grpc.http2.min_recv_ping_interval_without_data_ms", self.keepalive_min_time_ms),
            ("grpc.http2.min_ping_interval_without_data_ms", self.keepalive_min_time_ms),
            # Without this, any ping on a connection with no call in flight is a strike, whatever its
            # interval (a client keeping an idle channel warm got GOAWAY too_many_pings).
            ("grpc.keepalive_permit_without_calls", 1),
            *_positive_ms("grpc.max_connection_age_ms", self.max_connection_age_s),
            ("grpc.max_connection_age_grace_ms", int(self.max_connection_age_grace_s * _MS)),
            *_positive_ms("grpc.max_connection_idle_ms", self.max_connection_idle_s),
            ("grpc.server_handshake_timeout_ms", int(self.handshake_timeout_s * _MS)),
            ("grpc.max_allowed_incoming_connections", max_connections),
            ("grpc.max_concurrent_streams", self.max_concurrent_streams),
            # gRPC enables SO_REUSEPORT by default: a second server on a busy port would
            # silently share it instead of failing. One replica owns its port.
            ("grpc.so_reuseport", 0),
        ]


def _positive_ms(name: str, seconds: float) -> list[tuple[str, int]]:
    """``[(name, milliseconds)]``, or nothing for 0 ("never": gRPC's own default)."""
    return [(name, int(seconds * _MS))] if seconds > 0 else []


@dataclass(frozen=True)
class ServeConfig:
    """Everything ``rewardserve serve`` needs: the engine and the server around it."""

    engine: EngineConfig = field(default_factory=EngineConfig)
    server: ServerConfig = field(default_factory=ServerConfig)
