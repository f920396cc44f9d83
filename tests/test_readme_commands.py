"""`make help` (the Makefile's default goal) names every make target the README tells a
reader to run: `make setup` (Production) and the test legs were missing from it."""

from __future__ import annotations

import re
import subprocess

from billing_app.settings import PROJECT_ROOT


def test_make_help_names_every_target_the_readme_uses():
    readme = (PROJECT_ROOT / "README.md").read_text()
    targets = set(re.findall(r"`make ([a-z][a-z-]*)", readme)) | set(
        re.findall(r"^make ([a-z][a-z-]*)", readme, re.MULTILINE)
    )
    assert {"run", "test", "setup", "test-sqlite", "test-postgres"} <= targets
    proc = subprocess.run(
        ["make", "--no-print-directory", "help"],
        capture_output=True,
        text=True,
        cwd=PROJECT_ROOT,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    named = set(re.findall(r"make ([a-z][a-z-]*)", proc.stdout))
    assert targets - named == set()
