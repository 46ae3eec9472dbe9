"""Shared by the trainer-integration tests: a Llama-3-style policy tokenizer and a live server.

``LiveServer`` runs the real RewardServer (real AsyncEngine on the demo model, CPU) on
127.0.0.1:0 in a background thread with its own event loop, so blocking clients, subprocesses
(curl) and asyncio clients on the test's loop all reach it over real TCP channels.
"""
from __future__ import annotations

import asyncio
import dataclasses
import threading
from pathlib import Path

from rewardserve.engine.config import EngineConfig, ModelConfig, RunnerConfig
from rewardserve.engine.demo import build_tokenizer
from rewardserve.service.config import ServeConfig, ServerConfig

# The shape of Llama 3's template: BOS once, header-wrapped roles, trimmed content, <|eot_id|>.
LLAMA3_TEMPLATE = (
    "{% for message in messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
    " + message['content'] | trim + '<|eot_id|>' %}"
    "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
    "{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}")
LLAMA3_SPECIALS = ("<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>",
                   "<|end_of_text|>", "<|finetune_right_pad_id|>")

CONVERSATION = [{"role": "system", "content": "Answer briefly."},
                {"role": "user", "content": "What is 2+2?"},
                {"role": "assistant", "content": "The answer is 4."}]


def build_llama_tokenizer(folder: Path) -> Path:
    """A Llama-3-style policy tokenizer: its own BPE vocabulary, BOS, <|eot_id|> and a pad token."""
    build_tokenizer(folder, bos_token="<|begin_of_text|>", eos_token="<|eot_id|>",
                    pad_token="<|finetune_right_pad_id|>", specials=LLAMA3_SPECIALS,
                    chat_template=LLAMA3_TEMPLATE)
    return folder


def live_config(model_dir: Path, *policy_tokenizers: str, max_model_len: int | None = None) -> ServeConfig:
    """The demo model on the CPU, listening on an ephemeral loopback port."""
    engine = EngineConfig(model=ModelConfig(model=str(model_dir), dtype="float32", max_model_len=max_model_len,
                                            policy_tokenizer=tuple(policy_tokenizers)),
                          runner=RunnerConfig(device="cpu"))
    server = ServerConfig(host="127.0.0.1", port=0, grace_period_s=5.0)
    return dataclasses.replace(ServeConfig(), engine=engine, server=server)


class LiveServer:
    """The real server in a background thread; ``target`` is its ``127.0.0.1:PORT``."""

    def __init__(self, config: ServeConfig) -> None:
        self.config = config
        self.target = ""
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), name="live-server", daemon=True)

    def start(self, timeout: float = 180.0) -> "LiveServer":
        self._thread.start()
        if not self._ready.wait(timeout) or self._error is not None:
            raise RuntimeError(f"the live server did not come up: {self._error!r}")
        return self

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)

    async def _main(self) -> None:
        from rewardserve.service.server import RewardServer

        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        server = RewardServer(self.config)
        try:
            await server.start()
            await server.wait_ready()
            self.target = f"127.0.0.1:{server.port}"
        except BaseException as exc:  # noqa: BLE001 - reported to start()
            self._error = exc
        self._ready.set()
        if self._error is None:
            await self._stop.wait()
        await server.drain(1.0)
