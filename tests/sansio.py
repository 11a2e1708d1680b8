"""Helpers the tests of the sans-IO cores (exchange, schedule) share: the import check, and a
heapq that counts pops (to show a poll does work in proportion to what changed)."""

from __future__ import annotations

import ast
import heapq
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


class CountingHeapq:
    """Stands in for the heapq module inside a core under test; counts heappop calls."""

    def __init__(self):
        self.pops = 0

    def __getattr__(self, name):
        return getattr(heapq, name)

    def heappop(self, heap):
        self.pops += 1
        return heapq.heappop(heap)
