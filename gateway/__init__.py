"""Gateway: OpenAI-compatible HTTP front door that routes each request to a pool member."""
