"""Loading a site file: YAML -> :class:`park.site.Site`, with every refusal tied to its line.

The YAML is composed into nodes (libyaml when present) so each value keeps its line; pydantic
errors and the semantic checks are then mapped back to the nearest node the file really has.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
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

# ${NAME}, or ${NAME:-default} (as in a shell): the default is used when NAME is unset or empty
_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class _Abort(Exception):
    def __init__(self, line: int, loc: Loc, message: str) -> None:
        self.line, self.loc, self.message = line, loc, message


_NOKEY: Any = object()  # a mapping waiting for its next key
_DUP: Any = object()  # the value of a duplicate key: consumed, then dropped


class _Builder:
    """Builds plain data straight from libyaml's event stream, remembering the line of each key and item.

    No node tree is kept (it would be the biggest thing in memory for a large park).
    """

    def __init__(self, file: str, environ: Mapping[str, str], track_lines: bool = True) -> None:
        self.file = file
        self.environ = environ
        self.substituted: set[str] = set()  # values taken from the environment: never echoed in a problem
        self.track = track_lines  # lines are only needed to report problems: a valid file skips them
        self.lines: dict[Loc, int] = {}
        self.problems: list[Problem] = []
        self._ctor = yaml.SafeLoader("")  # only its scalar constructors are used
        self._resolver = yaml.resolver.Resolver()
        self._tags: dict[tuple[str, Any], str] = {}

    def build(self, events: Iterable[yaml.Event]) -> Any:
        stack: list[list[Any]] = []  # [container, its loc, pending key]
        anchors: dict[str, Any] = {}
        root: Any = None
        # event types compared by identity, not isinstance: a national registry is millions of events
        scalar_ev, map_ev, seq_ev, alias_ev = yaml.ScalarEvent, yaml.MappingStartEvent, yaml.SequenceStartEvent, \
            yaml.AliasEvent
        ends = (yaml.MappingEndEvent, yaml.SequenceEndEvent)
        ev: Any
        for ev in events:
            et = type(ev)
            if et in ends:
                stack.pop()
                continue
            if et is not scalar_ev and et is not map_ev and et is not seq_ev and et is not alias_ev:
                continue  # stream and document boundaries
            line = ev.start_mark.line + 1 if ev.start_mark else 0
            parent = stack[-1] if stack else None
            if parent is not None and type(parent[0]) is dict and parent[2] is _NOKEY:
                if et is not scalar_ev:
                    raise _Abort(line, parent[1], "a key must be a plain word")
                key = self._scalar(ev, line, parent[1])
                k = key if isinstance(key, str) else str(key)
                if k in parent[0]:
                    self._problem(line, (*parent[1], k), f"key '{k}' is given twice in the same block; keep one")
                    parent[2] = _DUP
                else:
                    parent[2] = k
                    if self.track:
                        self.lines[(*parent[1], k)] = line
                continue
            if parent is None:
                loc: Loc = ()
                self.lines[loc] = line
            elif type(parent[0]) is dict:
                loc = (*parent[1], "<dup>") if parent[2] is _DUP else (*parent[1], parent[2])
            else:
                loc = (*parent[1], len(parent[0]))
                if self.track:
                    self.lines[loc] = line
            value: Any
            if et is map_ev:
                value = {}
            elif et is seq_ev:
                value = []
            elif et is alias_ev:
                if ev.anchor not in anchors:
                    raise _Abort(line, loc, f"alias *{ev.anchor} has no anchor before it")
                value = anchors[ev.anchor]
            else:
                value = self._scalar(ev, line, loc)
            if et is not alias_ev and ev.anchor:
                anchors[ev.anchor] = value
            if parent is None:
                root = value
            elif type(parent[0]) is dict:
                if parent[2] is not _DUP:
                    parent[0][parent[2]] = value
                parent[2] = _NOKEY
            else:
                parent[0].append(value)
            if et is map_ev:
                stack.append([value, loc, _NOKEY])
            elif et is seq_ev:
                stack.append([value, loc, None])
        return root

    def _scalar(self, ev: yaml.ScalarEvent, line: int, loc: Loc) -> Any:
        tag: str | None
        if ev.tag and ev.tag != "!":
            tag = ev.tag
        else:  # the same words recur thousands of times (keys, kinds, units): resolve each once
            key = (ev.value, ev.implicit)
            tag = self._tags.get(key)
            if tag is None:
                tag = self._tags[key] = self._resolver.resolve(yaml.ScalarNode, ev.value, ev.implicit)
        if tag == "tag:yaml.org,2002:str" or tag == "tag:yaml.org,2002:timestamp":
            # timestamps stay text: durations and dates are parsed by the models, not by YAML
            value: Any = ev.value
            # message templates use ${…} for their own placeholders; secrets are substituted elsewhere
            if "${" in value and loc[:2] != ("channels", "templates"):
                value = self._substitute(value, line, loc)
            return value
        node = yaml.ScalarNode(tag, ev.value)
        if tag == "tag:yaml.org,2002:int":
            return self._ctor.construct_yaml_int(node)
        if tag == "tag:yaml.org,2002:float":
            return self._ctor.construct_yaml_float(node)
        if tag == "tag:yaml.org,2002:bool":
            return self._ctor.construct_yaml_bool(node)
        if tag == "tag:yaml.org,2002:null":
            return None
        self._problem(line, loc, f"YAML tag {tag} is not allowed here")
        return None

    def _substitute(self, value: str, line: int, loc: Loc) -> str:
        def repl(m: re.Match[str]) -> str:
            name, default = m.group(1), m.group(2)
            if default is not None and not self.environ.get(name):
                return default
            if name not in self.environ:
                self._problem(
                    line, loc,
                    f"environment variable {name} is not set; export {name}=… before starting, "
                    "or write the value",
                )
                return ""
            if self.environ[name]:
                self.substituted.add(self.environ[name])
            return self.environ[name]

        return _ENV.sub(repl, value)

    def mask(self, text: str) -> str:
        """``text`` with every value taken from the environment (secrets, as a rule) replaced by ***."""
        for v in sorted(self.substituted, key=len, reverse=True):
            text = text.replace(v, "***")
        return text

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
        return _parse(text, file, env, track_lines=False)
    except SiteFileError:
        # the fast pass found a problem: parse again, keeping every line, to say where it is
        return _parse(text, file, env, track_lines=True)


def _parse(text: str, file: str, env: Mapping[str, str], track_lines: bool) -> Site:
    b = _Builder(file, env, track_lines)
    try:
        data = b.build(yaml.parse(text, Loader=_Loader))
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = mark.line + 1 if mark else None
        raise SiteFileError(file, [Problem(file, line, "", f"not valid YAML: {e.problem}")]) from None
    except yaml.reader.ReaderError as e:  # a character YAML does not allow (a control character, …)
        line = text.count("\n", 0, e.position) + 1
        raise SiteFileError(file, [Problem(file, line, "", f"not valid YAML: character {e.character!r} is not "
                                           "allowed; delete it (often pasted from another program)")]) from None
    except yaml.YAMLError as e:  # any other refusal by the YAML reader, without a position of its own
        raise SiteFileError(file, [Problem(file, 1, "", f"not valid YAML: {type(e).__name__}")]) from None
    except _Abort as e:
        raise SiteFileError(file, [Problem(file, e.line, loc_text(e.loc), e.message)]) from None
    if data is None:
        raise SiteFileError(file, [Problem(file, 1, "", "the file is empty; see deploy/ for an example")])
    if not isinstance(data, dict):
        raise SiteFileError(file, [Problem(file, 1, "", "the file must be a mapping with site:, districts: …")])
    if b.problems:
        raise SiteFileError(file, b.problems)
    try:
        site = Site.model_validate(data)
    except ValidationError as e:
        raise SiteFileError(file, [_problem_from_pydantic(b, err) for err in e.errors()]) from None
    del data
    sem = [Problem(file, b.line_of(loc), loc_text(loc), b.mask(msg)) for loc, msg in semantic_problems(site)]
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
        text = f"{_shown(err.get('input'))} is not allowed for {field}; {msg.replace('Input should be', 'use')}"
        if field == "level" or "enterprise" in msg:
            text = f"escalation level {_shown(err.get('input'))} does not exist; use enterprise, town or district"
    elif kind == "union_tag_invalid":
        text = f"unknown provider {err.get('input', {}).get('provider')!r}; use http, aliyun or tencent"
    elif kind == "value_error":
        text = msg.removeprefix("Value error, ")
    elif kind == "string_pattern_mismatch":
        text = f"{_shown(err.get('input'))} is not a valid {field}: letters, digits, '-', '_' or '.' expected"
        if field == "phone":
            text = f"{_shown(err.get('input'))} is not a phone number; write digits only, e.g. \"13800000000\""
        elif field == "tag":
            text = (f"tag {_shown(err.get('input'))} may not contain '/', '+', '#' or spaces"
                    " (they are MQTT topic syntax)")
    else:
        text = f"{msg} (got {_shown(err.get('input'))})"
    return Problem(b.file, b.line_of(loc), loc_text(loc), b.mask(text))


def _shown(value: Any) -> str:
    """A value for a problem's sentence: scalars quoted (and cut short), never a whole subtree."""
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
