"""``lokal run MODEL [PROMPT]``: one answer, or Ollama's interactive chat (``>>>``, ``/set``, ``/show``, ``/bye``).

Runs the model in this process through ``lokal.llm.LLM``. The conversation state (history, system message,
options, format) lives in ``ChatSession``; ``Repl`` only reads lines and dispatches slash commands.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import typer

from lokal.cli.render import format_show, show_pull, stats_lines
from lokal.config import Settings, parse_duration
from lokal.errors import BadRequest, LokalError
from lokal.store.names import ModelName
from lokal.types import Done, split_options

if TYPE_CHECKING:
    from lokal.llm import LLM
    from lokal.model_info import ModelDescription

HISTORY_FILE = Path("~/.lokal/history")
MAX_HISTORY_LINES = 1000
PROMPT = ">>> "
CONTINUATION_PROMPT = "... "
MULTILINE_QUOTE = '"""'

HELP = '''Available Commands:
  /set            Set session variables
  /show           Show model information
  /clear          Clear session context
  /bye            Exit
  /?, /help       Help for a command

Use """ to begin a multi-line message.
'''

SET_HELP = '''Available Commands:
  /set parameter ...     Set a parameter
  /set system <string>   Set system message
  /set format json       Enable JSON mode
  /unset format          Disable formatting
  /set verbose           Show LLM stats
  /set quiet             Disable LLM stats
'''

SHOW_HELP = '''Available Commands:
  /show info         Show details for this model
  /show license      Show model license
  /show modelfile    Show Modelfile for this model
  /show parameters   Show parameters for this model
  /show system       Show system message
  /show template     Show prompt template
'''


class ChatSession:
    """One conversation with one model: what ``/set`` changes and what each answer is sent with."""

    def __init__(self, llm: LLM, *, format: str | None = None, is_verbose: bool = False,
                 keep_alive: float | None = None, think: bool | str | None = None, hide_thinking: bool = False):
        self.llm = llm
        self.format = format
        self.think = think
        self.hide_thinking = hide_thinking
        self.is_verbose = is_verbose
        self.keep_alive = keep_alive
        self.system: str | None = None
        self.options: dict[str, Any] = {}
        self.history: list[dict[str, str]] = []

    def set_parameter(self, name: str, values: list[str]) -> Any:
        """Validate and keep one option; returns the typed value. Bad names or values raise BadRequest."""
        value: Any = list(values) if name == "stop" else _typed(values[0])
        split_options({**self.options, name: value})  # same validation a request gets, now rather than later
        self.options[name] = value
        return value

    def clear(self) -> None:
        self.history.clear()

    def messages_for(self, prompt: str) -> list[dict[str, str]]:
        system = [{"role": "system", "content": self.system}] if self.system else []
        return system + self.history + [{"role": "user", "content": prompt}]

    def answer(self, prompt: str) -> bool:
        """Stream the answer to stdout. Ctrl-C stops generating and returns False; the exchange is then
        left out of the history so the conversation stays a clean user/assistant alternation."""
        extra = {"think": self.think} if self.think is not None else {}
        chunks = self.llm.chat(self.messages_for(prompt), stream=True, format=self.format,
                               options=self.options or None, keep_alive=self.keep_alive, **extra)
        text, done = _stream_to_stdout(chunks, show_thinking=not self.hide_thinking)
        if done is None:
            return False
        self.history += [{"role": "user", "content": prompt}, {"role": "assistant", "content": text}]
        if self.is_verbose:
            print("\n".join(stats_lines(done)), file=sys.stderr, flush=True)
        return True


def _typed(raw: str) -> Any:
    """A ``/set parameter`` value as the option type it most likely is; split_options checks the rest."""
    lowered = raw.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    for convert in (int, float):
        try:
            return convert(raw)
        except ValueError:
            pass
    return raw


def _stream_to_stdout(chunks: Iterator[Any], show_thinking: bool = True) -> tuple[str, Done | None]:
    """Print chunks as they come (reasoning between "Thinking..." and "...done thinking.", as Ollama's CLI
    prints it, unless hidden). Returns (text, Done), or (text so far, None) when Ctrl-C stopped it."""
    parts: list[str] = []
    done: Done | None = None
    is_thinking = False
    try:
        for chunk in chunks:
            thinking = getattr(chunk, "thinking", "")
            if thinking and show_thinking:
                if not is_thinking:
                    sys.stdout.write("Thinking...\n")
                    is_thinking = True
                sys.stdout.write(thinking)
                sys.stdout.flush()
            if chunk.text and is_thinking:
                sys.stdout.write("\n...done thinking.\n\n")
                is_thinking = False
            if chunk.text:
                sys.stdout.write(chunk.text)
                sys.stdout.flush()
                parts.append(chunk.text)
            done = chunk.done or done
    except KeyboardInterrupt:
        close = getattr(chunks, "close", None)
        if close is not None:
            close()  # cancels the generation and frees its slot
        print(flush=True)
        return "".join(parts), None
    text = "".join(parts)
    if not text.endswith("\n"):
        print(flush=True)
    return text, done


# ---- the REPL -----------------------------------------------------------------------------------------


class Repl:
    def __init__(self, session: ChatSession, history_file: Path | None = None):
        self.session = session
        self.history_file = history_file
        self._description: ModelDescription | None = None

    @property
    def description(self) -> ModelDescription:
        if self._description is None:
            self._description = self.session.llm.info()
        return self._description

    def loop(self) -> None:
        self._load_history()
        try:
            while True:
                try:
                    text = self._read_message()
                except KeyboardInterrupt:
                    print("\nUse Ctrl + d or /bye to exit.")
                    continue
                except EOFError:
                    print()
                    return
                if text is None:
                    continue
                if text.startswith("/"):
                    if not self._command(text):
                        return
                elif text.strip():
                    try:
                        self.session.answer(text)
                    except LokalError as exc:  # e.g. a bad option value: report it, keep the session
                        print(f"Error: {exc.message}", file=sys.stderr)
                    print()
        finally:
            self._save_history()

    def _read_message(self) -> str | None:
        """One message: a line, or a block between triple quotes spanning several lines."""
        line = input(PROMPT)
        if line.count(MULTILINE_QUOTE) != 1:
            return _unquote(line) if line.lstrip().startswith(MULTILINE_QUOTE) else line
        lines = [line]
        while MULTILINE_QUOTE not in (more := input(CONTINUATION_PROMPT)):
            lines.append(more)
        lines.append(more)
        return _unquote("\n".join(lines))

    def _command(self, text: str) -> bool:
        """Run one slash command; False means leave the REPL."""
        words = text.split()
        command, args = words[0].lower(), words[1:]
        try:
            if command in ("/bye", "/exit"):
                return False
            if command in ("/?", "/help"):
                print({"set": SET_HELP, "show": SHOW_HELP}.get(args[0].lower() if args else "", HELP))
            elif command == "/clear":
                self.session.clear()
                print("Cleared session context")
            elif command == "/set":
                self._set(text, args)
            elif command == "/unset":
                self._unset(args)
            elif command == "/show":
                self._show(args)
            else:
                print(f"Unknown command '{words[0]}'. Type /? for help")
        except LokalError as exc:
            print(f"Error: {exc.message}", file=sys.stderr)
        return True

    def _set(self, text: str, args: list[str]) -> None:
        session = self.session
        if not args:
            print(SET_HELP)
        elif args[0] == "parameter":
            if len(args) < 3:
                raise BadRequest("usage: /set parameter <name> <value>")
            value = session.set_parameter(args[1], args[2:])
            shown = ", ".join(value) if isinstance(value, list) else args[2]
            print(f"Set parameter '{args[1]}' to '{shown}'")
        elif args[0] == "system":
            # Everything after "/set system", spacing and newlines kept.
            system = text.split(None, 2)[2] if len(args) > 1 else ""
            session.system = system.strip() or None
            print("Set system message.")
        elif args[0] == "format":
            if args[1:] != ["json"]:
                raise BadRequest("only '/set format json' is supported")
            session.format = "json"
            print("Set format to 'json' mode.")
        elif args[0] in ("verbose", "quiet"):
            session.is_verbose = args[0] == "verbose"
            print(f"Set '{args[0]}' mode.")
        else:
            print(f"Unknown command '/set {args[0]}'. Type /? for help")

    def _unset(self, args: list[str]) -> None:
        if args == ["format"]:
            self.session.format = None
            print("Disabled format.")
        elif args == ["system"]:
            self.session.system = None
            print("Cleared system message.")
        elif len(args) == 2 and args[0] == "parameter":
            self.session.options.pop(args[1], None)
            print(f"Unset parameter '{args[1]}'")
        else:
            print(f"Unknown command '/unset {' '.join(args)}'. Type /? for help")

    def _show(self, args: list[str]) -> None:
        if not args:
            print(SHOW_HELP)
            return
        what, description = args[0].lower(), self.description
        if what == "info":
            sys.stdout.write(format_show(description))
        elif what == "parameters":
            print(self._parameters_text())
        elif what == "system":
            print(self.session.system or description.system or "No system message was specified for this model.")
        elif what == "template":
            print(description.template or "No prompt template was specified for this model.")
        elif what == "license":
            print(description.license or "No license was specified for this model.")
        elif what == "modelfile":
            print(description.modelfile)
        else:
            print(f"Unknown command '/show {args[0]}'. Type /? for help")

    def _parameters_text(self) -> str:
        from lokal.model_info import PARAMETER_NAME_WIDTH

        model_parameters = self.description.parameters
        lines = (["Model defined parameters:", model_parameters] if model_parameters
                 else ["No parameters were specified for this model."])
        if self.session.options:
            lines.append("User defined parameters:")
            for name, value in self.session.options.items():
                shown = ", ".join(value) if isinstance(value, list) else value
                lines.append(f"{name:<{PARAMETER_NAME_WIDTH}} {shown}")
        return "\n".join(lines)

    def _load_history(self) -> None:
        readline = _readline()
        if readline is None or self.history_file is None:
            return
        readline.set_history_length(MAX_HISTORY_LINES)
        try:
            readline.read_history_file(self.history_file)
        except OSError:
            pass  # first run: no history yet

    def _save_history(self) -> None:
        readline = _readline()
        if readline is None or self.history_file is None:
            return
        try:
            self.history_file.parent.mkdir(parents=True, exist_ok=True)
            readline.write_history_file(self.history_file)
        except OSError as exc:
            print(f"warning: could not save history to {self.history_file}: {exc.strerror}", file=sys.stderr)


def _unquote(text: str) -> str:
    """Drop the first and last triple quotes of a multi-line message."""
    start = text.find(MULTILINE_QUOTE)
    text = text[:start] + text[start + len(MULTILINE_QUOTE):]
    end = text.rfind(MULTILINE_QUOTE)
    if end != -1:
        text = text[:end] + text[end + len(MULTILINE_QUOTE):]
    return text.strip()


def _readline() -> Any:
    try:
        import readline  # line editing and history for input(); absent on some platforms
    except ImportError:
        return None
    return readline


# ---- the command --------------------------------------------------------------------------------------


def _read_piped_stdin() -> str | None:
    if sys.stdin is None or sys.stdin.isatty():
        return None
    return sys.stdin.read()


def run_command(
    model: str = typer.Argument(..., help="Model to run, e.g. smollm2."),
    prompt: list[str] = typer.Argument(None, help="Prompt; without one (and no piped input) start a chat."),
    verbose: bool = typer.Option(False, "--verbose", help="Show timings and token rates after each answer."),
    format: str = typer.Option("", "--format", help="Response format (json)."),
    keepalive: str = typer.Option("", "--keepalive", help="How long the model stays loaded (e.g. 5m, 1h, 0)."),
    nowordwrap: bool = typer.Option(False, "--nowordwrap", help="Do not wrap words (output is never wrapped)."),
    think: bool = typer.Option(None, "--think/--no-think", help="Let a thinking model think (or not)."),
    think_level: str = typer.Option("", "--think-level", help="How hard a thinking model thinks: low, medium, high."),
    hidethinking: bool = typer.Option(False, "--hidethinking", help="Think, but print only the answer."),
) -> None:
    """Run a model: answer PROMPT, or chat interactively."""
    from lokal.cli.models import backend_for

    settings = Settings()
    ModelName.parse(model)  # a malformed name fails before anything else
    if format not in ("", "json"):
        raise BadRequest(f"invalid format {format!r}: only 'json' is supported")
    try:
        keep_alive = parse_duration(keepalive) if keepalive else None
    except ValueError as exc:
        raise BadRequest(str(exc)) from None
    # Like Ollama: piped input comes first, then the prompt words; either one means "answer and exit".
    # (Empty piped input, as from /dev/null, adds nothing rather than a leading space.)
    piped = _read_piped_stdin()
    words = ([piped] if piped else []) + list(prompt or [])
    is_interactive = piped is None and not words

    backend = backend_for(settings)
    if not backend.exists(model):
        show_pull(backend.pull(model))
    with _model_for(backend, model, settings, keep_alive) as llm:
        think_value = _think_option(think, think_level, hidethinking)
        session = ChatSession(llm, format=format or None, is_verbose=verbose, keep_alive=keep_alive,
                              think=think_value, hide_thinking=hidethinking)
        if is_interactive:
            llm.chat([], keep_alive=keep_alive)  # load now, so the first answer is not slow and errors show early
            Repl(session, history_file=HISTORY_FILE.expanduser()).loop()
            return
        text = " ".join(words)
        if text.strip() and not session.answer(text):
            raise typer.Exit(130)


def _think_option(think: bool | None, level: str, hide_thinking: bool) -> bool | str | None:
    """--think / --no-think, --think-level and --hidethinking (which thinks unless told not to) as ``think``."""
    if level:
        if level.lower() not in ("low", "medium", "high") or think is False:
            raise BadRequest(f"invalid --think-level {level!r}: use low, medium or high (and not with --no-think)")
        return level.lower()
    if think is None and hide_thinking:
        return True
    return think


def _model_for(backend: Any, model: str, settings: Settings, keep_alive: float | None) -> Any:
    """The running server's model when the CLI talks to one, else the model in this process."""
    from lokal.cli.remote import HttpBackend, RemoteLLM

    if isinstance(backend, HttpBackend):
        return RemoteLLM(backend.client, model)
    from lokal.engine import set_llama_logging
    from lokal.llm import LLM

    set_llama_logging(bool(settings.debug))  # llama.cpp's load chatter only when debugging
    return LLM(model, settings=settings, pull=False, keep_alive=keep_alive)


def register(app: typer.Typer) -> None:
    app.command("run")(run_command)


__all__ = ["ChatSession", "Repl", "register"]
