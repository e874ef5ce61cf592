"""Read YAML into plain Python values while remembering the line of every field.

Used by gateway.scopes and gateway.plans so that load errors can say ``file:line: field: message``
(``FileError``, the base of both modules' errors).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import yaml
from yaml.constructor import SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

_MAP_TAG = "tag:yaml.org,2002:map"
_SEQ_TAG = "tag:yaml.org,2002:seq"


class _Refused(yaml.MarkedYAMLError):
    """Valid YAML that this loader does not accept (an alias)."""


class _Loader(yaml.SafeLoader):
    """SafeLoader that refuses aliases, so each node has one place (and line) in the file."""

    def compose_node(self, parent: Node | None, index: Any) -> Node | None:
        if self.check_event(yaml.AliasEvent):
            mark = self.peek_event().start_mark
            raise _Refused(problem="YAML aliases (*name) are not supported", problem_mark=mark)
        return super().compose_node(parent, index)


class FileError(Exception):
    """A file (or flag) that cannot be used; ``str()`` reads ``file:line: field: message``, the
    parts that are unknown left out."""

    def __init__(self, file: str, line: int | None, field: str, message: str) -> None:
        super().__init__(file, line, field, message)
        self.file, self.line, self.field, self.message = file, line, field, message

    def __str__(self) -> str:
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        return ": ".join(part for part in (where, self.field, self.message) if part)


class YamlError(Exception):
    """The text is not YAML this loader accepts; ``line`` is 1-based or None."""

    def __init__(self, line: int | None, field: str, message: str) -> None:
        super().__init__(line, field, message)
        self.line = line
        self.field = field
        self.message = message


@dataclass(frozen=True, slots=True)
class Document:
    """A loaded document: ``value`` plus field path -> 1-based line of its value / its key.

    Field paths look like ``routes[3].scope`` (mapping keys joined with ``.``, list
    indexes 0-based in brackets); the root is ``""``. An empty document has no lines.
    """

    value: Any
    lines: Mapping[str, int]
    key_lines: Mapping[str, int]


def compose(text: str) -> Document:
    """Parse ``text`` with ``yaml.compose`` (SafeLoader) and convert it, keeping line numbers.

    Mapping keys are taken as their literal text. Duplicate keys, aliases and custom
    tags on collections are refused with a YamlError naming the line.
    """
    try:
        root = yaml.compose(text, Loader=_Loader)
    except _Refused as exc:
        raise YamlError(exc.problem_mark.line + 1, "", str(exc.problem)) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        message = f"YAML syntax error: {exc.problem or exc.context or 'invalid YAML'}"
        if exc.problem and exc.context:
            message += f" ({exc.context}" + (f" on line {exc.context_mark.line + 1})" if exc.context_mark else ")")
        raise YamlError(mark.line + 1 if mark else None, "", message) from None
    except yaml.YAMLError as exc:  # e.g. ReaderError: non-printable characters
        raise YamlError(None, "", f"YAML error: {exc}") from None
    if root is None:
        return Document(None, {}, {})
    walker = _Walker()
    value = walker.convert(root, "")
    return Document(value, walker.lines, walker.key_lines)


class _Walker:
    def __init__(self) -> None:
        self.lines: dict[str, int] = {}
        self.key_lines: dict[str, int] = {}
        self.constructor = SafeConstructor()

    def convert(self, node: Node, field: str) -> Any:
        line = node.start_mark.line + 1
        self.lines[field] = line
        if isinstance(node, ScalarNode):
            try:
                return self.constructor.construct_object(node, deep=True)
            except yaml.MarkedYAMLError as exc:
                raise YamlError(line, field, f"cannot read value: {exc.problem}") from None
        if isinstance(node, SequenceNode):
            if node.tag != _SEQ_TAG:
                raise YamlError(line, field, f"unsupported YAML tag {node.tag!r}")
            return [self.convert(item, f"{field}[{i}]") for i, item in enumerate(node.value)]
        if isinstance(node, MappingNode):
            if node.tag != _MAP_TAG:
                raise YamlError(line, field, f"unsupported YAML tag {node.tag!r}")
            out: dict[str, Any] = {}
            for key_node, value_node in node.value:
                key_line = key_node.start_mark.line + 1
                if not isinstance(key_node, ScalarNode):
                    raise YamlError(key_line, field, "mapping keys must be plain text")
                key = key_node.value
                child = f"{field}.{key}" if field else key
                if key in out:
                    first = self.key_lines[child]
                    raise YamlError(key_line, child, f"duplicate key {key!r} (first on line {first})")
                self.key_lines[child] = key_line
                out[key] = self.convert(value_node, child)
            return out
        raise YamlError(line, field, f"unsupported YAML node {type(node).__name__}")  # pragma: no cover
