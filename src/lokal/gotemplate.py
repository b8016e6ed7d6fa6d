"""The subset of Go's text/template that Ollama model templates use, parsed and executed in Python.

Supported: text, ``{{ pipeline }}`` with fields (``.System``, ``.Function.Name``), ``.``, variables (``$``,
``$x := …``, ``$x = …``, ``$.System``), string/number/bool/nil literals, parentheses and ``|``;
``if`` / ``else if`` / ``else`` / ``with`` / ``range`` (``range $i, $m := …``, ``break``, ``continue``),
``end``; ``{{-`` / ``-}}`` trimming and ``{{/* comments */}}``; the functions ``and or not eq ne lt le gt
ge len index slice print`` and Ollama's ``json``. ``template`` / ``define`` / ``block`` are not.

Deliberate differences from Go: a missing field is nil rather than an error, and nil prints as nothing
rather than ``<no value>``; a map prints as JSON (as Ollama's tool-call arguments do); ``.Name`` also finds
JSON-style keys (``name``, ``tool_calls`` for ``.ToolCalls``); ``range`` does not iterate over integers.

Parsing follows Ollama's ``template.Parse``: a template that names neither ``.Messages`` nor ``.Response``
gets ``{{ .Response }}`` appended. Any problem is a ``BadRequest`` naming the line.
"""

from __future__ import annotations

import ast
import itertools
import json
import re
from dataclasses import dataclass
from functools import cached_property, lru_cache
from typing import Any, Callable, Iterator, Mapping, Union

from lokal.errors import BadRequest

# ---- the AST: text, actions and branches; operands inside pipelines ------------------------------


@dataclass(frozen=True)
class _Field:  # .A.B, looked up on dot
    names: tuple[str, ...]


@dataclass(frozen=True)
class _Variable:  # $, $x, $.A, $x.A
    name: str
    names: tuple[str, ...] = ()


@dataclass(frozen=True)
class _Dot:
    pass


@dataclass(frozen=True)
class _Literal:
    value: Any


@dataclass(frozen=True)
class _Function:
    name: str


@dataclass(frozen=True)
class _Chain:  # (pipeline).A.B
    pipe: _Pipe
    names: tuple[str, ...]


_Operand = Union[_Field, _Variable, _Dot, _Literal, _Function, _Chain]


@dataclass(frozen=True)
class _Pipe:
    commands: tuple[tuple[_Operand, ...], ...]
    variables: tuple[str, ...] = ()  # declared (:=) or assigned (=) by this pipeline
    is_assign: bool = False


@dataclass(frozen=True)
class _Text:
    text: str


@dataclass(frozen=True)
class _Action:
    pipe: _Pipe


@dataclass(frozen=True)
class _Branch:  # if / with / range
    kind: str
    pipe: _Pipe
    body: tuple[_Node, ...]
    else_body: tuple[_Node, ...] = ()


@dataclass(frozen=True)
class _LoopControl:  # break / continue
    kind: str


_Node = Union[_Text, _Action, _Branch, _LoopControl]

# ---- lexer ---------------------------------------------------------------------------------------

_SPACE = " \t\r\n"
_TOKEN = re.compile(r"""
    (?P<string>"(?:[^"\\\n]|\\.)*")
  | (?P<raw>`[^`]*`)
  | (?P<number>-?\d+(?:\.\d+)?)
  | (?P<declare>:=) | (?P<assign>=) | (?P<pipe>\|) | (?P<lparen>\() | (?P<rparen>\)) | (?P<comma>,)
  | (?P<variable>\$\w*(?:\.[A-Za-z_]\w*)*)
  | (?P<field>(?:\.[A-Za-z_]\w*)+)
  | (?P<dot>\.)
  | (?P<ident>[A-Za-z_]\w*)
""", re.X)


@dataclass(frozen=True)
class _Token:
    kind: str
    value: str
    is_spaced: bool  # whitespace before it: `(x).A` chains a field, `(x) .A` passes an argument


@dataclass(frozen=True)
class _ActionItem:
    tokens: tuple[_Token, ...]
    line: int


def _lex(source: str) -> list[str | _ActionItem]:
    """Text pieces and actions, with ``{{-`` / ``-}}`` whitespace trimming already applied to the text."""
    items: list[str | _ActionItem] = []
    pos, trim_next = 0, False
    while True:
        start = source.find("{{", pos)
        text = source[pos:] if start < 0 else source[pos:start]
        if trim_next:
            text = text.lstrip(_SPACE)
        if start < 0:
            items.append(text)
            return items
        line = source.count("\n", 0, start) + 1
        pos = start + 2
        if source.startswith("-", pos) and source[pos + 1:pos + 2] and source[pos + 1] in _SPACE:
            text, pos = text.rstrip(_SPACE), pos + 2
        items.append(text)
        tokens, pos, trim_next = _lex_action(source, pos, line)
        if tokens is not None:
            items.append(_ActionItem(tokens, line))


def _lex_action(source: str, pos: int, line: int) -> tuple[tuple[_Token, ...] | None, int, bool]:
    """Tokens of one action up to its ``}}``: (tokens or None for a comment, position after, trims next)."""
    if source.startswith("/*", pos):
        end = source.find("*/", pos + 2)
        if end < 0:
            raise BadRequest(f"template: line {line}: unclosed comment")
        pos = end + 2
        for closing, trims in ((" -}}", True), ("}}", False)):
            if source.startswith(closing, pos):
                return None, pos + len(closing), trims
        raise BadRequest(f"template: line {line}: comment must end right before }}}}")
    tokens: list[_Token] = []
    is_spaced = False
    while pos < len(source):
        char = source[pos]
        if char in _SPACE:
            while pos < len(source) and source[pos] in _SPACE:
                pos += 1
            if source.startswith("-}}", pos):
                return tuple(tokens), pos + 3, True
            is_spaced = True
            continue
        if source.startswith("}}", pos):
            return tuple(tokens), pos + 2, False
        match = _TOKEN.match(source, pos)
        if match is None:
            raise BadRequest(f"template: line {line}: unexpected {char!r} in action")
        tokens.append(_Token(match.lastgroup or "", match.group(), is_spaced))
        pos, is_spaced = match.end(), False
    raise BadRequest(f"template: line {line}: unclosed action (missing }}}})")


# ---- parser --------------------------------------------------------------------------------------

def _go_len(value: Any) -> int:
    if isinstance(value, str):
        return len(value.encode())  # Go's len counts bytes
    if isinstance(value, (list, tuple, dict)):
        return len(value)
    raise BadRequest(f"template: len of {_type_name(value)}")


def _go_index(value: Any, *keys: Any) -> Any:
    for key in keys:
        if isinstance(value, str):
            value = value.encode()  # indexing a Go string gives a byte
        try:
            value = value[key] if not isinstance(value, Mapping) else value.get(key)
        except (IndexError, KeyError, TypeError):
            raise BadRequest(f"template: index {key!r} out of range or not indexable") from None
    return value


def _go_slice(value: Any, *bounds: int) -> Any:
    if len(bounds) > 2 or not isinstance(value, (str, list, tuple)):
        raise BadRequest("template: slice takes a string or list and at most two indexes")
    start = bounds[0] if bounds else 0
    end = bounds[1] if len(bounds) > 1 else len(value)
    if not 0 <= start <= end <= len(value):
        raise BadRequest(f"template: slice index out of range [{start}:{end}] with length {len(value)}")
    return value[start:end]


def _go_json(value: Any) -> str:
    # Go's json.Marshal: compact, and HTML-safe escapes for <, > and &.
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _compare(op: Callable[[Any, Any], bool]) -> Callable[[Any, Any], bool]:
    def compare(left: Any, right: Any) -> bool:
        try:
            return op(left, right)
        except TypeError:
            raise BadRequest(f"template: incompatible types for comparison: {_type_name(left)} and "
                             f"{_type_name(right)}") from None
    return compare


_FUNCTIONS: dict[str, Callable[..., Any]] = {
    "not": lambda value: not _truth(value),
    "eq": lambda left, *rights: any(left == right for right in rights),
    "ne": lambda left, right: left != right,
    "lt": _compare(lambda a, b: a < b), "le": _compare(lambda a, b: a <= b),
    "gt": _compare(lambda a, b: a > b), "ge": _compare(lambda a, b: a >= b),
    "len": _go_len, "index": _go_index, "slice": _go_slice, "json": _go_json,
    "print": lambda *values: "".join(_go_print(v) for v in values),
}
_LAZY_FUNCTIONS = {"and", "or"}  # short-circuit: arguments are evaluated one at a time
_UNSUPPORTED_KEYWORDS = {"template", "define", "block"}


class _Parser:
    def __init__(self, items: list[str | _ActionItem]):
        self._items = items
        self._pos = 0
        self._scopes: list[set[str]] = [{"$"}]
        self._range_depth = 0

    def parse(self) -> tuple[_Node, ...]:
        nodes, stop = self._parse_list()
        if stop is not None:
            keyword = stop.tokens[0].value
            raise BadRequest(f"template: line {stop.line}: unexpected {{{{ {keyword} }}}} without a matching "
                             f"{{{{ if }}}}, {{{{ range }}}} or {{{{ with }}}}")
        return nodes

    def _parse_list(self) -> tuple[tuple[_Node, ...], _ActionItem | None]:
        """Nodes up to the next ``{{ end }}`` / ``{{ else … }}`` (returned) or the end of the template (None)."""
        nodes: list[_Node] = []
        while self._pos < len(self._items):
            item = self._items[self._pos]
            self._pos += 1
            if isinstance(item, str):
                if item:
                    nodes.append(_Text(item))
                continue
            if not item.tokens:
                raise BadRequest(f"template: line {item.line}: missing value for command")
            first = item.tokens[0]
            keyword = first.value if first.kind == "ident" else ""
            if keyword in ("end", "else"):
                return tuple(nodes), item
            if keyword in ("if", "with", "range"):
                nodes.append(self._parse_branch(keyword, item.tokens[1:], item.line))
            elif keyword in ("break", "continue"):
                if self._range_depth == 0 or len(item.tokens) > 1:
                    raise BadRequest(f"template: line {item.line}: {{{{ {keyword} }}}} outside {{{{ range }}}}")
                nodes.append(_LoopControl(keyword))
            elif keyword in _UNSUPPORTED_KEYWORDS:
                raise BadRequest(f"template: line {item.line}: {{{{ {keyword} }}}} is not supported in "
                                 "lokal's Go-template subset")
            else:
                pipe = self._parse_pipe(item.tokens, item.line, allow_declare=True)
                if not pipe.is_assign:
                    self._scopes[-1].update(pipe.variables)
                nodes.append(_Action(pipe))
        return tuple(nodes), None

    def _parse_branch(self, kind: str, tokens: tuple[_Token, ...], line: int) -> _Branch:
        pipe = self._parse_pipe(tokens, line, allow_declare=True, is_range=kind == "range")
        self._scopes.append(set(pipe.variables) if not pipe.is_assign else set())
        self._range_depth += kind == "range"
        body, stop = self._scoped_list()
        self._range_depth -= kind == "range"
        else_body: tuple[_Node, ...] = ()
        if stop is not None and stop.tokens[0].value == "else":
            rest = stop.tokens[1:]
            if rest and rest[0].kind == "ident" and rest[0].value in ("if", "with"):
                # `{{ else if x }}` is an if nested in the else branch that shares the outer `{{ end }}`.
                else_body = (self._parse_branch(rest[0].value, rest[1:], stop.line),)
                self._scopes.pop()
                return _Branch(kind, pipe, body, else_body)
            if rest:
                raise BadRequest(f"template: line {stop.line}: unexpected words after {{{{ else }}}}")
            else_body, stop = self._scoped_list()
        self._scopes.pop()
        if stop is None:
            raise BadRequest(f"template: unclosed {{{{ {kind} }}}} opened on line {line} (missing {{{{ end }}}})")
        if stop.tokens[0].value != "end" or len(stop.tokens) > 1:
            raise BadRequest(f"template: line {stop.line}: expected {{{{ end }}}} to close the {{{{ {kind} }}}} "
                             f"opened on line {line}")
        return _Branch(kind, pipe, body, else_body)

    def _scoped_list(self) -> tuple[tuple[_Node, ...], _ActionItem | None]:
        self._scopes.append(set())
        try:
            return self._parse_list()
        finally:
            self._scopes.pop()

    def _parse_pipe(self, tokens: tuple[_Token, ...], line: int, *, allow_declare: bool = False,
                    is_range: bool = False) -> _Pipe:
        variables, is_assign, tokens = self._parse_declaration(tokens, line, allow_declare, is_range)
        commands: list[tuple[_Operand, ...]] = [()]
        index = 0
        while index < len(tokens):
            token = tokens[index]
            if token.kind == "pipe":
                if not commands[-1]:
                    raise BadRequest(f"template: line {line}: missing command before |")
                commands.append(())
                index += 1
                continue
            operand, index = self._parse_operand(tokens, index, line)
            commands[-1] += (operand,)
        if not commands[-1]:
            raise BadRequest(f"template: line {line}: missing value")
        for command in commands:
            if len(command) > 1 and not isinstance(command[0], _Function):
                raise BadRequest(f"template: line {line}: can't give arguments to a non-function")
        return _Pipe(tuple(commands), variables, is_assign)

    def _parse_declaration(self, tokens: tuple[_Token, ...], line: int, allow: bool,
                           is_range: bool) -> tuple[tuple[str, ...], bool, tuple[_Token, ...]]:
        kinds = [t.kind for t in tokens[:4]]
        names: tuple[str, ...] = ()
        if kinds[:2] in (["variable", "declare"], ["variable", "assign"]):
            names, operator, tokens = (tokens[0].value,), tokens[1].kind, tokens[2:]
        elif is_range and kinds == ["variable", "comma", "variable", "declare"]:
            names, operator, tokens = (tokens[0].value, tokens[2].value), "declare", tokens[4:]
        if not names:
            return (), False, tokens
        if not allow or any("." in name for name in names):
            raise BadRequest(f"template: line {line}: unexpected variable declaration")
        if operator == "assign":
            self._check_variable(names[0], line)
        return names, operator == "assign", tokens

    def _check_variable(self, name: str, line: int) -> None:
        if not any(name in scope for scope in self._scopes):
            raise BadRequest(f"template: line {line}: undefined variable {name!r}")

    def _parse_operand(self, tokens: tuple[_Token, ...], index: int, line: int) -> tuple[_Operand, int]:
        token = tokens[index]
        index += 1
        operand: _Operand
        if token.kind == "field":
            operand = _Field(tuple(token.value[1:].split(".")))
        elif token.kind == "dot":
            operand = _Dot()
        elif token.kind == "variable":
            name, *names = token.value.split(".")
            self._check_variable(name, line)
            operand = _Variable(name, tuple(names))
        elif token.kind == "string":
            operand = _Literal(ast.literal_eval(token.value))  # Go's escapes are Python's
        elif token.kind == "raw":
            operand = _Literal(token.value[1:-1])
        elif token.kind == "number":
            operand = _Literal(float(token.value) if "." in token.value else int(token.value))
        elif token.kind == "ident":
            operand = self._parse_identifier(token.value, line)
        elif token.kind == "lparen":
            depth, end = 1, index
            while end < len(tokens) and depth:
                depth += {"lparen": 1, "rparen": -1}.get(tokens[end].kind, 0)
                end += 1
            if depth:
                raise BadRequest(f"template: line {line}: unclosed left parenthesis")
            inner = self._parse_pipe(tokens[index:end - 1], line)
            index = end
            names: tuple[str, ...] = ()
            if index < len(tokens) and tokens[index].kind == "field" and not tokens[index].is_spaced:
                names, index = tuple(tokens[index].value[1:].split(".")), index + 1
            operand = _Chain(inner, names)
        else:
            raise BadRequest(f"template: line {line}: unexpected {token.value!r}")
        return operand, index

    @staticmethod
    def _parse_identifier(name: str, line: int) -> _Operand:
        if name in ("true", "false"):
            return _Literal(name == "true")
        if name == "nil":
            return _Literal(None)
        if name in _FUNCTIONS or name in _LAZY_FUNCTIONS:
            return _Function(name)
        raise BadRequest(f'template: line {line}: function "{name}" not defined')


# ---- evaluation ----------------------------------------------------------------------------------

def _truth(value: Any) -> bool:
    """Go's truth: false, 0, nil and empty strings, lists and maps are false; everything else is true."""
    if value is None or isinstance(value, (bool, int, float, str, list, tuple, dict)):
        return bool(value)
    return True


def _type_name(value: Any) -> str:
    return "nil" if value is None else type(value).__name__


def _go_print(value: Any) -> str:
    if value is None:
        return ""  # Go prints "<no value>"; an empty string is what a prompt wants
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + " ".join(_go_print(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return _go_json(value)  # as Ollama prints tool-call arguments
    return str(value)


def _snake_case(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def _lookup(value: Any, name: str) -> Any:
    """``.Name`` on a value: Go's exported field names also reach JSON-style keys (Function → function,
    ToolCalls → tool_calls). A missing field is nil rather than an error."""
    if isinstance(value, Mapping):
        for key in (name, name.lower(), _snake_case(name)):
            if key in value:
                return value[key]
    return None


class _BreakLoop(Exception):
    pass


class _ContinueLoop(Exception):
    pass


class _Renderer:
    def __init__(self, root: dict[str, Any]):
        self._out: list[str] = []
        self._scopes: list[dict[str, Any]] = [{"$": root}]

    def render(self, nodes: tuple[_Node, ...], dot: Any) -> str:
        self._walk(nodes, dot)
        return "".join(self._out)

    def _walk(self, nodes: tuple[_Node, ...], dot: Any) -> None:
        for node in nodes:
            if isinstance(node, _Text):
                self._out.append(node.text)
            elif isinstance(node, _Action):
                value = self._pipe(node.pipe, dot)
                if not node.pipe.variables:
                    self._out.append(_go_print(value))
            elif isinstance(node, _Branch):
                self._branch(node, dot)
            else:
                raise _BreakLoop() if node.kind == "break" else _ContinueLoop()

    def _scoped(self, nodes: tuple[_Node, ...], dot: Any, variables: dict[str, Any] | None = None) -> None:
        self._scopes.append(variables or {})
        try:
            self._walk(nodes, dot)
        finally:
            self._scopes.pop()

    def _branch(self, node: _Branch, dot: Any) -> None:
        if node.kind == "range":
            self._range(node, dot)
            return
        self._scopes.append({})
        try:
            value = self._pipe(node.pipe, dot)
            if _truth(value):
                self._scoped(node.body, value if node.kind == "with" else dot)
            else:
                self._scoped(node.else_body, dot)
        finally:
            self._scopes.pop()

    def _range(self, node: _Branch, dot: Any) -> None:
        value = self._pipe(node.pipe, dot, declare=False)
        if value is None:
            pairs: list[tuple[Any, Any]] = []
        elif isinstance(value, (list, tuple)):
            pairs = list(enumerate(value))
        elif isinstance(value, Mapping):
            pairs = [(key, value[key]) for key in sorted(value)]
        else:  # not over integers either: a request's template must not be able to loop for ever
            raise BadRequest(f"template: range can't iterate over {_type_name(value)}")
        if not pairs:
            self._scoped(node.else_body, dot)
            return
        names = node.pipe.variables
        for key, element in pairs:
            variables = dict(zip(names, (key, element) if len(names) == 2 else (element,)))
            try:
                self._scoped(node.body, element, variables)
            except _ContinueLoop:
                continue
            except _BreakLoop:
                break

    def _pipe(self, pipe: _Pipe, dot: Any, *, declare: bool = True) -> Any:
        value: Any = None
        for index, command in enumerate(pipe.commands):
            value = self._command(command, dot, (value,) if index else ())
        if declare and pipe.variables:
            name = pipe.variables[0]
            scope = self._scope_of(name) if pipe.is_assign else self._scopes[-1]
            scope[name] = value
        return value

    def _scope_of(self, variable: str) -> dict[str, Any]:
        # The parser has checked that every variable is declared before use.
        return next(scope for scope in reversed(self._scopes) if variable in scope)

    def _command(self, command: tuple[_Operand, ...], dot: Any, piped: tuple[Any, ...]) -> Any:
        head, args = command[0], command[1:]
        if isinstance(head, _Function):
            if head.name in _LAZY_FUNCTIONS:
                return self._and_or(head.name == "and", args, dot, piped)
            values = [self._operand(arg, dot) for arg in args] + list(piped)
            try:
                return _FUNCTIONS[head.name](*values)
            except TypeError as exc:
                raise BadRequest(f"template: bad arguments for {head.name}: {exc}") from None
        if piped:
            raise BadRequest("template: can't pipe a value into a non-function")
        return self._operand(head, dot)

    def _and_or(self, is_and: bool, args: tuple[_Operand, ...], dot: Any, piped: tuple[Any, ...]) -> Any:
        if len(args) + len(piped) < 1:
            raise BadRequest(f"template: {'and' if is_and else 'or'} needs at least one argument")
        value: Any = None
        for value in itertools.chain((self._operand(arg, dot) for arg in args), piped):
            if _truth(value) != is_and:
                return value
        return value

    def _operand(self, operand: _Operand, dot: Any) -> Any:
        if isinstance(operand, _Literal):
            return operand.value
        if isinstance(operand, _Dot):
            return dot
        if isinstance(operand, _Field):
            return self._fields(dot, operand.names)
        if isinstance(operand, _Variable):
            return self._fields(self._scope_of(operand.name)[operand.name], operand.names)
        if isinstance(operand, _Chain):
            return self._fields(self._pipe(operand.pipe, dot), operand.names)
        return self._command((operand,), dot, ())  # a function as an argument is called without arguments

    @staticmethod
    def _fields(value: Any, names: tuple[str, ...]) -> Any:
        for name in names:
            value = _lookup(value, name)
        return value


# ---- structure: which names a template uses, and Ollama's cut after {{ .Response }} -------------

def _pipe_operands(pipe: _Pipe) -> Iterator[_Operand]:
    for command in pipe.commands:
        for operand in command:
            yield operand
            if isinstance(operand, _Chain):
                yield from _pipe_operands(operand.pipe)


def _identifiers(nodes: tuple[_Node, ...]) -> Iterator[str]:
    for node in nodes:
        pipes: list[_Pipe] = []
        if isinstance(node, _Action):
            pipes = [node.pipe]
        elif isinstance(node, _Branch):
            pipes = [node.pipe]
            yield from _identifiers(node.body)
            yield from _identifiers(node.else_body)
        for pipe in pipes:
            for operand in _pipe_operands(pipe):
                if isinstance(operand, (_Field, _Variable, _Chain)):
                    yield from (name.lower() for name in operand.names)
                if isinstance(operand, _Variable):
                    yield operand.name.lower()


def _cut_after_response(nodes: tuple[_Node, ...]) -> tuple[tuple[_Node, ...], bool]:
    """Ollama renders the turn being answered from a copy of the template that ends at its first
    ``.Response`` field (in document order, branch conditions not inspected): everything after is dropped.
    Returns the kept nodes and whether the cut happened."""
    kept: list[_Node] = []
    is_cut = False
    for node in nodes:
        if is_cut:
            break
        if isinstance(node, _Branch):
            body, is_cut = _cut_after_response(node.body)
            else_body = node.else_body
            if is_cut:
                else_body = ()
            elif else_body:
                else_body, is_cut = _cut_after_response(else_body)
            node = _Branch(node.kind, node.pipe, body, else_body)
        elif isinstance(node, _Action):
            is_cut = any(isinstance(op, _Field) and "Response" in op.names for op in _pipe_operands(node.pipe))
        kept.append(node)
    return tuple(kept), is_cut


_RESPONSE_ACTION = _Action(_Pipe(((_Field(("Response",)),),)))


class GoTemplate:
    """A parsed template. ``vars`` holds the lower-cased field and variable names it uses (Ollama's
    ``Vars``), which decide how Ollama renders a chat through it."""

    def __init__(self, source: str):
        self.source = source
        nodes = _Parser(_lex(source)).parse()
        self.vars = frozenset(_identifiers(nodes))
        if "messages" not in self.vars and "response" not in self.vars:
            nodes += (_RESPONSE_ACTION,)  # so that past replies land after each turn
        self.nodes = nodes

    @cached_property
    def nodes_until_response(self) -> tuple[_Node, ...]:
        return _cut_after_response(self.nodes)[0]

    @property
    def uses_messages(self) -> bool:
        return "messages" in self.vars or "document" in self.vars

    def execute(self, values: dict[str, Any], *, until_response: bool = False) -> str:
        nodes = self.nodes_until_response if until_response else self.nodes
        return _Renderer(values).render(nodes, values)


@lru_cache(maxsize=64)
def parse_go(source: str) -> GoTemplate:
    """The parsed template, compiled once per source string."""
    return GoTemplate(source)
