"""The README's configuration table lists every key gateway/config.py accepts, and nothing else:
a newcomer reading it sees every setting (issue 18), and a new key without a row fails here."""
from __future__ import annotations

import re
from dataclasses import fields

from gateway.config import GatewayConfig
from tests.support.gateway import REPO_ROOT


def table_keys() -> set[str]:
    text = (REPO_ROOT / "README.md").read_text()
    section = text.split("\n## Configuration\n", 1)[1].split("\n## ", 1)[0]
    keys: set[str] = set()
    for line in section.splitlines():
        if line.startswith("| `"):
            first_cell = line.split("|")[1]
            keys.update(name.strip("[]") for name in re.findall(r"`([^`]+)`", first_cell))
    return keys


def test_the_readme_config_table_lists_every_key() -> None:
    known = {f.name for f in fields(GatewayConfig)}
    listed = table_keys()
    assert not known - listed, f"keys missing from the README's configuration table: {sorted(known - listed)}"
    assert not listed - known, f"rows naming no key config.py accepts: {sorted(listed - known)}"
