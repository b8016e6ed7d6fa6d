"""`lokal create -f Modelfile` and POST /api/create against a live server: the seed's Modelfiles, the
official `ollama` client's create, LoRA adapters, quantization, and bad input (clear errors, nothing half made)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import jinja2
import ollama
import pytest
from lora_gguf import lora_for, lora_with_shapes
from server_fixture import GREEDY, Reference, live_server, model_store, reference  # noqa: F401

from lokal.modelfile import parse

LOKAL = [sys.executable, "-m", "lokal"]

ENTERPRISE_SYSTEM = ("\nYou are an enterprise assistant for Contoso Corporation.\n"
                     "Always maintain a professional tone and prioritize security best practices.\n"
                     "Never share confidential information without proper authentication.\n")
# The seed's Modelfile (section 3) verbatim but for FROM, which names the bundled model, and the FILE lines.
ENTERPRISE = f'''FROM smollm2

PARAMETER temperature 0.7
PARAMETER top_p 0.9
PARAMETER context_length 4096
PARAMETER num_gpu 1
PARAMETER num_thread 8

SYSTEM """{ENTERPRISE_SYSTEM}"""
'''
# The seed's second fragment (section 9): SYSTEM and a Go TEMPLATE.
SEED_TEMPLATE = '''FROM smollm2
SYSTEM """
You are a specialized enterprise assistant focused on technical documentation and code analysis.
Provide concise, accurate responses with practical examples.
"""

TEMPLATE """{{ .System }}
User: {{ .Prompt }}
Assistant: """
'''
COUNTING = "1, 2, 3, 4, 5, 6,"


def lokal(*args: str, server=None, cwd: Path | None = None, models: Path | None = None,
          **kwargs) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LOKAL_", "OLLAMA_"))}
    env["LOKAL_HOST"] = server.host if server else "127.0.0.1:9"  # nothing answers on port 9: in-process
    if models:
        env["LOKAL_MODELS"] = str(models)
    return subprocess.run([*LOKAL, *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=600,
                          **kwargs)


@pytest.fixture(scope="module")
def client(live_server) -> ollama.Client:  # noqa: F811
    return ollama.Client(host=live_server.url)


def tokens(reference, text: str) -> list[int]:  # noqa: F811
    return reference.llama.tokenize(text.encode(), add_bos=True, special=True)


def show(server, name: str) -> dict:
    """/api/show's body as sent (the ollama client's ShowResponse drops ``system``)."""
    response = httpx.post(server.url + "/api/show", json={"model": name}, timeout=60)
    assert response.status_code == 200, response.text
    return response.json()


def greedy(client: ollama.Client, model: str, prompt: str = COUNTING, raw: bool = True) -> list[int]:
    answer = client.generate(model=model, prompt=prompt, raw=raw, options=GREEDY)
    return list(answer.context)


# ---- the seed's Modelfiles --------------------------------------------------------------------------------


def test_seed_enterprise_modelfile(live_server, client, reference, tmp_path) -> None:  # noqa: F811
    (tmp_path / "Modelfile").write_text(ENTERPRISE)
    done = lokal("create", "enterprise-assistant", "-f", "./Modelfile", server=live_server, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "success" in done.stderr
    shown = show(live_server, "enterprise-assistant")
    assert shown["system"] == ENTERPRISE_SYSTEM
    assert shown["parameters"].split("\n") == [f"{name:<30} {value}" for name, value in (
        ("temperature", "0.7"), ("top_p", "0.9"), ("num_ctx", "4096"), ("num_gpu", "1"), ("num_thread", "8"))]
    # The system prompt goes into every request: the prompt is the GGUF's own chat template rendered by
    # jinja2 (not lokal's renderer) with that system message.
    template = jinja2.Environment().from_string(reference.llama.metadata["tokenizer.chat_template"])
    expected = template.render(messages=[{"role": "system", "content": ENTERPRISE_SYSTEM},
                                         {"role": "user", "content": "Hi"}], add_generation_prompt=True)
    context = client.generate(model="enterprise-assistant", prompt="Hi", options={"num_predict": 1}).context
    assert context[:-1] == tokens(reference, expected)
    # num_gpu 1 on a CPU-only build is accepted, and /api/ps reports the model on the CPU.
    assert client.ps().models[0].size_vram == 0


def test_seed_template_fragment_and_modelfile_round_trip(live_server, client, reference, tmp_path) -> None:  # noqa: F811
    (tmp_path / "Modelfile").write_text(SEED_TEMPLATE)
    done = lokal("create", "documenter", "-f", str(tmp_path / "Modelfile"), server=live_server)
    assert done.returncode == 0, done.stderr
    system = parse(SEED_TEMPLATE).system
    context = client.generate(model="documenter", prompt="Hi", options={"num_predict": 1}).context
    assert context[:-1] == tokens(reference, f"{system}\nUser: Hi\nAssistant: ")
    # show --modelfile renders it back, and a model made from that Modelfile is the same model.
    shown = lokal("show", "documenter", "--modelfile", server=live_server)
    assert shown.returncode == 0, shown.stderr
    rendered = parse(shown.stdout)
    assert rendered.system == system and rendered.template == parse(SEED_TEMPLATE).template
    (tmp_path / "Again").write_text(shown.stdout)
    again = lokal("create", "documenter-again", "-f", str(tmp_path / "Again"), server=live_server)
    assert again.returncode == 0, again.stderr
    assert show(live_server, "documenter-again")["modelfile"].split("\n")[4:] == \
        show(live_server, "documenter")["modelfile"].split("\n")[4:]


def test_official_client_create_json_form(client, live_server) -> None:  # noqa: F811
    client.create(model="pirate", from_="smollm2", system="Talk like a pirate.", template=None,
                  parameters={"temperature": 0.0, "stop": ["<|im_end|>", "Arr"], "num_ctx": 512},
                  messages=[{"role": "user", "content": "Who are you?"},
                            {"role": "assistant", "content": "Captain Smol."}],
                  license=["MIT", "Apache-2.0"])
    shown = show(live_server, "pirate")
    assert shown["system"] == "Talk like a pirate."
    assert shown["license"] == "MIT\nApache-2.0"
    assert '"Arr"' in shown["parameters"] and "num_ctx" in shown["parameters"]
    assert shown["messages"] == [{"role": "user", "content": "Who are you?"},
                                 {"role": "assistant", "content": "Captain Smol."}]


# ---- adapters ----------------------------------------------------------------------------------------------


def test_adapters_are_checked(client, tmp_path, smollm2_path) -> None:
    """An adapter for another architecture, one whose factors do not fit the base weights, and a plain model
    given as an adapter are each refused with what is wrong; the store and server stay as they were."""
    gemma = lora_with_shapes(tmp_path / "gemma.gguf", "gemma3", {"blk.0.attn_q.weight": (640, 1024)})
    with pytest.raises(ollama.ResponseError) as caught:
        client.create(model="bad-lora", from_="smollm2", adapters={"gemma.gguf": client.create_blob(gemma)})
    assert caught.value.status_code == 400 and "made for a 'gemma3' model; the base model is 'llama'" in caught.value.error
    misfit = lora_with_shapes(tmp_path / "misfit.gguf", "llama", {"blk.0.attn_q.weight": (640, 1024)})
    with pytest.raises(ollama.ResponseError) as caught:
        client.create(model="bad-lora", from_="smollm2", adapters={"misfit.gguf": client.create_blob(misfit)})
    assert caught.value.status_code == 400 and "blk.0.attn_q.weight is [576, 576] in the base model" in caught.value.error
    with pytest.raises(ollama.ResponseError) as caught:
        client.create(model="not-lora", from_="smollm2", adapters={"model.gguf": client.create_blob(smollm2_path)})
    assert "is not a LoRA adapter GGUF" in caught.value.error
    wide = lora_for(smollm2_path, tmp_path / "f64.gguf", dtype="float64")
    with pytest.raises(ollama.ResponseError) as caught:
        client.create(model="bad-lora", from_="smollm2", adapters={"f64.gguf": client.create_blob(wide)})
    assert "is F64; LoRA factors must be one of F32, F16, BF16, Q8_0" in caught.value.error
    assert "bad-lora" not in [m.model for m in client.list().models]
    assert client.generate(model="smollm2", prompt="Hi", options={"num_predict": 1}).done  # still healthy


def test_lora_adapter_applies_like_llama_cpp_python(client, live_server, tmp_path, smollm2_path) -> None:  # noqa: F811
    """ADAPTER through the Modelfile: a zero adapter (B = 0) changes nothing; a real one changes the answer
    exactly as llama-cpp-python's own Llama(lora_path=) applies the same adapter (the independent reference)."""
    zero = lora_for(smollm2_path, tmp_path / "zero.gguf", b_scale=0.0)
    strong = lora_for(smollm2_path, tmp_path / "strong.gguf", b_scale=4.0, seed=1)
    for name, adapter in (("lora-zero", zero), ("lora-strong", strong)):
        (tmp_path / f"{name}.Modelfile").write_text(f"FROM smollm2\nADAPTER {adapter.name}\nPARAMETER adapter_scale 1\n")
        done = lokal("create", name, "-f", str(tmp_path / f"{name}.Modelfile"), server=live_server)
        assert done.returncode == 0, done.stderr
    base, with_zero, with_strong = (client.generate(model=m, prompt=COUNTING, raw=True, options=GREEDY).response
                                    for m in ("smollm2", "lora-zero", "lora-strong"))
    assert with_zero == base
    assert with_strong != base
    assert "adapter" in show(live_server, "lora-strong")["modelfile"].lower()
    expected = Reference(smollm2_path, lora_path=str(adapter_blob(live_server, "lora-strong")))
    assert with_strong == expected.complete(COUNTING, GREEDY["num_predict"])
    # PARAMETER adapter_scale 0 switches the adapter off again (a load option: the model reloads).
    off = client.generate(model="lora-strong", prompt=COUNTING, raw=True, options={**GREEDY, "adapter_scale": 0.0})
    assert off.response == base


def adapter_blob(server, name: str) -> Path:
    from lokal.store.store import Store

    store = Store(server.models)
    layer = next(layer for layer in store.get(name).manifest.layers if layer.media_type.endswith(".adapter"))
    return store.blobs.path(layer.digest)


# ---- quantization ------------------------------------------------------------------------------------------


@pytest.mark.timeout(1200)  # three llama.cpp quantizations of a 135M model on a shared 2-core machine
def test_quantize_f16_q8_0_q4_k_m(client, live_server) -> None:  # noqa: F811
    client.create(model="smol:f16", from_="smollm2", quantize="f16")  # llama.cpp dequantizes the Q4_1 base
    sizes, file_types = {}, {}
    for tag in ("q8_0", "q4_k_m"):
        statuses = [event.status for event in client.create(model=f"smol:{tag}", from_="smol:f16", quantize=tag,
                                                            stream=True)]
        assert f"quantizing model to {tag.upper()}" in statuses and statuses[-1] == "success"
    for tag in ("f16", "q8_0", "q4_k_m"):
        file_types[tag] = show(live_server, f"smol:{tag}")["model_info"]["general.file_type"]
        sizes[tag] = next(m.size for m in client.list().models if m.model == f"smol:{tag}")
    assert file_types == {"f16": 1, "q8_0": 7, "q4_k_m": 15}  # llama.cpp's LLAMA_FTYPE_MOSTLY_* numbers
    assert sizes["f16"] > 1.7 * sizes["q8_0"] and sizes["q8_0"] > 1.3 * sizes["q4_k_m"]
    assert greedy(client, "smol:q8_0") == greedy(client, "smol:f16")
    # q4_k_m is coarser than f16, so only its first number is asked to agree on this unambiguous prompt
    first = {tag: client.generate(model=f"smol:{tag}", prompt=COUNTING, raw=True, options=GREEDY)
             for tag in ("f16", "q4_k_m")}
    assert first["q4_k_m"].eval_count > 0
    assert first["q4_k_m"].response.split(",")[0] == first["f16"].response.split(",")[0]


def test_unknown_quantize_type(client) -> None:
    with pytest.raises(ollama.ResponseError) as caught:
        client.create(model="smol:q3", from_="smollm2", quantize="q3_fancy")
    assert caught.value.status_code == 400 and "unsupported quantization type 'q3_fancy'" in caught.value.error


# ---- bad input ---------------------------------------------------------------------------------------------


def test_bad_modelfiles_name_the_problem(live_server, tmp_path) -> None:
    cases = {
        "FROM nope-not-here\n": 'model "nope-not-here" not found',
        "FROM ./missing.gguf\n": "FROM ./missing.gguf: no such file",
        "FROM smollm2\nPARAMETER temprature 1\n": "line 2: unknown parameter 'temprature'",
        "FROM smollm2\nFILE ./guide.txt\n": "FILE ./guide.txt: no such file",
    }
    for text, message in cases.items():
        (tmp_path / "Modelfile").write_text(text)
        done = lokal("create", "broken", "-f", str(tmp_path / "Modelfile"), server=live_server)
        assert done.returncode == 1 and message in done.stderr, (text, done.stderr)
    (tmp_path / "Huge").write_bytes(b"FROM smollm2\nSYSTEM " + b"x" * (1 << 20))
    done = lokal("create", "broken", "-f", str(tmp_path / "Huge"), server=live_server)
    assert done.returncode == 1 and "the limit is 1048576 (1 MiB)" in done.stderr
    done = lokal("create", "broken", "-f", str(tmp_path / "absent"), server=live_server)
    assert done.returncode == 1 and "cannot read the Modelfile" in done.stderr
    assert "broken" not in lokal("list", server=live_server).stdout


_LIMITED = """
import resource, runpy, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG, as a full disk would
resource.setrlimit(resource.RLIMIT_FSIZE, (8 << 20, 8 << 20))
sys.argv = ["lokal", *sys.argv[1:]]
runpy.run_module("lokal", run_name="__main__")
"""


def test_disk_full_mid_create_leaves_nothing(tmp_path, smollm2_path) -> None:
    models = tmp_path / "models"
    (tmp_path / "Modelfile").write_text(f"FROM {smollm2_path}\nSYSTEM hi\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LOKAL_", "OLLAMA_"))}
    env.update(LOKAL_HOST="127.0.0.1:9", LOKAL_MODELS=str(models))
    done = subprocess.run([sys.executable, "-c", _LIMITED, "create", "big", "-f", str(tmp_path / "Modelfile")],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 1 and "disk full" in done.stderr, done.stderr
    left = [p.relative_to(models).as_posix() for p in models.rglob("*") if p.is_file() and ".locks" not in p.parts]
    assert left == []  # no manifest, no blob, no temp file
