"""Modelfiles: Ollama's recipe format, parsed into a ``Modelfile`` value and rendered back.

::

    # comment
    FROM smollm2                       a model name, a GGUF file, or a safetensors folder
    PARAMETER temperature 0.7          every Ollama option name; ``stop`` may repeat
    SYSTEM \"\"\"You are ...\"\"\"           triple quotes span lines
    TEMPLATE \"\"\"{{ .Prompt }}\"\"\"
    ADAPTER ./lora.gguf                a LoRA GGUF
    DRAFT smollm2                      (lokal) a model of the same vocabulary that guesses ahead (a name or a GGUF)
    LICENSE \"\"\"...\"\"\"                 may repeat
    MESSAGE user Hello                 few-shot history; role is system, user, assistant or tool
    REQUIRES 0.5.0                     the server version the model needs
    FILE ./guidelines.txt              (lokal) a text, Markdown or PDF document for the model's knowledge

Instructions are case-insensitive; a value is bare (the rest of the line), ``"quoted"`` or ``\"\"\"triple
quoted\"\"\"`` (which may span lines). Paths stay as written: the caller resolves them against the Modelfile's
folder. ``parse(render(m)) == m`` for every value ``render`` accepts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lokal.errors import BadRequest

MAX_MODELFILE_BYTES = 1 << 20
MESSAGE_ROLES = ("system", "user", "assistant", "tool")

# Every PARAMETER name and its type: Ollama's option names, plus lokal's knowledge settings.
PARAMETER_TYPES: dict[str, type] = {
    "num_ctx": int, "num_batch": int, "num_gpu": int, "main_gpu": int, "num_thread": int, "num_keep": int,
    "seed": int, "num_predict": int, "top_k": int, "repeat_last_n": int, "num_parallel": int,
    "top_p": float, "min_p": float, "typical_p": float, "temperature": float, "repeat_penalty": float,
    "presence_penalty": float, "frequency_penalty": float,
    "use_mmap": bool, "use_mlock": bool, "flash_attention": bool,
    "stop": str,
    "embed_model": str, "knowledge_top_k": int, "knowledge_min_score": float,
    "adapter_scale": float, "draft_num_predict": int,
}
REPEATABLE_PARAMETERS = {"stop"}
# Spellings people write (the seed's ``context_length``), stored under the Ollama name.
PARAMETER_ALIASES = {"context_length": "num_ctx", "num_threads": "num_thread", "max_tokens": "num_predict"}
INSTRUCTIONS = ("from", "parameter", "template", "system", "adapter", "license", "message", "requires", "file",
                "draft")


class ModelfileError(BadRequest):
    """A Modelfile that cannot be used; the message names the line."""


@dataclass(frozen=True)
class Modelfile:
    from_: str
    parameters: tuple[tuple[str, Any], ...] = ()  # in order; a repeated ``stop`` is several entries
    template: str | None = None
    system: str | None = None
    adapters: tuple[str, ...] = ()
    licenses: tuple[str, ...] = ()
    messages: tuple[tuple[str, str], ...] = ()
    requires: str | None = None
    files: tuple[str, ...] = ()
    draft: str | None = None

    def parameter_dict(self) -> dict[str, Any]:
        """The PARAMETERs as /api/create's ``parameters``: the last of each wins, ``stop`` collects a list."""
        result: dict[str, Any] = {}
        for name, value in self.parameters:
            if name in REPEATABLE_PARAMETERS:
                result.setdefault(name, []).append(value)
            else:
                result[name] = value
        return result


def parse_value(name: str, text: str) -> Any:
    """A PARAMETER value typed by its name; ``ValueError`` with the reason when it is not one."""
    kind = PARAMETER_TYPES[name]
    if kind is bool:
        lowered = text.strip().lower()
        if lowered in ("true", "1"):
            return True
        if lowered in ("false", "0"):
            return False
        raise ValueError(f"{name} must be true or false, got {text!r}")
    if kind is int:
        try:
            return int(text)
        except ValueError:
            raise ValueError(f"{name} must be an integer, got {text!r}") from None
    if kind is float:
        try:
            value = float(text)
        except ValueError:
            raise ValueError(f"{name} must be a number, got {text!r}") from None
        if value != value or value in (float("inf"), float("-inf")):
            raise ValueError(f"{name} must be a finite number, got {text!r}")
        return value
    return text


# ---- parsing ------------------------------------------------------------------------------------------


class _Cursor:
    def __init__(self, text: str):
        self.text = text
        self.pos = 0

    @property
    def line(self) -> int:
        return self.text.count("\n", 0, self.pos) + 1

    def at_end(self) -> bool:
        return self.pos >= len(self.text)

    def skip_blank(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos] in " \t":
            self.pos += 1

    def rest_of_line(self) -> str:
        end = self.text.find("\n", self.pos)
        end = len(self.text) if end < 0 else end
        value = self.text[self.pos:end]
        self.pos = end
        return value

    def word(self) -> str:
        start = self.pos
        while self.pos < len(self.text) and self.text[self.pos] not in " \t\r\n":
            self.pos += 1
        return self.text[start:self.pos]

    def value(self, what: str) -> str:
        """The rest of an instruction: triple-quoted, quoted, or bare up to the end of the line."""
        self.skip_blank()
        line = self.line
        if self.text.startswith('"""', self.pos):
            end = self.text.find('"""', self.pos + 3)
            if end < 0:
                raise ModelfileError(f'line {line}: {what}: unterminated """ (no closing """)')
            value = self.text[self.pos + 3:end]
            self.pos = end + 3
            self._expect_line_end(what, line)
            return value
        if self.text.startswith('"', self.pos):
            end = self.text.find('"', self.pos + 1)
            newline = self.text.find("\n", self.pos + 1)
            if end < 0 or (0 <= newline < end):
                raise ModelfileError(f'line {line}: {what}: unterminated quote')
            value = self.text[self.pos + 1:end]
            self.pos = end + 1
            self._expect_line_end(what, line)
            return value
        return self.rest_of_line().rstrip("\r").strip()

    def _expect_line_end(self, what: str, line: int) -> None:
        trailing = self.rest_of_line().strip()
        if trailing:
            raise ModelfileError(f"line {line}: {what}: unexpected text after the closing quote: {trailing!r}")


def parse(text: str | bytes) -> Modelfile:
    """A Modelfile's text → ``Modelfile``. Raises ``ModelfileError`` naming the line and the problem."""
    if isinstance(text, bytes):
        if len(text) > MAX_MODELFILE_BYTES:
            raise ModelfileError(f"the Modelfile is {len(text)} bytes; the limit is {MAX_MODELFILE_BYTES} (1 MiB)")
        try:
            text = text.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise ModelfileError(f"the Modelfile is not UTF-8 text (byte {exc.start})") from None
    if len(text.encode("utf-8")) > MAX_MODELFILE_BYTES:
        raise ModelfileError(f"the Modelfile is larger than {MAX_MODELFILE_BYTES} bytes (1 MiB)")
    fields: dict[str, Any] = {"parameters": [], "adapters": [], "licenses": [], "messages": [], "files": []}
    cursor = _Cursor(text)
    while True:
        while not cursor.at_end() and cursor.text[cursor.pos] in " \t\r\n":
            cursor.pos += 1
        if cursor.at_end():
            break
        line = cursor.line
        if cursor.text[cursor.pos] == "#":
            cursor.rest_of_line()
            continue
        instruction = cursor.word().lower()
        if instruction not in INSTRUCTIONS:
            raise ModelfileError(f"line {line}: unknown instruction {instruction.upper()!r}; "
                                 f"use one of {', '.join(i.upper() for i in INSTRUCTIONS)}")
        _parse_instruction(cursor, instruction, line, fields)
    if not fields.get("from_"):
        raise ModelfileError("no FROM line: say which model (name, GGUF file or safetensors folder) to build on")
    return Modelfile(**{key: tuple(value) if isinstance(value, list) else value for key, value in fields.items()})


def _parse_instruction(cursor: _Cursor, instruction: str, line: int, fields: dict[str, Any]) -> None:
    what = instruction.upper()
    if instruction == "parameter":
        cursor.skip_blank()
        raw_name = cursor.word()
        if not raw_name:
            raise ModelfileError(f"line {line}: PARAMETER needs a name and a value")
        name = PARAMETER_ALIASES.get(raw_name.lower(), raw_name.lower())
        if name not in PARAMETER_TYPES:
            raise ModelfileError(f"line {line}: unknown parameter {raw_name!r}")
        value = cursor.value(f"PARAMETER {raw_name}")
        if value == "" and PARAMETER_TYPES[name] is not str:
            raise ModelfileError(f"line {line}: PARAMETER {raw_name} needs a value")
        try:
            fields["parameters"].append((name, parse_value(name, value)))
        except ValueError as exc:
            raise ModelfileError(f"line {line}: {exc}") from None
        return
    if instruction == "message":
        cursor.skip_blank()
        role = cursor.word().lower()
        if role not in MESSAGE_ROLES:
            raise ModelfileError(f"line {line}: MESSAGE role must be one of {', '.join(MESSAGE_ROLES)}, got {role!r}")
        fields["messages"].append((role, cursor.value("MESSAGE")))
        return
    value = cursor.value(what)
    if instruction in ("from", "adapter", "file", "draft") and not value:
        raise ModelfileError(f"line {line}: {what} needs a value")
    if instruction == "from":
        if fields.get("from_"):
            raise ModelfileError(f"line {line}: a second FROM; a Modelfile builds on one model")
        fields["from_"] = value
    elif instruction in ("template", "system", "requires"):
        fields[instruction] = value
    elif instruction == "draft":
        if fields.get("draft"):
            raise ModelfileError(f"line {line}: a second DRAFT; a model has one draft model")
        fields["draft"] = value
    elif instruction == "adapter":
        fields["adapters"].append(value)
    elif instruction == "license":
        fields["licenses"].append(value)
    elif instruction == "file":
        fields["files"].append(value)


# ---- rendering ----------------------------------------------------------------------------------------


def _block(text: str) -> str:
    if '"""' in text or text.endswith('"'):
        raise ModelfileError('a text containing """ or ending with a quote cannot be written in a Modelfile')
    return f'"""{text}"""'


def quote(text: str) -> str:
    """A value as it reads back unchanged: bare when it can be, else quoted, else triple-quoted."""
    if text and text == text.strip() and "\n" not in text and "\r" not in text and not text.startswith('"'):
        return text
    if '"' not in text and "\n" not in text and "\r" not in text:
        return f'"{text}"'
    return _block(text)


def format_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    return quote(str(value))


def render(modelfile: Modelfile) -> str:
    """The Modelfile's text; ``parse(render(m)) == m``."""
    lines = [f"FROM {quote(modelfile.from_)}"]
    if modelfile.template is not None:
        lines.append(f"TEMPLATE {_block(modelfile.template)}")
    if modelfile.system is not None:
        lines.append(f"SYSTEM {_block(modelfile.system)}")
    lines += [f"ADAPTER {quote(path)}" for path in modelfile.adapters]
    if modelfile.draft is not None:
        lines.append(f"DRAFT {quote(modelfile.draft)}")
    lines += [f"PARAMETER {name} {format_value(value)}" for name, value in modelfile.parameters]
    lines += [f"LICENSE {_block(text)}" for text in modelfile.licenses]
    lines += [f"MESSAGE {role} {quote(content)}" for role, content in modelfile.messages]
    if modelfile.requires is not None:
        lines.append(f"REQUIRES {quote(modelfile.requires)}")
    lines += [f"FILE {quote(path)}" for path in modelfile.files]
    return "\n".join(lines) + "\n"
