"""One live rewardserve server (demo model + a Llama-3-style policy tokenizer) for the adapter tests."""
from __future__ import annotations

import pytest

from trainer_testlib import LiveServer, build_llama_tokenizer, live_config


@pytest.fixture(scope="session")
def llama_dir(tmp_path_factory):
    return build_llama_tokenizer(tmp_path_factory.mktemp("llama-policy"))


@pytest.fixture(scope="session")
def live_server(demo_model_dir, llama_dir):
    server = LiveServer(live_config(demo_model_dir, f"llama={llama_dir}")).start()
    yield server
    server.stop()
