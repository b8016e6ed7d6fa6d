"""``lokal export`` / ``lokal import`` (model bundles) and ``lokal backup`` / ``lokal restore`` (the whole
store with keys, audit log and settings). They work on the store directly, a server running or not;
restore refuses while a server answers at LOKAL_HOST."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional

import typer

from lokal.config import Settings


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _passphrase(passphrase_file: Optional[Path], confirm: bool) -> str:
    if passphrase_file is not None:
        return passphrase_file.read_text().rstrip("\n")
    return typer.prompt("Passphrase", hide_input=True, confirmation_prompt=confirm)


def export(models: List[str] = typer.Argument(..., help="Models to put in the bundle."),
           output: Path = typer.Option(..., "--output", "-o", help="Bundle file to write (a tar)."),
           encrypt: bool = typer.Option(False, "--encrypt", help="Encrypt the bundle with a passphrase "
                                                                 "(AES-256-GCM, scrypt)."),
           passphrase_file: Optional[Path] = typer.Option(None, "--passphrase-file",
                                                          help="Read the passphrase from this file "
                                                               "instead of asking.")) -> None:
    """Write models (manifests, blobs and their checksums) into one bundle file."""
    from lokal.store.bundle import export_models, export_sealed
    from lokal.store.store import Store

    store = Store(Settings().models)
    if encrypt or passphrase_file is not None:
        names = export_sealed(store, models, output, _passphrase(passphrase_file, confirm=True))
    else:
        names = export_models(store, models, output)
    _say(f"exported {', '.join(names)} to {output}")


def import_(bundle: Path = typer.Argument(..., help="Bundle file made by `lokal export`."),
            passphrase_file: Optional[Path] = typer.Option(None, "--passphrase-file",
                                                           help="Passphrase of an encrypted bundle, from "
                                                                "this file instead of asking.")) -> None:
    """Add the models of a bundle to the store, after checking every checksum."""
    from lokal.store.bundle import import_bundle, import_sealed
    from lokal.store.sealing import is_sealed
    from lokal.store.store import Store

    store = Store(Settings().models)
    if is_sealed(bundle):
        names = import_sealed(store, bundle, _passphrase(passphrase_file, confirm=False))
    else:
        names = import_bundle(store, bundle)
    _say(f"imported {', '.join(names)}")


def backup(directory: Path = typer.Argument(..., help="New or empty directory to write the backup into.")) -> None:
    """Back up the model store, API keys, audit log and settings."""
    from lokal.store.backup import backup as run_backup

    num_files = run_backup(Settings(), directory)
    _say(f"backed up {num_files} files to {directory}")


def restore(directory: Path = typer.Argument(..., help="A directory made by `lokal backup`.")) -> None:
    """Replace the store (and keys and audit log) with a backup. Stop the server first."""
    from lokal.store.backup import restore as run_restore

    result = run_restore(Settings(), directory)
    _say(f"restored {result.num_files} files from {directory}")
    if result.replaced is not None:
        _say(f"the previous store is kept at {result.replaced}; remove it when you no longer need it")
    if result.settings:
        _say("settings at backup time (apply them to your environment or deployment):")
        for name, value in result.settings.items():
            _say(f"  {name}={value}")


def register(app: typer.Typer) -> None:
    app.command("export")(export)
    app.command("import")(import_)
    app.command("backup")(backup)
    app.command("restore")(restore)
