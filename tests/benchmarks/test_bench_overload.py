"""benchmarks/overload.py end to end in tiny phases: every phase runs against a real server
subprocess and reports what it must (its numbers are for the benchmark to print, not to assert)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def test_every_phase_runs_and_reports(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # the server's demo model goes here
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    sys.modules.pop("overload", None)
    import overload

    out = tmp_path / "overload.json"
    assert overload.main(["--capacity-seconds", "1", "--flood-seconds", "1", "--flood-callers", "8",
                          "--template-seconds", "1", "--warmup", "0.2", "--templates", "4", "--template-kb", "16",
                          "--big-requests", "2", "--big-mb", "1", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["capacity"]["codes"].keys() == {"OK"} and result["capacity"]["ok_seqs_per_s"] > 0
    flood = result["floods"]["8"]
    assert set(flood["codes"]) <= {"OK", "RESOURCE_EXHAUSTED"} and flood["seqs_computed_for_nobody"] >= 0
    assert flood["health"]["checks"] > 0 and flood["health"]["not_serving"] == 0
    assert result["template"]["hostile_calls"].keys() == {"INVALID_ARGUMENT"}  # over budget: refused
    assert result["rss_templates"]["codes"] == {"OK": 4}
    assert result["rss_big"]["codes"] == {"INVALID_ARGUMENT": 2}  # too long for the model
    assert result["server"]["healthy_at_end"] and result["machine"]["cores"] >= 1
    assert {t["target"].split(":")[0] for t in result["targets"]} >= {"8 callers"}
