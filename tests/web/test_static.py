"""The page's files as shipped: every page and asset in the package, nothing fetched from elsewhere, no
inline script or style (the content security policy forbids both), and data never parsed as markup."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.conftest import ROOT

STATIC = ROOT / "collector" / "web" / "static"
PAGES = ("map.html", "diff.html", "ports.html", "audit.html", "host.html")
ASSETS = sorted(p for p in STATIC.rglob("*") if p.is_file() and p.suffix in {".html", ".js", ".css", ".svg"})


def test_every_page_is_shipped() -> None:
    for page in PAGES:
        assert (STATIC / page).is_file(), page


@pytest.mark.parametrize("page", PAGES)
def test_a_page_has_no_inline_script_or_style(page: str) -> None:
    markup = (STATIC / page).read_text()
    assert not re.search(r"<script(?![^>]*\bsrc=)", markup)
    assert not re.search(r"\son[a-z]+=", markup)  # no inline event handlers
    assert not re.search(r"\sstyle=|<style", markup)


def test_every_asset_named_is_shipped() -> None:
    named: set[str] = set()
    for asset in ASSETS:
        text = asset.read_text()
        named |= {m for m in re.findall(r"""["'(]/static/([\w./-]+)["')]""", text)}
        if asset.suffix == ".js":
            named |= {m for m in re.findall(r"""from "\./([\w./-]+)";""", text)}
    assert named
    missing = sorted(name for name in named if not (STATIC / name).is_file())
    assert not missing


@pytest.mark.parametrize("asset", ASSETS, ids=lambda p: str(p.relative_to(STATIC)))
def test_nothing_comes_from_elsewhere(asset: Path) -> None:
    text = asset.read_text()
    addresses = set(re.findall(r"(?:https?:)?//[\w.-]+\.[a-z]{2,}[^\s\"'<>)]*", text))
    assert addresses <= {"http://www.w3.org/2000/svg"}, addresses


@pytest.mark.parametrize("script", [p for p in ASSETS if p.suffix == ".js"], ids=lambda p: p.name)
def test_scripts_never_parse_data_as_markup(script: Path) -> None:
    text = script.read_text()
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function"):
        assert sink not in text, sink
