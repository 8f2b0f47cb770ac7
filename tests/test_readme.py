"""README must stay true: the test command it gives is the one CI runs."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).parent.parent


def test_ci_runs_the_readme_test_command() -> None:
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)\n```", readme, re.S)
    [command] = [block for block in blocks if "pytest" in block]
    ci_lines = (ROOT / ".ci" / "run").read_text().splitlines()
    assert command in ci_lines


def test_every_flag_in_the_readme_table_exists() -> None:
    from typer.testing import CliRunner

    from sse_adapter.cli import app

    help_text = CliRunner().invoke(app, ["serve", "--help"], env={"COLUMNS": "200"}).output
    readme = (ROOT / "README.md").read_text()
    for flag in re.findall(r"^\| `(--[a-z-]+)", readme, re.M):
        assert flag in help_text, flag
