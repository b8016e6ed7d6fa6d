"""Model conversion: Hugging Face safetensors → GGUF (import), GGUF/safetensors → ONNX (Foundry column)."""
