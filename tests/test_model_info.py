"""describe(): a stored model in /api/show terms, checked against the GGUF read independently with
``gguf.GGUFReader`` and against the official ``ollama`` client's ShowResponse."""

from __future__ import annotations

import functools
import json

import pytest
from gguf import GGUFReader
from ollama._types import ShowResponse

from lokal.config import Settings
from lokal.errors import InvalidModelName, ModelNotFound, StoreError
from lokal.model_info import PARAMETER_NAME_WIDTH, describe
from lokal.store.manifests import LAYER_KINDS, Layer
from lokal.store.sources import pull
from lokal.store.store import Store
from lokal.templates import GEMMA_TEMPLATE

TEMPLATE = "{{ if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}{{ range .Messages }}" \
           "<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}<|im_start|>assistant\n"
TOOLS_TEMPLATE = TEMPLATE + "{{ if .Tools }}{{ .Tools }}{{ end }}"
SYSTEM = "You are a terse assistant.\nAnswer in one line."
PARAMS = {"stop": ["<|im_end|>", "<|im_start|>"], "temperature": 0.7, "num_ctx": 2048, "top_k": 20}
LICENSE = "Apache License\nVersion 2.0, January 2004"
MESSAGES = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello there"}]


@functools.lru_cache(maxsize=None)
def read_reference(path) -> tuple[dict, int]:
    """(metadata, parameter count from tensor shapes) read with the gguf package, an independent GGUF
    parser; cached because it decodes whole vocabularies (seconds for Gemma's 256k tokens)."""
    reader = GGUFReader(path)
    fields = {}
    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or (key.startswith("tokenizer.ggml.") and len(field.data) > 1):
            continue  # file header and vocabulary arrays
        fields[key] = field.contents()
    return fields, sum(int(tensor.n_elements) for tensor in reader.tensors)


def gguf_fields(path) -> dict:
    return read_reference(str(path))[0]


def add_layer(store: Store, kind: str, text: str) -> Layer:
    data = text.encode()
    return Layer(LAYER_KINDS[kind], store.blobs.add_bytes(data), len(data))


def derive(store: Store, base: str, name: str, **texts: str) -> None:
    """A new model on the base's weights with extra layers, like `ollama create` from a Modelfile."""
    manifest = store.get(base).manifest
    layers = [layer for layer in manifest.layers if layer.kind == "model"]
    layers += [add_layer(store, kind, text) for kind, text in texts.items()]
    store.write_manifest(name, type(manifest)(config=manifest.config, layers=layers))


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    store = Store(root)
    settings = Settings(environ={"LOKAL_MODELS": str(root)})
    for name in ("smollm2", "gemma3:270m"):
        for _ in pull(store, name, settings):
            pass
    derive(store, "smollm2", "custom:v1", template=TEMPLATE, system=SYSTEM, params=json.dumps(PARAMS),
           license=LICENSE, messages=json.dumps(MESSAGES))
    derive(store, "smollm2", "tooly", template=TOOLS_TEMPLATE)
    return store


@pytest.mark.parametrize("name", ["smollm2", "gemma3:270m"])
def test_bundled_models_match_their_gguf(store, name):
    entry = store.get(name)
    path = store.model_path(entry)
    reference = gguf_fields(path)
    description = describe(store, name)
    architecture = reference["general.architecture"]

    assert description.name == entry.name.display
    assert description.details["format"] == "gguf"
    assert description.details["family"] == architecture
    assert description.details["families"] == [architecture]
    info = description.model_info
    assert info["general.architecture"] == architecture
    assert info[f"{architecture}.context_length"] == reference[f"{architecture}.context_length"]
    assert info[f"{architecture}.embedding_length"] == reference[f"{architecture}.embedding_length"]
    for key, value in reference.items():
        if key != "tokenizer.chat_template" and not isinstance(value, list) and not isinstance(value, float):
            assert info[key] == value, key
    # No vocabulary in the response, no template twice.
    assert info.get("tokenizer.ggml.tokens") is None and "tokenizer.chat_template" not in info
    # Without a TEMPLATE layer the GGUF's own chat template is the template; a GGUF without one (the
    # bundled Gemma 3) shows the family's fallback that requests will really be rendered with.
    if "tokenizer.chat_template" in reference:
        assert description.template == reference["tokenizer.chat_template"]
    else:
        assert description.template == GEMMA_TEMPLATE
    assert description.capabilities[0] == "completion"
    assert description.modified_at == entry.modified_at
    json.dumps(description.to_dict())  # the server can send it as is


def test_quantization_and_parameter_size_come_from_the_file(store):
    smollm2, gemma = describe(store, "smollm2"), describe(store, "gemma3:270m")
    assert smollm2.details["quantization_level"] == "Q4_1"
    assert gemma.details["quantization_level"] == "Q4_K_M"
    for name, description in (("smollm2", smollm2), ("gemma3:270m", gemma)):
        fields, tensor_parameters = read_reference(str(store.model_path(store.get(name))))
        count = int(fields.get("general.parameter_count", tensor_parameters))
        assert description.model_info["general.parameter_count"] == count
        size = description.details["parameter_size"]
        assert size.endswith("M") and abs(float(size[:-1]) * 1e6 - count) < 0.01 * count


def test_layers_override_and_fill_every_field(store):
    description = describe(store, "custom:v1")
    assert description.template == TEMPLATE
    assert description.system == SYSTEM
    assert description.license == LICENSE
    assert description.messages == MESSAGES
    assert description.parameter_values == PARAMS


def test_parameters_text_is_ollamas_padded_go_values(store):
    lines = describe(store, "custom:v1").parameters.splitlines()
    expected = [(name, value) for name, values in PARAMS.items()
                for value in (values if isinstance(values, list) else [values])]
    assert len(lines) == len(expected)
    for line, (name, value) in zip(lines, expected):
        assert line[:PARAMETER_NAME_WIDTH].rstrip() == name
        assert line[PARAMETER_NAME_WIDTH] == " "
        assert json.loads(line[PARAMETER_NAME_WIDTH + 1:]) == value  # strings quoted, numbers bare
    assert describe(store, "smollm2").parameters == ""


def parse_modelfile(text: str) -> list[tuple[str, str]]:
    """A small Modelfile reader for the test: (INSTRUCTION, argument), triple-quoted blocks joined."""
    commands = []
    lines = iter(line for line in text.splitlines() if line and not line.startswith("#"))
    for line in lines:
        instruction, _, argument = line.partition(" ")
        if argument.startswith('"""'):
            block = argument[3:]
            while not block.endswith('"""'):
                block += "\n" + next(lines)
            argument = block[:-3]
        commands.append((instruction, argument))
    return commands


def test_modelfile_rebuilds_the_model(store):
    description = describe(store, "custom:v1")
    text = description.modelfile
    assert text.startswith('# Modelfile generated by "lokal show"\n')
    assert "# FROM custom:v1\n" in text
    commands = parse_modelfile(text)
    assert commands[0] == ("FROM", str(store.model_path(store.get("custom:v1"))))
    assert ("TEMPLATE", TEMPLATE) in commands
    assert ("SYSTEM", SYSTEM) in commands
    assert ("LICENSE", LICENSE) in commands
    parameters = [argument for instruction, argument in commands if instruction == "PARAMETER"]
    assert parameters == ["stop <|im_end|>", "stop <|im_start|>", "temperature 0.7", "num_ctx 2048", "top_k 20"]
    messages = [argument for instruction, argument in commands if instruction == "MESSAGE"]
    assert messages == [f"{m['role']} {m['content']}" for m in MESSAGES]


def test_response_parses_with_the_official_ollama_client(store):
    for name in ("smollm2", "custom:v1"):
        body = describe(store, name).to_dict()
        response = ShowResponse.model_validate(body)
        assert response.modelfile == body["modelfile"]
        assert response.details.quantization_level == body["details"]["quantization_level"]
        assert response.modelinfo["general.architecture"] == "llama"
        assert response.capabilities == body["capabilities"]
        assert response.modified_at is not None


def test_capabilities_follow_the_template(store):
    assert "tools" in describe(store, "tooly").capabilities
    assert "tools" not in describe(store, "custom:v1").capabilities


def test_bad_names_and_missing_models_raise_typed_errors(store):
    with pytest.raises(ModelNotFound, match='model "nothere" not found'):
        describe(store, "nothere")
    with pytest.raises(InvalidModelName):
        describe(store, "bad name!")


def test_a_corrupt_params_layer_is_a_store_error(store):
    derive(store, "smollm2", "broken-params", params="{not json")
    with pytest.raises(StoreError, match="params"):
        describe(store, "broken-params")
    describe(store, "smollm2")  # the others are untouched


def test_capabilities_follow_the_template_requests_use(smollm2_path):
    import dataclasses

    from lokal.model_info import capabilities
    from lokal.store.gguf_info import read_details
    from lokal.templates import ChatTemplate

    base = read_details(smollm2_path)
    go_tools = "{{ if .Tools }}[TOOLS]{{ range .Tools }}{{ . }}{{ end }}{{ end }}{{ .Prompt }}"
    go_insert = "<|fim_prefix|>{{ .Prompt }}<|fim_suffix|>{{ .Suffix }}<|fim_middle|>"
    jinja_tools = "{% if tools %}{{ tools | tojson }}{% endif %}{{ messages[0]['content'] }}"

    def of(override: str | None, details=base) -> list[str]:
        return capabilities(details, ChatTemplate.from_model(details.chat_template, override,
                                                             architecture=details.architecture))

    assert of(go_tools) == ["completion", "tools"]
    assert of(go_insert) == ["completion", "insert"]
    assert of("{{ .Prompt }}") == ["completion"]
    assert of(None, dataclasses.replace(base, chat_template=jinja_tools)) == ["completion", "tools"]
    assert of(None, dataclasses.replace(base, architecture="nomic-bert")) == ["embedding"]
