"""Read a search-space file's YAML safely: bounded in size, each key once, no alias bombs.

    python -m study.sweep my_space.yaml --dry-run     # a refusal is one line naming the file and the place

    raw = read_yaml(Path("search_spaces/grad_clip.yaml"))   # (the file's text, its plain data)

A space file is a few kilobytes of plain mappings and lists. What would make the loader run out
of time or memory is refused before anything is built from it: a file over MAX_BYTES, and a
document whose aliases (`*name`, repeating the node anchored as `&name`) expand it to more than
MAX_NODES nodes; nine levels of nine aliases each (the "billion laughs") expand to 9**9 nodes
from 500 bytes. An alias to a node that contains it is refused too. Anchors and aliases that
merely avoid repeating a few values stay allowed. A UTF-8 byte order mark at the start is
dropped, as editors on Windows write one.
"""

from __future__ import annotations

import re
from collections.abc import Hashable
from pathlib import Path
from typing import Any

import yaml

from study.errors import UsageError

MAX_BYTES = 1 << 20  # the shipped spaces are under 3 KB
MAX_NODES = 100_000  # nodes after aliases are expanded: a grid of 10,000 values is 10,001
BOM = "\ufeff"
ALLOWED = "YAML as shown in study/sweep/space_file.py"


class _Refused(yaml.constructor.ConstructorError):
    """YAML that is well formed but would take too much to load."""


class _Loader(yaml.SafeLoader):
    """yaml's SafeLoader that refuses a repeated key (which would silently replace the first) and
    a document that aliases expand beyond MAX_NODES."""

    def construct_document(self, node):
        _check_expansion(node)
        return super().construct_document(node)

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=deep)
            if not isinstance(key, Hashable):
                continue  # SafeLoader reports an unhashable key itself
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"key '{key}' appears twice", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


# YAML 1.1 reads 1e-3 as a string (it wants 1.0e-3); read it as the number everyone means.
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def _check_expansion(root: yaml.Node) -> None:
    """Refuse a node graph that expands to more than MAX_NODES nodes, or that contains itself.
    The composer gives an alias the very node object of its anchor, so the count is memoised per
    node: linear in the file, however far the aliases would expand."""
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()

    def size(node: yaml.Node) -> int:
        if id(node) in sizes:
            return sizes[id(node)]
        if id(node) in open_nodes:
            raise _Refused(None, None, "an alias refers to a node that contains it", node.start_mark)
        open_nodes.add(id(node))
        children = node.value if isinstance(node, yaml.SequenceNode) else []
        if isinstance(node, yaml.MappingNode):
            children = [child for pair in node.value for child in pair]
        total = 1
        for child in children:
            total += size(child)
            if total > MAX_NODES:
                raise _Refused(
                    None,
                    None,
                    f"aliases expand it to more than {MAX_NODES:,} values (an alias bomb?)",
                    node.start_mark,
                )
        open_nodes.discard(id(node))
        sizes[id(node)] = total
        return total

    # Deep nesting is refused by its size long before Python's recursion limit (1000 levels).
    size(root)


def read_yaml(path: Path) -> tuple[str, Any]:
    """(the file's text without a byte order mark, its YAML as plain Python data); UsageError
    naming the file when it cannot be read, is too large, or is not YAML that loads safely."""
    where = str(path)
    try:
        size = path.stat().st_size
        if size > MAX_BYTES:
            raise UsageError(f"{where}: {size:,} bytes, allowed: a space file of at most {MAX_BYTES:,} bytes")
        text = path.read_text(encoding="utf-8").removeprefix(BOM)
    except (OSError, UnicodeDecodeError) as error:
        raise UsageError(f"{where}: cannot read the file ({error}), allowed: a UTF-8 YAML file") from None
    return text, parse_yaml(text, where)


def parse_yaml(text: str, where: str) -> Any:
    try:
        return yaml.load(text, Loader=_Loader)
    except RecursionError:  # nesting deeper than Python's stack, in fewer than MAX_NODES nodes
        raise UsageError(f"{where}: nested too deeply, allowed: {ALLOWED}") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        at = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "(file)"
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        if isinstance(error, _Refused):
            raise UsageError(
                f"{where}: {at}: refused: {problem}, allowed: anchors and aliases that repeat a few values"
            ) from None
        allowed = "each key once per mapping" if "appears twice" in problem else ALLOWED
        raise UsageError(f"{where}: {at}: malformed YAML: {problem}, allowed: {allowed}") from None
