"""Local stand-ins for the remote services lokal pulls from (HF hub, Ollama registry), for tests."""
