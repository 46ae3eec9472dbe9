"""The service's boundary to the engine: the typed API, torch-free imports, no reach-ins."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from fake_engine import FakeEngine

from rewardserve.engine.api import EngineAPI

SERVICE = Path(__file__).resolve().parents[2] / "service"


def test_importing_the_server_does_not_import_torch():
    code = ("import sys, rewardserve.service.server, rewardserve.service.cli; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def test_the_fake_engine_implements_the_engine_api():
    assert isinstance(FakeEngine(), EngineAPI)


def test_the_service_imports_the_engine_through_its_api_only():
    allowed = ("rewardserve.engine.api", "rewardserve.engine.config", "rewardserve.engine.cli_args",
               "rewardserve.engine.cli", "rewardserve.engine.score_cli", "rewardserve.engine.demo", "rewardserve.engine.async_engine",
               "rewardserve.engine.torch_setup")
    for path in SERVICE.glob("*.py"):
        for line in path.read_text().splitlines():
            words = line.strip().split()
            if words[:1] in (["from"], ["import"]) and len(words) > 1 and words[1].startswith("rewardserve.engine"):
                assert words[1] in allowed, f"{path.name}: {line.strip()}"
            assert ".core." not in line and ".scheduler" not in line, f"{path.name} reaches into the engine: {line}"
