"""Security built into the server: API keys and roles, the audit chain, encryption at rest."""
