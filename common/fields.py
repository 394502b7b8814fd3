"""Docstrings of dataclass fields: the config's help texts (CLI flags) are read from the source."""

from __future__ import annotations

import ast
import inspect
import textwrap
from functools import cache


def field_help(cls: type, name: str) -> str:
    """The docstring of a dataclass field (used as the CLI help text)."""
    return field_docs(cls)[name]


@cache
def field_docs(cls: type) -> dict[str, str]:
    """Read the string literal that follows each field in the class source."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    docs: dict[str, str] = {}
    body = tree.body[0].body
    for node, nxt in zip(body, body[1:]):
        if isinstance(node, ast.AnnAssign) and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant):
            docs[node.target.id] = " ".join(str(nxt.value.value).split())
    return docs
