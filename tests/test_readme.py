"""The README's config reference is generated from the config classes and must stay current."""

from __future__ import annotations

from pathlib import Path

from tether.readme import CONFIG_TABLES, render_table

README = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")


def test_readme_config_tables_match_the_code():
    for name in CONFIG_TABLES:
        block = f"<!-- config:{name} -->\n{render_table(name)}\n<!-- /config:{name} -->"
        assert block in README, (
            f"README config table '{name}' is stale: run .venv/bin/python scripts/readme_config.py"
        )


def test_readme_opens_with_the_two_commands_ci_uses():
    ci = (Path(__file__).resolve().parents[1] / ".ci" / "run").read_text()
    assert "make test" in ci
    first_block = README.split("```")[1]
    assert "make demo" in first_block and "make test" in first_block
