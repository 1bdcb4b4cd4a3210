"""Strings from the model never become code in the generated program."""

from __future__ import annotations

import ast
import json
import subprocess
import sys

from tests.conftest import FIXTURES, ROOT


def test_hostile_module_names_stay_string_literals(tmp_path):
    """A submodule named `class"; import os<newline>x` (a keyword, a quote, a newline, an
    import) must reach run_plan.py only inside escaped string literals, and the program must
    still verify exactly."""
    out = tmp_path / "out"
    r = subprocess.run(
        [sys.executable, "-m", "planner", "verify", str(FIXTURES / "hostile_names.py"),
         "--nproc", "2", "--in-process", "--out", str(out)],
        capture_output=True, text=True, cwd=ROOT,
    )
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout.strip().splitlines()[-1])["ok"] is True
    source = (out / "run_plan.py").read_text()
    tree = ast.parse(source)
    imported = {a.name for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom)) for a in n.names}
    assert "os" not in imported
    names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
    assert "os" not in names
    literals = [n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)]
    assert any('class"; import os\nx' in s for s in literals)
