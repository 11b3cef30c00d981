"""Placeholder: the loopback OpenAI-compatible server fixture is being written."""
