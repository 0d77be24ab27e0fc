"""Generates the Python stubs of proto/sockfleet/v1/*.proto: the only way they are made.

python proto/generate.py            # writes proto/sockfleet/v1/*_pb2*.py(i)
python proto/generate.py --check    # fails if the committed stubs differ
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
PACKAGE = HERE / "sockfleet" / "v1"


def generate(out: Path) -> list[Path]:
    from grpc_tools import protoc  # the generator is a development tool, not a runtime dependency

    protos = sorted(PACKAGE.glob("*.proto"))
    include = Path(protoc.__file__).parent / "_proto"
    args = [
        "protoc",
        f"-I{HERE}",
        f"-I{include}",
        f"--python_out={out}",
        f"--pyi_out={out}",
        f"--grpc_python_out={out}",
        *(str(p.relative_to(HERE)) for p in protos),
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    return sorted((out / "sockfleet" / "v1").glob("*_pb2*"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="compare with the committed stubs instead of writing")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        made = generate(Path(tmp))
        differ = []
        for path in made:
            target = PACKAGE / path.name
            if args.check:
                if not target.exists() or target.read_bytes() != path.read_bytes():
                    differ.append(path.name)
            else:
                target.write_bytes(path.read_bytes())
    if differ:
        print("stubs differ from the .proto files: " + ", ".join(differ), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
