"""Security commands: ``lokal keys create/list/revoke``, ``lokal audit verify/tail/search``, ``lokal verify``,
``lokal encrypt/decrypt --all``.

They work on the files on this machine (LOKAL_KEYS_FILE, LOKAL_AUDIT_LOG, the store), so run them where the
server runs; a running server picks up created and revoked keys at once.
"""

from __future__ import annotations

import json
import time
from datetime import datetime, timezone
from typing import Any, List, Optional

import typer

from lokal.cli.render import format_table, human_time
from lokal.config import Settings

keys_app = typer.Typer(help="Create, list and revoke API keys.", no_args_is_help=True)
audit_app = typer.Typer(help="Check and read the audit log.", no_args_is_help=True)


def _key_store(settings: Settings) -> Any:
    from lokal.security.keys import KeyStore
    from lokal.security.policy import keys_path

    return KeyStore(keys_path(settings))


def _moment(timestamp: float | None) -> datetime | None:
    return datetime.fromtimestamp(timestamp, tz=timezone.utc) if timestamp else None


@keys_app.command("create")
def keys_create(
    role: str = typer.Option(..., "--role", help="admin, operator, user or viewer."),
    name: str = typer.Option("", "--name", help="A label to recognise the key by."),
    expires: Optional[str] = typer.Option(None, "--expires", help="Lifetime, e.g. 30d, 12h, 2w (default: never)."),
    models: Optional[List[str]] = typer.Option(None, "--models",
                                               help="Only these models (glob, e.g. 'smollm2*'); repeatable."),
    requests_per_minute: Optional[int] = typer.Option(None, "--rpm", help="Requests per minute for this key."),
    tokens_per_minute: Optional[int] = typer.Option(None, "--tpm", help="Tokens per minute for this key."),
) -> None:
    """Create a key and print it once: it is stored only as a hash and cannot be shown again."""
    created = _key_store(Settings()).create(role, name=name, expires=expires, models=models or [],
                                            requests_per_minute=requests_per_minute,
                                            tokens_per_minute=tokens_per_minute)
    record = created.record
    print(created.key)
    expiry = _moment(record.expires_at)
    detail = f"id {record.id}, role {record.role}" + (f", expires {expiry:%Y-%m-%d %H:%M} UTC" if expiry else "")
    typer.echo(f"Created {record.name} ({detail}). Save the key now: it will not be shown again.", err=True)


@keys_app.command("list")
def keys_list(show_revoked: bool = typer.Option(False, "--all", help="Also show revoked and expired keys.")
              ) -> None:
    """List keys (never the keys themselves)."""
    rows = []
    for record in _key_store(Settings()).list():
        state = "revoked" if record.revoked_at else "expired" if record.is_expired else "active"
        if state != "active" and not show_revoked:
            continue
        rows.append([record.id, record.name, record.role, ",".join(record.models) or "*",
                     human_time(_moment(record.created_at)), human_time(_moment(record.last_used_at)),
                     f"{_moment(record.expires_at):%Y-%m-%d}" if record.expires_at else "never", state])
    print(format_table(["ID", "NAME", "ROLE", "MODELS", "CREATED", "LAST USED", "EXPIRES", "STATE"], rows), end="")


@keys_app.command("revoke")
def keys_revoke(key: str = typer.Argument(..., help="The key's id (or name), as `lokal keys list` shows.")) -> None:
    """Revoke a key: a running server refuses it from its next request on."""
    record = _key_store(Settings()).revoke(key)
    typer.echo(f"Revoked {record.name} ({record.id}).", err=True)


def _audit_path() -> Any:
    from lokal.security.policy import audit_path

    return audit_path(Settings())


@audit_app.command("verify")
def audit_verify() -> None:
    """Check the hash chain: report the first edited, deleted, reordered or cut-off line (exit 1)."""
    from lokal.cli import fail
    from lokal.security.audit import verify

    path = _audit_path()
    result = verify(path)
    for note in result.notes:
        typer.echo(f"note: {note}", err=True)
    if not result.is_intact:
        raise fail(f"the audit log {path} was tampered with: {result.problem}")
    if result.num_lines == 0:
        print(f"audit log {path}: empty")
        return
    print(f"audit log {path}: intact, {result.num_lines} lines (seq {result.first_seq}..{result.last_seq})")


def _line(record: dict[str, Any]) -> str:
    tokens = f" tokens {record.get('tokens_in', 0)}/{record.get('tokens_out', 0)}" if record.get("tokens_in") or \
        record.get("tokens_out") else ""
    model = record.get("model")
    model_text = f" model={json.dumps(model) if not isinstance(model, str) else model}" if model else ""
    return (f"{record.get('time', '?')} #{record.get('seq')} {record.get('status')} {record.get('route')} "
            f"key={record.get('key') or '-'}({record.get('role') or '-'}) client={record.get('client')}"
            f"{model_text}{tokens} {record.get('duration_ms')}ms")


def _print(record: dict[str, Any], as_json: bool) -> None:
    print(json.dumps(record, ensure_ascii=False) if as_json else _line(record), flush=True)


@audit_app.command("tail")
def audit_tail(
    lines: int = typer.Option(20, "-n", "--lines", help="How many of the last lines to show."),
    follow: bool = typer.Option(False, "-f", "--follow", help="Keep printing new lines (Ctrl+C to stop)."),
    as_json: bool = typer.Option(False, "--json", help="Print the raw JSON lines."),
) -> None:
    """Show the last lines of the audit log."""
    from lokal.security.audit import search

    path = _audit_path()
    records = list(search(path))
    for record in records[-lines:] if lines > 0 else []:
        _print(record, as_json)
    last_seq = records[-1]["seq"] if records else 0
    while follow:
        time.sleep(1.0)
        for record in search(path):
            if isinstance(record.get("seq"), int) and record["seq"] > last_seq:
                _print(record, as_json)
                last_seq = record["seq"]


@audit_app.command("search")
def audit_search(
    text: Optional[str] = typer.Argument(None, help="Text anywhere in the line."),
    key: Optional[str] = typer.Option(None, "--key", help="Key id."),
    model: Optional[str] = typer.Option(None, "--model", help="Model name."),
    status: Optional[int] = typer.Option(None, "--status", help="HTTP status, e.g. 403."),
    route: Optional[str] = typer.Option(None, "--route", help="Route, e.g. 'POST /api/chat'."),
    as_json: bool = typer.Option(False, "--json", help="Print the raw JSON lines."),
) -> None:
    """Find audit lines by text, key, model, status or route."""
    from lokal.security.audit import search

    fields = {name: str(value) for name, value in
              (("key", key), ("model", model), ("status", status), ("route", route)) if value is not None}
    for record in search(_audit_path(), text=text, fields=fields):
        _print(record, as_json)


def verify(model: Optional[str] = typer.Argument(None, help="The model to check (default: every model).")) -> None:
    """Re-hash every blob of a model (or of all models) against its sha256 digest; exit 1 naming what is wrong."""
    from lokal.cli import fail
    from lokal.security.integrity import verify_model
    from lokal.store.store import Store

    store = Store.from_settings(Settings())
    entries = [store.get(model)] if model else store.list().models
    num_bad = 0
    for entry in entries:
        problems = verify_model(store, entry)
        num_blobs = 1 + len(entry.manifest.layers)
        if not problems:
            print(f"{entry.name.display}: ok ({num_blobs} blobs)", flush=True)
            continue
        num_bad += 1
        for problem in problems:
            print(f"{entry.name.display}: blob {problem.digest} ({problem.kind}): {problem.problem}", flush=True)
    if num_bad:
        raise fail(f"{num_bad} of {len(entries)} models failed verification; remove them and pull them again")


def _migrate(encrypt: bool, new_key: Optional[str]) -> None:
    from pathlib import Path

    from lokal.security.encryption import Cipher, write_new_key_file
    from lokal.security.migrate import migrate
    from lokal.store.store import Store

    settings = Settings()
    store = Store.from_settings(settings)
    if new_key:
        store.blobs.cipher = Cipher(write_new_key_file(Path(new_key)))
        typer.echo(f"New key written to {new_key}: set LOKAL_ENCRYPTION_KEY_FILE={new_key} for lokal to read "
                   f"the store, and keep a copy: without it the models cannot be read.", err=True)
    num_changed = 0
    for step in migrate(store, encrypt=encrypt):
        num_changed += step.is_changed
        state = ("encrypted" if encrypt else "decrypted") if step.is_changed else "already done"
        print(f"[{step.index}/{step.total}] {step.digest}: {state}", flush=True)
    print(f"{num_changed} blobs {'encrypted' if encrypt else 'decrypted'}", flush=True)


def encrypt(
    every_blob: bool = typer.Option(False, "--all", help="Encrypt every blob of the store in place."),
    new_key: Optional[str] = typer.Option(None, "--new-key", help="Make a new key in this file (0600) and use it."),
) -> None:
    """Encrypt the model store at rest (AES-256-GCM) with LOKAL_ENCRYPTION_KEY(_FILE). Safe to interrupt:
    run it again to resume."""
    from lokal.cli import fail

    if not every_blob:
        raise fail("say --all: the whole store is encrypted (new blobs are encrypted when a key is set)", 2)
    _migrate(True, new_key)


def decrypt(every_blob: bool = typer.Option(False, "--all", help="Decrypt every blob of the store in place.")
            ) -> None:
    """Turn an encrypted store back into plain files (with the key it was encrypted with). Safe to interrupt."""
    from lokal.cli import fail

    if not every_blob:
        raise fail("say --all: the whole store is decrypted", 2)
    _migrate(False, None)


def register(app: typer.Typer) -> None:
    app.command("encrypt")(encrypt)
    app.command("decrypt")(decrypt)
    app.add_typer(keys_app, name="keys")
    app.add_typer(audit_app, name="audit")
    app.command("verify")(verify)
