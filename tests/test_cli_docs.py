"""The CLI reference in docs/ is generated from the click groups; this fails when a command, option or
help text changed and nobody re-ran ``python scripts/gen_cli_docs.py``."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def load_generator():
    spec = importlib.util.spec_from_file_location("gen_cli_docs", ROOT / "scripts" / "gen_cli_docs.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("gen_cli_docs", module)
    spec.loader.exec_module(module)
    return module


def test_committed_cli_reference_matches_the_cli(tmp_path: Path) -> None:
    # A fresh interpreter with an empty EDGEML_HOME: help texts must not depend on what earlier tests
    # left in this process (imported modules, user target profiles) or on the user's own files.
    env = {**os.environ, "EDGEML_HOME": str(tmp_path), "COLUMNS": "80"}
    env.pop("EDGEML_TARGETS_PATH", None)
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "gen_cli_docs.py"), "--check"],
                            capture_output=True, text=True, env=env, cwd=ROOT)
    assert result.returncode == 0, f"run: python scripts/gen_cli_docs.py (the CLI changed)\n{result.stderr}"


def test_every_command_of_every_program_is_documented() -> None:
    gen = load_generator()
    for program in gen.PROGRAMS:
        text = (ROOT / program.page).read_text()
        names = [name for name, _ in gen.walk(gen.load_group(program.module), [program.name], None)]
        assert len(names) > 1, f"{program.name} has no subcommands?"
        for name in names:
            assert f"`{name}`" in text, f"{name} is missing from {program.page}"


def test_generated_section_replaces_only_itself(tmp_path: Path) -> None:
    # given a page with prose before and after an old generated section
    gen = load_generator()
    program = gen.PROGRAMS[1]
    page = f"# Agent\n\nintro\n\n{gen.BEGIN}\nstale text\n{gen.END}\n\n## After\nmore prose\n"
    # when it is rendered, the prose is kept and the stale text replaced by the live reference
    out = gen.render(page, program)
    assert out.startswith("# Agent\n\nintro\n\n") and out.endswith("\n\n## After\nmore prose\n")
    assert "stale text" not in out and "Enrol this device with a fleet server." in out
    # and rendering again changes nothing (the check is stable)
    assert gen.render(out, program) == out


def test_docs_pages_link_to_each_other_without_dead_links() -> None:
    import re

    for page in (ROOT / "docs").glob("*.md"):
        for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", page.read_text()):
            if "://" in target:
                continue
            assert (page.parent / target).resolve().exists(), f"{page.name} links to missing {target}"
