"""FILE knowledge: documents chunked, embedded and retrieved into the system prompt."""
