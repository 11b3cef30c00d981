"""ServeSettings: the server's limits and batching knobs, checked once, shared by the CLI and create_app."""
from __future__ import annotations

import re
from dataclasses import dataclass

from textclassify.runtime.errors import ConfigError

DEFAULT_MAX_BATCH_SIZE = 32
DEFAULT_MAX_DELAY_MS = 5.0
DEFAULT_MAX_QUEUE = 1024
DEFAULT_TIMEOUT_S = 30.0
DEFAULT_MAX_TEXTS = 256
DEFAULT_MAX_REQUEST_BYTES = 4 * 1024 * 1024
DEFAULT_DRAIN_S = 20.0
DEFAULT_WORKERS = 2
# Rows per encoder run inside a merged batch on the CPU. The bundle sorts a batch's rows by token length and
# pads each run to its longest row, so short runs pad less; docs/serving.md "Batching" has the measurement.
DEFAULT_CPU_ENCODER_BATCH = 8
RETRY_AFTER_S = 1  # what a 503 for a full queue tells the client to wait

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(b|kb|kib|mb|mib|gb|gib)?\s*$", re.IGNORECASE)
_UNITS = {None: 1, "b": 1, "kb": 1000, "kib": 1024, "mb": 1000**2, "mib": 1024**2, "gb": 1000**3, "gib": 1024**3}


def parse_size(text: str | int, where: str = "--max-request-bytes") -> int:
    """Bytes from '4MiB', '512kb', '1000' (binary units for *iB, decimal for *B)."""
    if isinstance(text, int) and not isinstance(text, bool):
        value = text
    else:
        match = _SIZE.match(str(text))
        if not match:
            raise ConfigError(f"{where}: expected a size such as 4MiB, 512KiB or 1000000 (got {text!r}).")
        value = int(float(match.group(1)) * _UNITS[(match.group(2) or "").lower() or None])
    if value < 1:
        raise ConfigError(f"{where}: must be at least 1 byte (got {text!r}).")
    return value


@dataclass(frozen=True)
class ServeSettings:
    """What the server allows and how it batches; `token` is the bearer token (None: no auth)."""

    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE
    max_delay_ms: float = DEFAULT_MAX_DELAY_MS
    max_queue: int = DEFAULT_MAX_QUEUE
    timeout_s: float = DEFAULT_TIMEOUT_S
    max_texts: int = DEFAULT_MAX_TEXTS
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES
    drain_s: float = DEFAULT_DRAIN_S
    workers: int = DEFAULT_WORKERS
    token: str | None = None

    def __post_init__(self) -> None:
        for name in ("max_batch_size", "max_queue", "max_texts", "max_request_bytes", "workers"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"'{name}' must be a positive int (got {value!r}).")
        for name in ("max_delay_ms", "timeout_s", "drain_s"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ConfigError(f"'{name}' must be a number >= 0 (got {value!r}).")
        if self.timeout_s == 0:
            raise ConfigError("'timeout_s' must be more than 0.")
        if self.token is not None and (not isinstance(self.token, str) or not self.token.strip()):
            raise ConfigError("'token' must be None or a non-empty string.")  # never echo a token

    def __repr__(self) -> str:  # the token never reaches a log line through a repr
        fields = {k: getattr(self, k) for k in self.__dataclass_fields__ if k != "token"}
        shown = ", ".join(f"{k}={v!r}" for k, v in fields.items())
        return f"ServeSettings({shown}, token={'<set>' if self.token else None})"


def encoder_run_rows(providers: list[str], merged_batch: int, override: int | None = None) -> int:
    """Rows per encoder run inside a merged batch: `override` when given, else the whole batch on CUDA, else at most
    DEFAULT_CPU_ENCODER_BATCH on the CPU (shorter length-sorted runs pad less)."""
    if override is not None:
        return override
    if any("CUDA" in p for p in providers):
        return merged_batch
    return min(merged_batch, DEFAULT_CPU_ENCODER_BATCH)


__all__ = ["ServeSettings", "encoder_run_rows", "parse_size"]

