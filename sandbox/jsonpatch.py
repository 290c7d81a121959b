"""JSON Patch (RFC 6902) for the FHIR PATCH interaction: add, remove, replace and test.

Written here rather than taken from a library so the sandbox is strict in the ways the RFC is: a
pointer into a missing member fails, `test` compares JSON values exactly, and a failing operation
leaves the document untouched (the caller gets a new document only when every operation succeeded).
"""
from __future__ import annotations

import copy
from typing import Any

SUPPORTED_OPS = ("add", "remove", "replace", "test")


class PatchError(Exception):
    """The patch is malformed or one of its operations cannot be applied."""


def parse_pointer(pointer: str) -> list[str]:
    """Split a JSON Pointer (RFC 6901) into unescaped reference tokens."""
    if pointer == "":
        return []
    if not pointer.startswith("/"):
        raise PatchError(f"JSON pointer {pointer!r} must start with '/'")
    # ~1 must be decoded before ~0, so that "~01" becomes "~1" and not "/".
    return [t.replace("~1", "/").replace("~0", "~") for t in pointer[1:].split("/")]


def _array_index(token: str, length: int, *, allow_end: bool) -> int:
    """Turn an array token into an index, refusing leading zeros and out-of-range values."""
    if token == "-" and allow_end:
        return length
    if not token.isdigit() or (len(token) > 1 and token[0] == "0"):
        raise PatchError(f"{token!r} is not an array index")
    index = int(token)
    limit = length if allow_end else length - 1
    if index > limit:
        raise PatchError(f"array index {index} is out of range")
    return index


def _resolve(doc: Any, tokens: list[str]) -> Any:
    """The value a list of tokens points at; every step must exist."""
    node = doc
    for token in tokens:
        if isinstance(node, dict):
            if token not in node:
                raise PatchError(f"member {token!r} does not exist")
            node = node[token]
        elif isinstance(node, list):
            node = node[_array_index(token, len(node), allow_end=False)]
        else:
            raise PatchError(f"cannot descend into a {type(node).__name__} with {token!r}")
    return node


def _json_equal(a: Any, b: Any) -> bool:
    """Equality in the JSON sense: no mixing of booleans and numbers, objects unordered."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_json_equal(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_json_equal(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and a == b


def _apply_one(doc: Any, op: dict[str, Any]) -> Any:
    """Apply one operation to doc (in place where possible) and return the resulting document."""
    name = op.get("op")
    if name not in SUPPORTED_OPS:
        raise PatchError(f"operation {name!r} is not supported")
    if not isinstance(op.get("path"), str):
        raise PatchError(f"{name}: 'path' must be a string")
    tokens = parse_pointer(op["path"])
    if name in ("add", "replace", "test") and "value" not in op:
        raise PatchError(f"{name}: 'value' is required")
    value = copy.deepcopy(op.get("value"))

    if name == "test":
        if not _json_equal(_resolve(doc, tokens), value):
            raise PatchError(f"test failed at {op['path']!r}")
        return doc
    if not tokens:
        if name == "remove":
            raise PatchError("cannot remove the whole document")
        return value  # add or replace at the root swaps the document
    parent = _resolve(doc, tokens[:-1])
    last = tokens[-1]
    if isinstance(parent, dict):
        if name in ("remove", "replace") and last not in parent:
            raise PatchError(f"{name}: member {last!r} does not exist")
        if name == "remove":
            del parent[last]
        else:
            parent[last] = value
    elif isinstance(parent, list):
        if name == "add":
            parent.insert(_array_index(last, len(parent), allow_end=True), value)
        else:
            index = _array_index(last, len(parent), allow_end=False)
            if name == "remove":
                del parent[index]
            else:
                parent[index] = value
    else:
        raise PatchError(f"{name}: the target's parent is not an object or array")
    return doc


def apply_patch(document: Any, patch: Any) -> Any:
    """Return a patched copy of document; raise PatchError and leave document unchanged on failure."""
    if not isinstance(patch, list):
        raise PatchError("a JSON Patch document must be an array")
    result = copy.deepcopy(document)
    for op in patch:
        if not isinstance(op, dict):
            raise PatchError("each operation must be an object")
        result = _apply_one(result, op)
    return result
