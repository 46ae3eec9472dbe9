"""Generate the Node (TypeScript) and Go code of rewardserve.v1 with `buf generate` and local plugins.

    python clients/codegen.py [--check] [node] [go]

Node: protoc-gen-es from clients/node/node_modules (``npm ci`` first; versions pinned in the
lockfile) writes clients/node/src/gen, plus google/rpc/error_details (BadRequest, RetryInfo) from
the .proto that googleapis-common-protos installs. Go: Debian's protoc-gen-go and
protoc-gen-go-grpc write clients/go/rewardservev1. The Python code has its own generator
(clients/python/generate.py). ``--check`` generates into a temporary folder and fails when the
committed code differs, naming the files.
"""
from __future__ import annotations

import argparse
import filecmp
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BUF = Path(sys.executable).with_name("buf")  # buf-bin, pinned in the dev requirements
TARGETS = {  # language: (buf template, generated folder)
    "node": ("buf.gen.node.yaml", Path("clients/node/src/gen")),
    "go": ("buf.gen.go.yaml", Path("clients/go/rewardservev1")),
}


def _error_details_dir(tmp: Path) -> Path:
    """A buf input holding only google/rpc/error_details.proto (buf provides its WKT imports)."""
    from google.rpc import error_details_pb2

    source = Path(error_details_pb2.__file__).with_name("error_details.proto")
    target = tmp / "googleapis" / "google" / "rpc" / "error_details.proto"
    target.parent.mkdir(parents=True)
    shutil.copyfile(source, target)
    return target.parents[2]


def generate(language: str, out_root: Path) -> None:
    """Run buf generate for ``language`` with outputs under ``out_root`` (the repo root: in place)."""
    template = TARGETS[language][0]
    inputs = ["proto"]
    with tempfile.TemporaryDirectory() as tmp:
        if language == "node":
            inputs.append(str(_error_details_dir(Path(tmp))))
        for source in inputs:
            subprocess.run([str(BUF), "generate", source, "--template", template, "-o", str(out_root)],
                           cwd=ROOT, check=True)


def _files(folder: Path) -> set[Path]:
    return {p.relative_to(folder) for p in folder.rglob("*") if p.is_file()} if folder.exists() else set()


def check(language: str) -> list[str]:
    """The generated files of ``language`` that differ from (or are missing in) the committed ones."""
    folder = TARGETS[language][1]
    with tempfile.TemporaryDirectory() as tmp:
        generate(language, Path(tmp))
        fresh, committed = Path(tmp) / folder, ROOT / folder
        names = _files(fresh) | _files(committed)
        return sorted(str(folder / n) for n in names
                      if not (fresh / n).is_file() or not (committed / n).is_file()
                      or not filecmp.cmp(fresh / n, committed / n, shallow=False))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="fail if the committed code is stale")
    parser.add_argument("languages", nargs="*", metavar="LANGUAGE", help=f"any of {', '.join(TARGETS)} (default: all)")
    args = parser.parse_args()
    languages = args.languages or list(TARGETS)
    if unknown := set(languages) - set(TARGETS):
        parser.error(f"unknown language(s): {', '.join(sorted(unknown))}")
    stale = []
    for language in languages:
        if args.check:
            stale += check(language)
        else:
            shutil.rmtree(ROOT / TARGETS[language][1], ignore_errors=True)
            generate(language, ROOT)
    if stale:
        print(f"generated code is stale: {', '.join(stale)}; run `make proto`", file=sys.stderr)
        return 1
    if args.check:
        print(f"generated {' and '.join(languages)} code matches proto/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
