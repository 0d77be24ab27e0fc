"""The committed stubs are exactly what proto/generate.py makes from the .proto files."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import ROOT


def test_stubs_match_the_schema() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "proto" / "generate.py"), "--check"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
