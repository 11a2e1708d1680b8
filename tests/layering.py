"""What a sans-IO module may import: the check the exchange and schedule tests share."""

from __future__ import annotations

import ast
from collections.abc import Collection


def forbidden_imports(source: str, allowed: Collection[str]) -> list[str]:
    """Every import in `source` that is not in `allowed` (relative ones and __import__ included)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name not in allowed]
        elif isinstance(node, ast.ImportFrom):
            name = "." * node.level + (node.module or "")
            if node.level or name not in allowed:
                found.append(name)
        elif isinstance(node, ast.Call) and getattr(node.func, "id", None) == "__import__":
            found.append("__import__()")
    return found
