"""Loading a site file: YAML -> :class:`park.site.Site`, with every refusal tied to its line.

The YAML is composed into nodes (libyaml when present) so each value keeps its line; pydantic
errors and the semantic checks are then mapped back to the nearest node the file really has.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from park.errors import Problem, SiteFileError
from park.site import Loc, Site, loc_text, semantic_problems

try:
    from yaml import CSafeLoader as _Loader
except ImportError:  # pragma: no cover - libyaml missing
    from yaml import SafeLoader as _Loader  # type: ignore[assignment]

_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_SCALAR_TAGS = {
    "tag:yaml.org,2002:int",
    "tag:yaml.org,2002:float",
    "tag:yaml.org,2002:bool",
    "tag:yaml.org,2002:null",
    "tag:yaml.org,2002:str",
    "tag:yaml.org,2002:timestamp",
}


class _Builder:
    """Turns a node tree into plain data and a map from path to 1-based line."""

    def __init__(self, file: str, environ: Mapping[str, str]) -> None:
        self.file = file
        self.environ = environ
        self.lines: dict[Loc, int] = {}
        self.problems: list[Problem] = []
        self._ctor = yaml.SafeLoader("")  # only its scalar constructors are used

    def build(self, node: yaml.Node, loc: Loc) -> Any:
        self.lines.setdefault(loc, node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode):
            out: dict[Any, Any] = {}
            for knode, vnode in node.value:
                key = self.build(knode, (*loc, "<key>"))
                if not isinstance(key, str | int | float | bool):
                    self._problem(knode.start_mark.line + 1, loc, "a key must be a plain word")
                    continue
                if key in out:
                    self._problem(
                        knode.start_mark.line + 1, (*loc, str(key)),
                        f"key '{key}' is given twice in the same block; keep one",
                    )
                    continue
                k = key if isinstance(key, str) else str(key)
                self.lines[(*loc, k)] = knode.start_mark.line + 1
                out[k] = self.build(vnode, (*loc, k))
            return out
        if isinstance(node, yaml.SequenceNode):
            return [self.build(item, (*loc, i)) for i, item in enumerate(node.value)]
        assert isinstance(node, yaml.ScalarNode)
        if node.tag not in _SCALAR_TAGS:
            self._problem(node.start_mark.line + 1, loc, f"YAML tag {node.tag} is not allowed here")
            return None
        if node.tag == "tag:yaml.org,2002:timestamp":
            return node.value  # durations/dates are parsed by the models, not by YAML
        value = self._ctor.construct_object(node)
        if isinstance(value, str) and "${" in value:
            value = self._substitute(value, node.start_mark.line + 1, loc)
        return value

    def _substitute(self, value: str, line: int, loc: Loc) -> str:
        def repl(m: re.Match[str]) -> str:
            name = m.group(1)
            if name not in self.environ:
                self._problem(
                    line, loc,
                    f"environment variable {name} is not set; export {name}=… before starting, "
                    "or write the value",
                )
                return ""
            return self.environ[name]

        return _ENV.sub(repl, value)

    def _problem(self, line: int, loc: Loc, message: str) -> None:
        self.problems.append(Problem(self.file, line, loc_text(loc), message))

    def line_of(self, loc: Loc) -> int | None:
        path: Loc = ()
        best = self.lines.get((), None)
        for part in loc:
            cand = (*path, part)
            if cand in self.lines:
                path = cand
                best = self.lines[cand]
        return best


def load_site(path: str | os.PathLike[str], environ: Mapping[str, str] | None = None) -> Site:
    """Read and validate a site file; raise :class:`SiteFileError` listing every problem."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SiteFileError(str(p), [Problem(str(p), None, "", "file not found")]) from None
    except UnicodeDecodeError as e:
        raise SiteFileError(
            str(p), [Problem(str(p), None, "", f"not UTF-8 text ({e.reason}); save it as UTF-8")]
        ) from None
    return parse_site(text, str(p), environ)


def parse_site(text: str, file: str = "<site>", environ: Mapping[str, str] | None = None) -> Site:
    env = os.environ if environ is None else environ
    try:
        root = yaml.compose(text, Loader=_Loader)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = mark.line + 1 if mark else None
        raise SiteFileError(file, [Problem(file, line, "", f"not valid YAML: {e.problem}")]) from None
    if root is None:
        raise SiteFileError(file, [Problem(file, 1, "", "the file is empty; see deploy/ for an example")])
    b = _Builder(file, env)
    data = b.build(root, ())
    if not isinstance(data, dict):
        raise SiteFileError(file, [Problem(file, 1, "", "the file must be a mapping with site:, districts: …")])
    if b.problems:
        raise SiteFileError(file, b.problems)
    try:
        site = Site.model_validate(data)
    except ValidationError as e:
        raise SiteFileError(file, [_problem_from_pydantic(b, err) for err in e.errors()]) from None
    sem = [Problem(file, b.line_of(loc), loc_text(loc), msg) for loc, msg in semantic_problems(site)]
    if sem:
        raise SiteFileError(file, sem)
    return site


def _problem_from_pydantic(b: _Builder, err: Any) -> Problem:
    loc: Loc = tuple(err["loc"])
    kind = err["type"]
    field = str(loc[-1]) if loc else ""
    msg = err["msg"]
    if kind == "extra_forbidden":
        text = f"unknown key '{field}'; remove it or check its spelling"
    elif kind == "missing":
        text = f"'{field}' is required here"
    elif kind in ("literal_error", "enum"):
        text = f"{err.get('input')!r} is not allowed for {field}; {msg.replace('Input should be', 'use')}"
        if field == "level" or "enterprise" in msg:
            text = f"escalation level {err.get('input')!r} does not exist; use enterprise, town or district"
    elif kind == "union_tag_invalid":
        text = f"unknown provider {err.get('input', {}).get('provider')!r}; use http, aliyun or tencent"
    elif kind == "value_error":
        text = msg.removeprefix("Value error, ")
    elif kind == "string_pattern_mismatch":
        text = f"{err.get('input')!r} is not a valid {field}: letters, digits, '-', '_' or '.' expected"
        if field == "phone":
            text = f"{err.get('input')!r} is not a phone number; write digits only, e.g. \"13800000000\""
        elif field == "tag":
            text = f"tag {err.get('input')!r} may not contain '/', '+', '#' or spaces (they are MQTT topic syntax)"
    else:
        text = f"{msg} (got {err.get('input')!r})"
    return Problem(b.file, b.line_of(loc), loc_text(loc), text)
