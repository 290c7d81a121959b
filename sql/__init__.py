"""Plain SQL: numbered forward-only migrations and named queries grouped by area."""
from __future__ import annotations

import re
from functools import cache
from importlib import resources

_NAME = re.compile(r"^--\s*name:\s*(\w+)\s*$", re.MULTILINE)


def migrations() -> list[tuple[int, str, str]]:
    """(version, file name, SQL) for every file in sql/migrations, in order."""
    found = []
    for entry in resources.files(__name__).joinpath("migrations").iterdir():
        match = re.match(r"^(\d{4})_\w+\.sql$", entry.name)
        if match:
            found.append((int(match.group(1)), entry.name, entry.read_text()))
    return sorted(found)


@cache
def queries(area: str) -> dict[str, str]:
    """The named queries of sql/queries/<area>.sql: blocks that start with `-- name: <query>`."""
    text = resources.files(__name__).joinpath("queries", f"{area}.sql").read_text()
    parts = _NAME.split(text)
    return {name: body.strip() for name, body in zip(parts[1::2], parts[2::2])}
