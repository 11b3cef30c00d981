"""The original API's constructor style, `RoBERTaClassifier(config={...})`: one dict of the constructor's keywords.

`apply_config` sets each key of that dict as if it had been passed by name; an unknown key, an API
key, or a key also passed by name with another value is a ConfigError naming the key.
"""
from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

from textclassify.runtime.errors import ConfigError

SECRET_KEYS = frozenset({"api_key"})


def apply_config(obj: Any, config: Mapping[str, Any] | None, *, aliases: Mapping[str, str] | None = None) -> None:
    """Set `obj`'s constructor parameters from `config` (None: nothing to do); `aliases` maps seed names to ours."""
    if config is None:
        return
    owner = type(obj).__name__
    if not isinstance(config, Mapping):
        raise ConfigError(f"{owner}: config: expected a dict of {owner}'s keyword arguments, "
                          f"got {type(config).__name__}")
    params = {name: p.default for name, p in inspect.signature(type(obj).__init__).parameters.items()
              if name not in ("self", "config", *SECRET_KEYS) and p.kind is not inspect.Parameter.VAR_KEYWORD}
    aliases = dict(aliases or {})
    seen: dict[str, str] = {}
    for key, value in config.items():
        name = aliases.get(key, key)
        if name in SECRET_KEYS:
            raise ConfigError(f"{owner}: config: {key!r} is not accepted; API keys come from the environment "
                              f"(or the api_key argument), never from a config.")
        if not isinstance(name, str) or name not in params:
            raise ConfigError(f"{owner}: config: unknown key {key!r} (known keys: {', '.join(sorted(params))})")
        if name in seen:
            raise ConfigError(f"{owner}: config: give either {seen[name]!r} or {key!r}, not both.")
        seen[name] = key
        current = getattr(obj, name)
        if current is not params[name] and current != params[name] and current != value:
            raise ConfigError(f"{owner}: {name} is given both as an argument ({current!r}) and in config "
                              f"({value!r}); give it once.")
        setattr(obj, name, value)
