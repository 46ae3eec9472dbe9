"""Generate the Python gRPC code for rewardserve.v1 into rewardserve_client/v1.

Run through ``make proto``. The grpcio-tools version is pinned (Makefile) so the generated code
imports on the oldest grpcio and protobuf we support (grpcio 1.75.1+, protobuf 6.31.1+).
``--check`` regenerates into a temporary folder and fails when the committed code differs.
"""
from __future__ import annotations

import argparse
import filecmp
import re
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROTO_ROOT = ROOT / "proto"
TARGET = Path(__file__).resolve().parent / "rewardserve_client" / "v1"
GENERATED = ("reward_service_pb2.py", "reward_service_pb2.pyi", "reward_service_pb2_grpc.py")


def generate(out_dir: Path) -> None:
    """Run protoc into ``out_dir`` and rewrite the proto package path to rewardserve_client.v1."""
    from grpc_tools import protoc

    with tempfile.TemporaryDirectory() as tmp:
        protos = sorted(str(p.relative_to(PROTO_ROOT)) for p in PROTO_ROOT.rglob("*.proto"))
        include = Path(protoc.__file__).parent / "_proto"
        args = ["protoc", f"-I{PROTO_ROOT}", f"-I{include}", f"--python_out={tmp}",
                f"--pyi_out={tmp}", f"--grpc_python_out={tmp}", *protos]
        if protoc.main(args) != 0:
            raise SystemExit("protoc failed")
        out_dir.mkdir(parents=True, exist_ok=True)
        for name in GENERATED:
            text = (Path(tmp) / "rewardserve" / "v1" / name).read_text()
            text = re.sub(r"from rewardserve\.v1 import", "from rewardserve_client.v1 import", text)
            (out_dir / name).write_text(text)


def check() -> int:
    """Exit status 1 (and a message) when the committed code drifted from the proto."""
    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp))
        drifted = [n for n in GENERATED if not (TARGET / n).exists()
                   or not filecmp.cmp(Path(tmp) / n, TARGET / n, shallow=False)]
    if drifted:
        print(f"generated code is stale: {', '.join(drifted)}; run `make proto`", file=sys.stderr)
        return 1
    print("generated code matches proto/")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if the committed code is stale")
    if parser.parse_args().check:
        return check()
    generate(TARGET)
    shutil.rmtree(TARGET / "__pycache__", ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
