"""Rewrite the config reference tables in README.md from the config classes.

    .venv/bin/python scripts/readme_config.py
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from tether.readme import CONFIG_TABLES, render_table

readme = Path(__file__).resolve().parents[1] / "README.md"
text = readme.read_text(encoding="utf-8")
for name in CONFIG_TABLES:
    begin, end = f"<!-- config:{name} -->", f"<!-- /config:{name} -->"
    pattern = re.compile(re.escape(begin) + ".*?" + re.escape(end), re.S)
    text = pattern.sub(lambda _m, n=name, b=begin, e=end: f"{b}\n{render_table(n)}\n{e}", text)
readme.write_text(text, encoding="utf-8")
