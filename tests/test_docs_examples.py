"""The documentation's examples run: README and docs code blocks, CLI lines, doctests.

* Every ```python block of README.md and the docs pages listed in ``PYTHON_PAGES`` runs,
  in order, in one namespace per page (a page's blocks may build on each other).
  Blocks in any other language (bash, text, ...) are not run as Python.
* Every ``privagg ...`` line of the ```bash blocks of ``CLI_PAGES`` runs through the CLI
  (in a temporary directory, in order) and must exit with status 0.
* Every module of ``src/privagg`` whose source has ``>>>`` examples passes doctest.
"""

from __future__ import annotations

import doctest
import importlib
import json
import re
import shlex
from pathlib import Path

import pytest
from click.testing import CliRunner

import privagg
from privagg.cli import cli

ROOT = Path(__file__).resolve().parents[1]
PYTHON_PAGES = ["README.md", "docs/quickstart.md", "docs/index.md"]
CLI_PAGES = ["docs/cli.md", "docs/quickstart.md"]
_FENCE = re.compile(r"^```([\w+-]*)[^\n]*\n(.*?)^```[ \t]*$", re.S | re.M)


def code_blocks(page: str, languages: set[str]) -> list[str]:
    """The fenced code blocks of ``page`` whose info string is one of ``languages``."""
    text = (ROOT / page).read_text(encoding="utf-8")
    return [m.group(2) for m in _FENCE.finditer(text) if m.group(1) in languages]


def test_fence_parser_skips_shell_blocks() -> None:
    assert code_blocks("docs/quickstart.md", {"python"})
    for block in code_blocks("docs/quickstart.md", {"python"}):
        assert "make demo" not in block and "privagg epsilon" not in block


@pytest.mark.parametrize("page", PYTHON_PAGES)
def test_python_blocks_run(page: str) -> None:
    blocks = code_blocks(page, {"python", "py"})
    if not blocks:
        pytest.skip(f"{page} has no python blocks")
    namespace: dict[str, object] = {"__name__": f"docs_example_{Path(page).stem}"}
    for i, block in enumerate(blocks):
        code = compile(block, f"{page} (python block {i + 1})", "exec")
        exec(code, namespace)


def _cli_lines(page: str) -> list[list[str]]:
    out = []
    for block in code_blocks(page, {"bash", "sh", "console"}):
        for line in block.splitlines():
            args = shlex.split(line, comments=True)
            if args and args[0] == "privagg":
                out.append(args[1:])
    return out


@pytest.mark.parametrize("page", CLI_PAGES)
def test_cli_lines_run(
    page: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lines = _cli_lines(page)
    assert lines, f"{page} shows no privagg command"
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    for args in lines:
        result = runner.invoke(cli, args, catch_exceptions=False)
        assert result.exit_code == 0, (page, args, result.output)


def test_documented_cli_figures_match() -> None:
    runner = CliRunner()
    eps = runner.invoke(
        cli,
        shlex.split("epsilon --sigma 1.1 --q 0.01 --steps 1000 --delta 1e-5"),
    )
    assert eps.exit_code == 0
    assert "epsilon = 1.51537" in eps.output
    assert "epsilon = 1.51537" in (ROOT / "docs/cli.md").read_text(encoding="utf-8")
    sig = runner.invoke(
        cli,
        shlex.split(
            "sigma --epsilon 3 --q 0.01 --steps 1000 --delta 1e-5 --accountant rdp --json"
        ),
    )
    z = json.loads(sig.stdout)["noise_multiplier"]
    assert f'"noise_multiplier": {z!r}' in (ROOT / "docs/cli.md").read_text("utf-8")


def _modules_with_examples() -> list[str]:
    src = Path(privagg.__file__).resolve().parent
    names = []
    for path in sorted(src.rglob("*.py")):
        if ">>>" not in path.read_text(encoding="utf-8"):
            continue
        rel = path.relative_to(src.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts.pop()
        if parts[-1] == "__main__":
            continue
        names.append(".".join(parts))
    return names


def test_some_modules_have_doctests() -> None:
    assert "privagg.cli" in _modules_with_examples()


@pytest.mark.parametrize("module", _modules_with_examples())
def test_doctests(module: str) -> None:
    mod = importlib.import_module(module)
    result = doctest.testmod(mod, optionflags=doctest.ELLIPSIS, verbose=False)
    assert result.attempted > 0
    assert result.failed == 0
