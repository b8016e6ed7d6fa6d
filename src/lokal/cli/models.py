"""Model commands: pull, create, list/ls, show, rm, cp, config.

Commands fetch data through a ``ModelsBackend``. ``LocalBackend`` works on the store directly; a backend
that calls a running server (Ollama's cmd → api.Client split) can replace it without touching the
commands, as long as it returns the same values.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Optional, Protocol

import typer

from lokal.cli.render import format_show, format_table, human_bytes, human_time, show_pull
from lokal.config import Settings
from lokal.errors import BadRequest
from lokal.store.names import ModelName

if TYPE_CHECKING:  # reading GGUF details pulls in numpy: only the commands that need it import it
    from lokal.model_info import ModelDescription


@dataclass
class ListedModel:
    name: str  # display form
    digest: str  # "sha256:<hex>" of the manifest
    size: int  # bytes of the config and all layers
    modified_at: datetime | None
    details: dict[str, Any]  # Ollama's details object (format, family, parameter_size, …)

    @property
    def id(self) -> str:
        return self.digest.removeprefix("sha256:")[:12]

    def to_dict(self) -> dict[str, Any]:
        """One entry of Ollama's /api/tags ``models``."""
        return {"name": self.name, "model": self.name,
                "modified_at": self.modified_at.isoformat() if self.modified_at else None,
                "size": self.size, "digest": self.digest.removeprefix("sha256:"), "details": self.details}


@dataclass
class ListedModels:
    models: list[ListedModel]
    errors: list[str]  # manifests that could not be read; the others are still listed


class ModelsBackend(Protocol):
    def list(self) -> ListedModels: ...

    def describe(self, name: str) -> ModelDescription: ...

    def exists(self, name: str) -> bool: ...

    def pull(self, name: str) -> Iterator[Any]:
        """Progress events (status, digest, total, completed); the last has status "success"."""
        ...

    def remove(self, name: str) -> None: ...

    def copy(self, source: str, destination: str) -> None: ...

    def create(self, name: str, modelfile: Path, quantize: str | None) -> Iterator[Any]:
        """Progress events of building ``name`` from the Modelfile at ``modelfile``."""
        ...


class LocalBackend:
    """The store in this process: what every command uses until the CLI talks to a server."""

    def __init__(self, settings: Settings):
        from lokal.store.store import Store

        self.settings = settings
        self.store = Store.from_settings(settings)

    def list(self) -> ListedModels:
        from lokal.model_info import listing_details

        result = self.store.list()
        models = [ListedModel(name=e.name.display, digest=e.digest, size=e.size, modified_at=e.modified_at,
                              details=listing_details(self.store, e)) for e in result.models]
        return ListedModels(models=models, errors=list(result.errors))

    def describe(self, name: str) -> ModelDescription:
        from lokal.model_info import describe

        return describe(self.store, name)

    def exists(self, name: str) -> bool:
        return bool(self.store.exists(ModelName.parse(name)))

    def pull(self, name: str) -> Iterator[Any]:
        from lokal.store.sources import pull

        return pull(self.store, name, self.settings)  # raises on a bad name before any progress

    def remove(self, name: str) -> None:
        self.store.remove(name)

    def copy(self, source: str, destination: str) -> None:
        ModelName.parse(destination)  # a bad destination fails before the source is looked up
        self.store.copy(source, destination)

    def create(self, name: str, modelfile: Path, quantize: str | None) -> Iterator[Any]:
        from lokal.create import create_model, read_modelfile, spec_from_modelfile
        from lokal.engine import set_llama_logging

        set_llama_logging(bool(self.settings.debug))  # quantizing and DRAFT checks load with llama.cpp: quiet
        parsed = read_modelfile(modelfile)
        with self.store.writing():  # the files added here must outlive any garbage collection until the manifest
            spec = spec_from_modelfile(name, parsed, modelfile.parent, self.store.blobs.add_file, quantize)
            yield from create_model(self.store, spec)


def backend_for(settings: Settings) -> ModelsBackend:
    """The running server's models when one answers at LOKAL_HOST, else the store in this process."""
    from lokal.cli.remote import HttpBackend, server_client

    client = server_client(settings.base_url)
    return HttpBackend(client) if client is not None else LocalBackend(settings)


def _backend() -> ModelsBackend:
    # Settings are read at invocation, so tests (and users) steer everything through LOKAL_* variables.
    return backend_for(Settings())


# ---- commands -----------------------------------------------------------------------------------------


def pull_command(name: str = typer.Argument(..., help="Model to pull, e.g. smollm2 or hf.co/owner/repo:Q4_K_M.")
                 ) -> None:
    """Pull a model from the catalog, a registry, Hugging Face, a URL or a local file."""
    show_pull(_backend().pull(name))


def list_command(as_json: bool = typer.Option(False, "--json", help="Print Ollama's /api/tags JSON.")) -> None:
    """List models in the store."""
    listed = _backend().list()
    for error in listed.errors:
        print(f"warning: {error}", file=sys.stderr)
    models = listed.models  # newest first: the backend's order
    if as_json:
        print(json.dumps({"models": [m.to_dict() for m in models]}, indent=2))
        return
    rows = [[m.name, m.id, human_bytes(m.size), human_time(m.modified_at)] for m in models]
    sys.stdout.write(format_table(["NAME", "ID", "SIZE", "MODIFIED"], rows))


_SHOW_FIELDS = ("modelfile", "parameters", "template", "system", "license")


def show_command(
    name: str = typer.Argument(..., help="Model to describe."),
    modelfile: bool = typer.Option(False, "--modelfile", help="Show the Modelfile of the model."),
    parameters: bool = typer.Option(False, "--parameters", help="Show the parameters of the model."),
    template: bool = typer.Option(False, "--template", help="Show the prompt template of the model."),
    system: bool = typer.Option(False, "--system", help="Show the system message of the model."),
    license: bool = typer.Option(False, "--license", help="Show the license of the model."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Also show all model metadata."),
) -> None:
    """Show information for a model."""
    wanted = [field for field, is_wanted in zip(_SHOW_FIELDS, (modelfile, parameters, template, system, license))
              if is_wanted]
    if len(wanted) > 1:
        raise BadRequest("only one of " + ", ".join(f"'--{f}'" for f in _SHOW_FIELDS) + " can be specified")
    description = _backend().describe(name)
    if wanted:
        text = getattr(description, wanted[0])
        sys.stdout.write(text if text.endswith("\n") or not text else text + "\n")
        return
    sys.stdout.write("\n" + format_show(description, verbose=verbose))


def create_command(
    name: str = typer.Argument(..., help="Name of the new model."),
    file: Path = typer.Option(Path("Modelfile"), "--file", "-f", help="The Modelfile to build from."),
    quantize: Optional[str] = typer.Option(None, "--quantize", "-q",
                                           help="Quantize the weights to this type (q8_0, q4_k_m, …)."),
) -> None:
    """Create a model from a Modelfile."""
    ModelName.parse(name)  # a bad name fails before any file is read or uploaded
    show_pull(_backend().create(name, file, quantize))


def rm_command(names: list[str] = typer.Argument(..., help="Models to remove.")) -> None:
    """Remove models (and the blobs no other model uses)."""
    backend = _backend()
    for name in names:
        backend.remove(name)
        print(f"deleted '{name}'")


def cp_command(source: str = typer.Argument(..., help="Existing model."),
               destination: str = typer.Argument(..., help="New name for it.")) -> None:
    """Copy a model under a new name (no blob is duplicated)."""
    _backend().copy(source, destination)
    print(f"copied '{source}' to '{destination}'")


def config_command(as_json: bool = typer.Option(False, "--json", help="Print the settings as JSON.")) -> None:
    """Show every setting: its value, where the value came from, and what it does."""
    rows = Settings().rows()
    if as_json:
        print(json.dumps([{"name": n, "value": v, "source": s, "description": d} for n, v, s, d in rows], indent=2))
        return
    sys.stdout.write(format_table(["NAME", "VALUE", "SOURCE", "DESCRIPTION"], [list(row) for row in rows]))


def register(app: typer.Typer) -> None:
    app.command("pull")(pull_command)
    app.command("list")(list_command)
    app.command("ls", hidden=True)(list_command)
    app.command("show")(show_command)
    app.command("create")(create_command)
    app.command("rm")(rm_command)
    app.command("cp")(cp_command)
    app.command("config")(config_command)


__all__ = ["ModelsBackend", "LocalBackend", "ListedModel", "ListedModels", "backend_for", "register"]
