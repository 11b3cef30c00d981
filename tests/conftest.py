"""Shared pytest fixtures come from the plugin modules below (one per concern)."""
pytest_plugins = [
    "tests.support.fixtures",
    "tests.support.llm_server",
]
