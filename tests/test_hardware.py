"""Device choice with injected machines (NPU-only, GPU, CPU-only), catalog variants per device, and the
detection of this machine."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from lokal.errors import UnsupportedCapability
from lokal.hardware import Accelerator, Hardware, choose_device, detect
from lokal.store.catalog import Catalog

CPU_ONLY = Hardware(cpu_model="test cpu", cores_physical=4, cores_logical=8, isa=("avx2",), memory_total=16 << 30,
                    memory_available=8 << 30, onnx_providers=("CPUExecutionProvider",))
NPU_LAPTOP = Hardware(cpu_model="test cpu", cores_physical=8, cores_logical=16, isa=("avx2", "avx_vnni"),
                      memory_total=32 << 30, memory_available=16 << 30,
                      npus=(Accelerator("npu", "intel", "Intel NPU", driver="intel_vpu"),),
                      onnx_providers=("OpenVINOExecutionProvider", "CPUExecutionProvider"))
GPU_BOX = Hardware(cpu_model="test cpu", cores_physical=16, cores_logical=32, isa=("avx2", "avx512f"),
                   memory_total=64 << 30, memory_available=48 << 30,
                   gpus=(Accelerator("gpu", "nvidia", "RTX 4090", 24 << 30, "550.0"),),
                   llama_backends=("CPU", "CUDA"), onnx_providers=("CUDAExecutionProvider", "CPUExecutionProvider"))
# An NPU the kernel shows, but no ONNX Runtime provider installed for it.
NPU_WITHOUT_PROVIDER = Hardware(cpu_model="test cpu", cores_physical=8, cores_logical=8, isa=(), memory_total=16 << 30,
                                memory_available=8 << 30, npus=(Accelerator("npu", "amd", "AMD Ryzen AI NPU"),),
                                onnx_providers=("CPUExecutionProvider",))


def test_preferred_device_wins_when_present():
    choice = choose_device(NPU_LAPTOP, "npu", ["gpu", "cpu"], model_format="onnx")
    assert (choice.device, choice.provider) == ("npu", "OpenVINOExecutionProvider")
    assert "preferred" in choice.reason
    choice = choose_device(GPU_BOX, "gpu", ["cpu"], model_format="onnx")
    assert (choice.device, choice.provider) == ("gpu", "CUDAExecutionProvider")
    assert choose_device(GPU_BOX, "gpu", ["cpu"], model_format="gguf").device == "gpu"


def test_fallback_says_why_each_device_was_skipped():
    choice = choose_device(CPU_ONLY, "npu", ["gpu", "cpu"], model_format="onnx")
    assert (choice.device, choice.provider) == ("cpu", "CPUExecutionProvider")
    assert "no npu found" in choice.reason and "no gpu found" in choice.reason
    choice = choose_device(NPU_WITHOUT_PROVIDER, "npu", ["cpu"], model_format="onnx")
    assert choice.device == "cpu" and "no ONNX execution provider" in choice.reason
    # llama.cpp has no NPU backend: a GGUF on the NPU laptop falls back to the CPU.
    choice = choose_device(NPU_LAPTOP, "npu", ["cpu"], model_format="gguf")
    assert choice.device == "cpu" and "no backend" in choice.reason


def test_no_fitting_device_is_an_error_naming_each_reason():
    with pytest.raises(UnsupportedCapability, match="no npu found.*no gpu found"):
        choose_device(CPU_ONLY, "npu", ["gpu"], model_format="onnx")
    with pytest.raises(UnsupportedCapability, match="unknown device"):
        choose_device(CPU_ONLY, "tpu")


def test_offered_devices_limit_the_choice():
    # A model built for the CPU runs on the CPU even where a GPU is preferred and present.
    choice = choose_device(GPU_BOX, "gpu", ["cpu"], model_format="onnx", offered=["cpu"])
    assert choice.device == "cpu" and "no gpu variant" in choice.reason


def test_pull_phi4_mini_on_a_cpu_machine_picks_the_cpu_gguf():
    choice = Catalog.packaged().variant_for("phi4:mini", CPU_ONLY, ["gpu", "npu", "cpu"])
    assert choice.variant.name == "phi4:mini-q4_k_m" and choice.variant.format == "gguf"
    assert choice.device == "cpu"


def test_phi_4_mini_for_the_npu_picks_the_npu_variant_or_says_why_not():
    catalog = Catalog.packaged()
    choice = catalog.variant_for("phi-4-mini", NPU_LAPTOP, ["npu"])
    assert choice.variant.foundry_id == "Phi-4-mini-instruct-openvino-npu" and choice.variant.format == "onnx"
    with pytest.raises(UnsupportedCapability, match="Phi-4-mini-instruct-openvino-npu.*no npu found"):
        catalog.variant_for("phi-4-mini", CPU_ONLY, ["npu"])
    with pytest.raises(UnsupportedCapability, match="no ONNX execution provider"):
        catalog.variant_for("phi-4-mini", NPU_WITHOUT_PROVIDER, ["npu"])
    # NPU preferred with fallback: the NPU laptop without a GPU gets the NPU variant; a GPU box gets CUDA.
    assert catalog.variant_for("phi-4-mini", GPU_BOX, ["npu", "gpu", "cpu"]).variant.foundry_id in (
        None, "Phi-4-mini-instruct-cuda-gpu")


def test_foundry_ids_and_quantization_pick_variants():
    catalog = Catalog.packaged()
    assert catalog.resolve("Phi-4-mini-instruct-generic-cpu").name == "phi4:mini-onnx-int4-cpu"
    choice = catalog.variant_for("Phi-4-mini-instruct-generic-cpu", CPU_ONLY, ["cpu"])
    assert choice.variant.name == "phi4:mini-onnx-int4-cpu"
    assert catalog.variant_for("phi4:mini", CPU_ONLY, ["cpu"], "q8_0").variant.name == "phi4:mini-q8_0"
    assert catalog.variant_for("phi4:mini", CPU_ONLY, ["cpu"], "int4").variant.name == "phi4:mini-onnx-int4-cpu"
    assert catalog.variant_for("smollm2", CPU_ONLY, ["cpu"]).variant.name == "smollm2:135m-q4_1"


def test_detect_describes_this_machine():
    found = detect()
    assert found.cores_physical >= 1 and found.cores_logical >= found.cores_physical
    assert found.memory_total >= found.memory_available > 0
    assert "CPU" in found.llama_backends
    body = found.to_dict()
    assert "cpu" in body["devices"] and json.dumps(body)


def test_hardware_command_json():
    from lokal.cli import app

    result = CliRunner().invoke(app, ["hardware", "--json"])
    assert result.exit_code == 0, result.output
    body = json.loads(result.output)
    assert body["cpu"]["cores"] >= 1 and body["preference"] == ["gpu", "npu", "cpu"]
    text = CliRunner().invoke(app, ["hardware"])
    assert text.exit_code == 0 and "llama.cpp" in text.output and "ONNX" in text.output


def test_models_list_filters_by_device_size_and_type():
    from lokal.cli import app

    result = CliRunner().invoke(app, ["models", "list", "--device", "npu", "--json"])
    assert result.exit_code == 0, result.output
    names = [m["name"] for m in json.loads(result.output)["models"]]
    assert names == ["phi4:mini"]
    small = json.loads(CliRunner().invoke(app, ["models", "list", "--size", "small", "--type", "instruct",
                                                "--json"]).output)["models"]
    assert small and all(m["size_class"] == "small" and m["type"] == "instruct" for m in small)


def test_models_pull_device_npu_on_this_machine_explains():
    from lokal.cli import app

    result = CliRunner().invoke(app, ["models", "pull", "phi-4-mini", "--device", "npu"])
    assert result.exit_code == 1
    assert "openvino-npu" in result.output and "no npu found" in result.output
