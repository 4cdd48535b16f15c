"""JSON and YAML files read as plain data (a user's --config, a search's search.json and
best_config.json, the search space): capped size and nesting, no YAML aliases or tags."""

from __future__ import annotations

import json
import os
import re
from typing import Any

from ucrn.safeload.files import (
    SafeLoadError,
    _decode_utf8,
    _err,
    _exc_text,
    _label,
    _read_capped,
    _short,
)

MAX_JSON_BYTES = 16 << 20  # configs and search results are KBs
MAX_YAML_BYTES = 1 << 20  # a search space is a page of text
MAX_NESTING = 64  # JSON/YAML containers; real configs are 2-4 deep
_MAX_INT_DIGITS = 4300  # CPython's default int/str conversion limit


class _IntTooLong(Exception):
    def __init__(self, digits: int) -> None:
        super().__init__(digits)
        self.digits = digits


class _DuplicateKey(Exception):
    """A key given twice in one JSON object (where: _first_duplicate)."""


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


_JSON_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|[{}\[\]:]')


def _first_duplicate(text: str) -> tuple[str, int, int]:
    """The first key repeated within one object of valid JSON text, with the lines of its
    two places: the parser's hook knows the key but not where it is."""
    keys: list[dict[str, int] | None] = []  # per open container: key -> line (None: a list)
    last = None
    for m in _JSON_TOKEN.finditer(text):
        tok = m.group()
        if tok in ("{", "["):
            keys.append({} if tok == "{" else None)
        elif tok in ("}", "]"):
            if keys:
                keys.pop()
        elif tok == ":" and last is not None and keys and keys[-1] is not None:
            key, line = json.loads(last.group()), text.count("\n", 0, last.start()) + 1
            if key in keys[-1]:
                return key, line, keys[-1][key]
            keys[-1][key] = line
        last = m if tok.startswith('"') else None
    return "?", 1, 1


def _parse_int(text: str) -> int:
    digits = len(text) - (text[:1] == "-")
    if digits > _MAX_INT_DIGITS:
        raise _IntTooLong(digits)
    return int(text)


def _json_type(obj: object) -> str:
    if obj is None:
        return "null"
    if isinstance(obj, bool):
        return "a boolean"
    for t, name in ((dict, "a JSON object"), (list, "a JSON array"), (str, "a string"),
                    ((int, float), "a number")):
        if isinstance(obj, t):
            return name
    return type(obj).__name__


def _expected(expect: type | tuple[type, ...]) -> str:
    types = expect if isinstance(expect, tuple) else (expect,)
    names = {dict: "a JSON object (mapping)", list: "a JSON array (list)", str: "a string",
             int: "an integer", float: "a number"}
    return " or ".join(names.get(t, t.__name__) for t in types)


def _deeper_than(obj: object, limit: int) -> bool:
    """True if lists/dicts nest more than ``limit`` deep; iterative: no recursion to exhaust."""
    todo = [(obj, 1)]
    while todo:
        node, depth = todo.pop()
        if isinstance(node, dict):
            children: Any = node.values()
        elif isinstance(node, list):
            children = node
        else:
            continue
        if depth > limit:
            return True
        todo.extend((c, depth + 1) for c in children)
    return False


def load_json(path: str | os.PathLike[str], what: str,
              expect: type | tuple[type, ...] | None = dict, *,
              max_bytes: int = MAX_JSON_BYTES, max_depth: int = MAX_NESTING) -> Any:
    """Read a JSON file (a user's --config, a search's best_config.json/search.json).

    NaN and Infinity are accepted because the project writes them. ``expect`` is the type(s)
    the top level must have (None: anything). Every problem is one SafeLoadError line that
    starts with ``what`` and the path.
    """
    label = _label(what, path)
    text = _decode_utf8(_read_capped(path, label, "JSON", max_bytes), label, "JSON")
    return parse_json(text, label, expect, max_depth=max_depth)


def parse_json(text: str, label: str, expect: type | tuple[type, ...] | None = dict, *,
               max_depth: int = MAX_NESTING) -> Any:
    """JSON text already read (a local file, or an object from a store) as load_json checks
    it; every problem is one SafeLoadError line starting with ``label``."""
    if not text.strip():
        raise _err(f"{label}: is empty, expected "
                   f"{_expected(expect) if expect is not None else 'JSON'}")
    try:
        obj = json.loads(text, parse_int=_parse_int, object_pairs_hook=_unique_keys)
    except _DuplicateKey:
        key, line, first = _first_duplicate(text)
        raise _err(f"{label}: refused at line {line}: duplicate key {_short(key)} (first at "
                   f"line {first}); each key may appear once in an object (JSON readers "
                   f"silently keep the last)") from None
    except json.JSONDecodeError as exc:
        raise _err(f"{label}: not valid JSON: {exc.msg} at line {exc.lineno} column "
                   f"{exc.colno}") from None
    except RecursionError:
        raise _err(f"{label}: JSON nested too deeply (the limit is {max_depth} levels)") from None
    except _IntTooLong as exc:
        raise _err(f"{label}: JSON holds an integer of {exc.digits} digits (the limit is "
                   f"{_MAX_INT_DIGITS})") from None
    except (ValueError, TypeError) as exc:
        raise _err(f"{label}: not valid JSON: {_exc_text(exc)}") from None
    if _deeper_than(obj, max_depth):
        raise _err(f"{label}: JSON nested too deeply (the limit is {max_depth} levels)")
    if expect is not None and not isinstance(obj, expect):
        raise _err(f"{label}: expected {_expected(expect)} at the top level, got "
                   f"{_json_type(obj)}")
    return obj

# --------------------------------------------------------------------------------------
# YAML
# --------------------------------------------------------------------------------------

_YAML_PLAIN_TAGS = frozenset(f"tag:yaml.org,2002:{t}"
                             for t in ("str", "int", "float", "bool", "null", "seq", "map"))
_yaml_loader: type | None = None


def _yaml_loader_class() -> type:
    """A SafeLoader that composes only plain scalars, sequences and mappings (built on first
    use so that importing this module does not import yaml)."""
    global _yaml_loader
    if _yaml_loader is not None:
        return _yaml_loader
    import yaml

    class StrictLoader(yaml.SafeLoader):
        label = ""
        max_depth = MAX_NESTING

        def __init__(self, stream: str) -> None:
            super().__init__(stream)
            self._depth = 0

        def _refuse(self, what: str, mark: Any) -> SafeLoadError:
            at = f" at line {mark.line + 1}" if mark is not None else ""
            return _err(f"{self.label}: refused{at}: {what}")

        def compose_node(self, parent: Any, index: Any) -> Any:
            event = self.peek_event()
            mark = getattr(event, "start_mark", None)
            if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
                raise self._refuse(f"YAML anchor/alias {_short(event.anchor)}; anchors and "
                                   f"aliases are not allowed (they can expand exponentially)",
                                   mark)
            tag = getattr(event, "tag", None)
            if tag not in (None, "!") and tag not in _YAML_PLAIN_TAGS:
                raise self._refuse(f"YAML tag {_short(tag)}; only plain strings, numbers, "
                                   f"booleans, null, lists and mappings are allowed", mark)
            self._depth += 1
            if self._depth > self.max_depth:
                raise self._refuse(f"YAML nested more than {self.max_depth} levels deep", mark)
            try:
                node = super().compose_node(parent, index)
            finally:
                self._depth -= 1
            if node.tag not in _YAML_PLAIN_TAGS:
                raise self._refuse(f"a YAML value of type {_short(node.tag.rsplit(':', 1)[-1])} "
                                   f"({_short(getattr(node, 'value', ''))}); only plain "
                                   f"strings, numbers, booleans, null, lists and mappings are "
                                   f"allowed (quote it to make it a string)", mark)
            return node

        def construct_mapping(self, node: Any, deep: bool = False) -> Any:
            """A key given twice in one mapping is refused: YAML readers silently keep the
            last, so the first (or a typo's twin) would be ignored without a word."""
            first: dict[Any, int] = {}
            for key_node, _value in getattr(node, "value", ()):
                key = self.construct_object(key_node, deep=True)
                try:
                    seen = first.get(key)
                except TypeError:  # unhashable: the constructor names it
                    continue
                if seen is not None:
                    raise self._refuse(f"duplicate key {_short(key)} (first at line "
                                       f"{seen}); each key may appear once in a mapping "
                                       f"(YAML readers silently keep the last)",
                                       key_node.start_mark)
                first[key] = key_node.start_mark.line + 1
            return super().construct_mapping(node, deep)

    _yaml_loader = StrictLoader
    return StrictLoader


def load_yaml(path: str | os.PathLike[str], what: str,
              expect: type | tuple[type, ...] | None = None, *,
              max_bytes: int = MAX_YAML_BYTES, max_depth: int = MAX_NESTING) -> Any:
    """Read a YAML file (the search space) as plain data: no anchors/aliases ("billion
    laughs" expands exponentially when walked), no tags beyond plain scalars, sequences and
    mappings, capped size and nesting. An empty file is None (unless ``expect`` says
    otherwise). Every problem is one SafeLoadError line starting with ``what`` and the path.
    """
    import yaml

    label = _label(what, path)
    text = _decode_utf8(_read_capped(path, label, "YAML", max_bytes), label, "YAML")
    loader = _yaml_loader_class()(text)
    loader.label, loader.max_depth = label, max_depth
    try:
        obj = loader.get_single_data()
    except SafeLoadError:
        raise
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        at = f" at line {mark.line + 1}" if mark is not None else ""
        problem = exc.problem or exc.context or type(exc).__name__
        raise _err(f"{label}: malformed YAML{at}: {problem}") from None
    except yaml.YAMLError as exc:
        raise _err(f"{label}: malformed YAML: {_exc_text(exc)}") from None
    except (ValueError, TypeError, RecursionError) as exc:  # e.g. an int past 4300 digits
        raise _err(f"{label}: bad YAML value: {_exc_text(exc)}") from None
    finally:
        loader.dispose()
    if expect is not None and not isinstance(obj, expect):
        got = "an empty file" if obj is None else _json_type(obj).replace("JSON ", "YAML ")
        raise _err(f"{label}: expected {_expected(expect).replace('JSON ', 'YAML ')} at the "
                   f"top level, got {got}")
    return obj
