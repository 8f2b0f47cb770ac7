"""The package's layers, as the file tree draws them, kept by their import rules.

- ``sse/`` and ``repair/`` are pure: they import no asyncio, no HTTP or web
  library, and nothing of ``proxy/``, ``ops/`` or ``tools/``, directly or
  through what they import;
- ``tools/`` may use everything; nothing imports it but ``cli.py``.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).parent.parent / "sse_adapter"
PURE = ("sse", "repair")
IO = (
    "asyncio",
    "anyio",
    "httpx",
    "httpx_aiohttp",
    "aiohttp",
    "starlette",
    "fastapi",
    "uvicorn",
    "sse_starlette",
)
LAYERS_ABOVE_PURE = ("sse_adapter.proxy", "sse_adapter.ops", "sse_adapter.tools")


def modules(folder: str = "") -> list[Path]:
    return sorted((PACKAGE / folder).rglob("*.py"))


def imported(path: Path) -> set[str]:
    """Every module a file imports, by its absolute name."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module is not None:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def name_of(path: Path) -> str:
    return ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__")


def within(name: str, packages: tuple[str, ...]) -> bool:
    return any(name == package or name.startswith(package + ".") for package in packages)


def test_the_layers_are_folders() -> None:
    folders = {path.name for path in PACKAGE.iterdir() if (path / "__init__.py").exists()}
    assert folders == {"sse", "repair", "proxy", "ops", "tools"}
    top = {path.name for path in PACKAGE.glob("*.py")}
    assert top == {
        "__init__.py",
        "__main__.py",
        "cli.py",
        "config.py",
        "errors.py",
        "server.py",
        "settings.py",
    }


@pytest.mark.parametrize("path", [path for layer in PURE for path in modules(layer)], ids=name_of)
def test_the_pure_layers_import_no_io_and_no_layer_above(path: Path) -> None:
    found = imported(path)
    assert not {name for name in found if within(name, IO)}
    assert not {name for name in found if within(name, LAYERS_ABOVE_PURE)}


def test_the_pure_layers_pull_in_no_io_through_what_they_import() -> None:
    pure = [name_of(path) for layer in PURE for path in modules(layer)]
    code = (
        "import sys\n"
        + "".join(f"import {name}\n" for name in pure)
        + f"print(sorted(name for name in sys.modules if name.split('.')[0] in {IO!r}))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


@pytest.mark.parametrize("path", modules(), ids=name_of)
def test_nothing_but_the_cli_imports_the_tools(path: Path) -> None:
    if name_of(path) == "sse_adapter.cli" or within(name_of(path), ("sse_adapter.tools",)):
        return
    assert not {name for name in imported(path) if within(name, ("sse_adapter.tools",))}


def test_the_readme_draws_the_tree_as_it_is() -> None:
    readme = (PACKAGE.parent / "README.md").read_text()
    section = readme.split("## How it works", 1)[1].split("\n## ", 1)[0]
    tree = section.split("```\nsse_adapter/\n", 1)[1].split("```", 1)[0]
    drawn = {word for word in tree.split() if word.endswith(".py")}
    files = {path.name for path in modules() if path.name not in ("__init__.py", "__main__.py")}
    assert drawn == files
    for folder in ("sse", "repair", "proxy", "ops", "tools"):
        assert f"  {folder}/" in tree
