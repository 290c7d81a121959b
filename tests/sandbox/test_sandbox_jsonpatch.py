"""JSON Patch (RFC 6902) as the sandbox applies it, including the RFC's own edge cases."""
from __future__ import annotations

from typing import Any

import pytest

from sandbox.jsonpatch import PatchError, apply_patch, parse_pointer


def test_pointer_unescapes_tilde_and_slash_in_the_right_order() -> None:
    assert parse_pointer("/a~1b/m~0n/~01") == ["a/b", "m~n", "~1"]
    assert parse_pointer("") == []


def test_pointer_must_start_with_slash() -> None:
    with pytest.raises(PatchError):
        parse_pointer("a/b")


def test_add_appends_with_dash_and_inserts_by_index() -> None:
    doc = {"list": [1, 3]}
    out = apply_patch(doc, [{"op": "add", "path": "/list/1", "value": 2}, {"op": "add", "path": "/list/-", "value": 4}])
    assert out == {"list": [1, 2, 3, 4]}
    assert doc == {"list": [1, 3]}  # the input is never changed


def test_add_sets_a_member_and_replaces_an_existing_one() -> None:
    assert apply_patch({"a": 1}, [{"op": "add", "path": "/b", "value": {"c": 2}}]) == {"a": 1, "b": {"c": 2}}
    assert apply_patch({"a": 1}, [{"op": "add", "path": "/a", "value": 5}]) == {"a": 5}


def test_escaped_member_names_are_addressed() -> None:
    assert apply_patch({"a/b": 1, "m~n": 2}, [{"op": "replace", "path": "/a~1b", "value": 3},
                                                {"op": "remove", "path": "/m~0n"}]) == {"a/b": 3}


def test_remove_and_replace_in_arrays() -> None:
    doc = {"x": ["a", "b", "c"]}
    assert apply_patch(doc, [{"op": "remove", "path": "/x/0"}]) == {"x": ["b", "c"]}
    assert apply_patch(doc, [{"op": "replace", "path": "/x/2", "value": "z"}]) == {"x": ["a", "b", "z"]}


@pytest.mark.parametrize(
    "ops",
    [
        [{"op": "remove", "path": "/missing"}],
        [{"op": "replace", "path": "/missing", "value": 1}],
        [{"op": "add", "path": "/missing/child", "value": 1}],
        [{"op": "add", "path": "/list/5", "value": 1}],
        [{"op": "remove", "path": "/list/-"}],
        [{"op": "replace", "path": "/list/01", "value": 1}],
        [{"op": "move", "from": "/a", "path": "/b"}],
        [{"op": "add", "path": "/a"}],
        [{"path": "/a", "value": 1}],
        [{"op": "test", "path": "/a", "value": "1"}],
    ],
)
def test_invalid_operations_fail(ops: list[dict[str, Any]]) -> None:
    with pytest.raises(PatchError):
        apply_patch({"a": 1, "list": [0]}, ops)


def test_test_compares_json_values_not_python_ones() -> None:
    apply_patch({"a": {"x": [1, 2]}}, [{"op": "test", "path": "/a", "value": {"x": [1, 2]}}])
    apply_patch({"n": 1}, [{"op": "test", "path": "/n", "value": 1.0}])
    with pytest.raises(PatchError):
        apply_patch({"flag": True}, [{"op": "test", "path": "/flag", "value": 1}])


def test_a_failure_midway_leaves_the_input_unchanged() -> None:
    doc = {"status": "planned"}
    with pytest.raises(PatchError):
        apply_patch(doc, [{"op": "replace", "path": "/status", "value": "x"}, {"op": "remove", "path": "/nope"}])
    assert doc == {"status": "planned"}


def test_patch_must_be_an_array() -> None:
    with pytest.raises(PatchError):
        apply_patch({}, {"op": "add", "path": "/a", "value": 1})


@pytest.mark.parametrize(
    "ops",
    [
        [{"op": "remove", "path": "/missing"}],
        [{"op": "replace", "path": "/missing", "value": 1}],
        [{"op": "add", "path": "/missing/child", "value": 1}],
        [{"op": "add", "path": "/missing/-", "value": 1}],
        [{"op": "add", "path": "/list/5", "value": 1}],
        [{"op": "remove", "path": "/list/-"}],
        [{"op": "replace", "path": "/list/01", "value": 1}],
        [{"op": "add", "path": "/a"}],
        [{"path": "/a", "value": 1}],
        [{"op": "test", "path": "/a", "value": "1"}],
        [{"op": "add", "path": "a", "value": 1}],
    ],
)
def test_what_the_sandbox_refuses_an_independent_implementation_refuses_too(ops: list[dict[str, Any]]) -> None:
    """The sandbox is no more lenient than the PyPI `jsonpatch` library (it is stricter only about `test`
    comparing true with 1, and about operations it does not offer, like `move`)."""
    import jsonpatch
    import jsonpointer

    doc = {"a": 1, "list": [0]}
    with pytest.raises(PatchError):
        apply_patch(doc, ops)
    with pytest.raises((jsonpatch.JsonPatchException, jsonpointer.JsonPointerException)):
        jsonpatch.JsonPatch(ops).apply(doc)


@pytest.mark.parametrize(
    "ops",
    [
        [{"op": "add", "path": "/extension", "value": [{"url": "u"}]}],
        [{"op": "add", "path": "/list/-", "value": 1}, {"op": "add", "path": "/list/0", "value": 2}],
        [{"op": "replace", "path": "/a", "value": {"b": [1]}}, {"op": "add", "path": "/a/b/-", "value": 2}],
        [{"op": "remove", "path": "/list/0"}, {"op": "test", "path": "/list", "value": []}],
    ],
)
def test_what_an_independent_implementation_applies_the_sandbox_applies_alike(ops: list[dict[str, Any]]) -> None:
    import jsonpatch

    doc = {"a": 1, "list": [0]}
    assert apply_patch(doc, ops) == jsonpatch.JsonPatch(ops).apply(doc)
