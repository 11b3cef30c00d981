"""The embedded llama.cpp server behind `llm_provider: "local"`: one per GGUF file and process, on 127.0.0.1.

`xllamacpp.Server` runs llama.cpp's own OpenAI-compatible HTTP server on threads inside this process
(chat completions with logprobs), so nothing outlives the interpreter even when it is killed; a clean
exit (also Ctrl-C and uncaught errors) stops it through `atexit`. The runtime never downloads a model:
the default GGUF is fetched by `make demo` (`python -m textclassify.train.demo_assets`).
"""
from __future__ import annotations

import atexit
import contextlib
import logging
import os
import signal
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from textclassify.runtime import constants as K
from textclassify.runtime.errors import ConfigError, LLMError, MissingDependencyError, require

log = logging.getLogger(__name__)

GGUF_MAGIC = b"GGUF"
FETCH_HINT = "run `make demo` (or python -m textclassify.train.demo_assets) to fetch it"


@dataclass
class LocalServer:
    """One running embedded server: the GGUF it serves, its URL and the name requests must use."""

    gguf: Path
    base_url: str  # ends in /v1
    model_name: str
    handle: Any  # the xllamacpp.Server; dropping the last reference stops it


_LOCK = threading.Lock()
_SERVERS: dict[Path, LocalServer] = {}
_ATEXIT_REGISTERED = False


def _project_root() -> Path | None:
    root = Path(__file__).resolve().parents[2]  # runtime/llm/local_server.py in an editable checkout
    return root if (root / "pyproject.toml").is_file() else None


def default_gguf_path() -> Path:
    """$TEXTCLASSIFY_LOCAL_GGUF, else data/models/SmolLM2-135M-Instruct.Q4_1.gguf (cwd, then the checkout)."""
    env = os.environ.get(K.LOCAL_GGUF_ENV)
    if env:
        return Path(env).expanduser()
    candidate = Path.cwd() / K.LOCAL_GGUF_DEFAULT
    root = _project_root()
    if not candidate.is_file() and root is not None and (root / K.LOCAL_GGUF_DEFAULT).is_file():
        return root / K.LOCAL_GGUF_DEFAULT
    return candidate


def resolve_gguf(model_path: str | os.PathLike[str] | None = None) -> Path:
    """The absolute GGUF path `model_path` names (None: the default); checks it exists and is a GGUF file."""
    if model_path is None or str(model_path).strip() == "":
        path = default_gguf_path()
        if not path.is_file():
            where = f"${K.LOCAL_GGUF_ENV}={path}" if os.environ.get(K.LOCAL_GGUF_ENV) else str(path)
            raise MissingDependencyError(
                f"The default local LLM (SmolLM2-135M-Instruct GGUF) is not at {where}; {FETCH_HINT}, "
                f"or set llm_model (or ${K.LOCAL_GGUF_ENV}) to a GGUF file you have."
            )
    else:
        path = Path(model_path).expanduser()
        if not path.is_file():
            raise ConfigError(
                f"llm_model: expected a path to a GGUF file for llm_provider 'local', got {str(model_path)!r} "
                f"(no such file from {Path.cwd()})."
            )
    with open(path, "rb") as fh:
        magic = fh.read(4)
    if magic != GGUF_MAGIC:
        raise ConfigError(f"llm_model: {str(path)!r} is not a GGUF file (it starts with {magic!r}, not b'GGUF').")
    return path.resolve()


def local_model_name(model_path: str | os.PathLike[str] | None = None) -> str:
    """The model name the server for `model_path` answers to (the GGUF file name), without starting it."""
    return resolve_gguf(model_path).name


_NO_PROXY_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: never via a proxy


def _get_status(url: str) -> int | None:
    try:
        with _NO_PROXY_OPENER.open(url, timeout=2.0) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code  # 503 while the model loads
    except OSError:
        return None


def _wait_healthy(root_url: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    status: int | None = None
    while time.monotonic() < deadline:
        status = _get_status(root_url + "/health")
        if status == 200:
            return
        time.sleep(0.1)
    raise LLMError(
        f"The local llama.cpp server at {root_url} was not healthy within {timeout_s:g}s "
        f"(last /health status: {status if status is not None else 'no answer'}).",
        provider="local", status_code=status,
    )


def usable_cores() -> int:
    """The CPUs this process may run on (its affinity mask where the OS has one, as in a container's cpuset)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # macOS and Windows have no affinity call
        return max(1, os.cpu_count() or 1)


def _server_threads() -> int:
    """$TEXTCLASSIFY_LOCAL_THREADS (1 to the core count), else half the cores, at most 8 (1 on a 2-core machine).

    Half is the safe default: beside torch training or other work, llama.cpp's threads wait on each other every
    layer; on 2 cores beside a torch loop, 2 threads scored 0.78 texts/s against 1 thread's 3.37. Where the LLM
    runs alone, as in `make demo`, every core is faster: 6.95 against 3.83 (benchmarks/local_threads.py).
    """
    cores = usable_cores()
    raw = os.environ.get(K.LOCAL_THREADS_ENV, "").strip()
    if not raw:
        return max(1, min(8, cores // 2))
    try:
        threads = int(raw)
    except ValueError:
        threads = 0
    if not 1 <= threads <= cores:  # beyond the cores nothing is gained, and 100000 killed the process in libgomp
        raise ConfigError(f"${K.LOCAL_THREADS_ENV} must be an integer from 1 to {cores} (the llama.cpp threads of "
                          f"the local server, at most this machine's cores), got {raw[:40]!r}.")
    return threads


# Signals a process gets from outside (Ctrl-C, kill, a terminal or a timer). llama.cpp's threads start with
# them blocked, so the kernel hands them to a Python thread. One that landed on an HTTP thread left Ctrl-C
# unseen until the main thread next ran Python code: during a 60 s sleep, Ctrl-C took 60-70 s in 4 of 15
# tries on a busy machine (a connection to the port just before it), and under 0.2 s in 30 of 30 with the mask.
_ASYNC_SIGNALS = frozenset(getattr(signal, name) for name in (
    "SIGINT", "SIGTERM", "SIGHUP", "SIGQUIT", "SIGUSR1", "SIGUSR2", "SIGALRM", "SIGCHLD", "SIGWINCH")
    if hasattr(signal, name))


@contextlib.contextmanager
def _signals_blocked() -> Iterator[None]:
    """Block the asynchronous signals in this thread while the server's threads are created (they inherit
    the mask), then restore it. A no-op where pthread_sigmask does not exist (Windows)."""
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, _ASYNC_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _start(gguf: Path, timeout_s: float) -> LocalServer:
    threads = _server_threads()  # a bad $TEXTCLASSIFY_LOCAL_THREADS fails before anything loads
    try:
        import xllamacpp
    except ImportError:
        require("xllamacpp", "demo")
    params = xllamacpp.CommonParams()
    params.model.path = str(gguf)
    params.model_alias = {gguf.name}
    params.hostnames = ["127.0.0.1"]
    params.port = 0  # the OS picks a free port; listening_address reports it
    params.n_parallel = K.LOCAL_SERVER_PARALLEL
    params.n_ctx = K.LOCAL_SERVER_CTX * K.LOCAL_SERVER_PARALLEL  # llama.cpp splits n_ctx across the slots
    params.verbosity = -1  # llama.cpp's own log stays quiet; our errors say what failed
    # No spin-polling, and few threads unless told otherwise (_server_threads says why).
    for cpu in (params.cpuparams, params.cpuparams_batch):
        cpu.n_threads = threads
        cpu.poll = 0
    t = time.perf_counter()
    try:
        with _signals_blocked():
            handle = xllamacpp.Server(params)
    except RuntimeError as exc:
        raise LLMError(f"The local llama.cpp server could not start on {gguf}: {exc}",
                       provider="local", model=gguf.name) from None
    root_url = str(handle.listening_address).rstrip("/")
    try:
        _wait_healthy(root_url, timeout_s)
    except BaseException:  # also Ctrl-C while waiting: never leave a half-started server behind
        del handle
        raise
    log.info("local llama.cpp server for %s on %s (%.1fs)", gguf.name, root_url, time.perf_counter() - t)
    return LocalServer(gguf=gguf, base_url=root_url + "/v1", model_name=gguf.name, handle=handle)


def ensure_local_server(model_path: str | None = None) -> tuple[str, str]:
    """Start (or reuse) the embedded server for `model_path`; returns (base_url ending in /v1, model name)."""
    global _ATEXIT_REGISTERED
    gguf = resolve_gguf(model_path)
    with _LOCK:
        server = _SERVERS.get(gguf)
        if server is None:
            server = _start(gguf, K.LOCAL_SERVER_START_TIMEOUT_S)
            _SERVERS[gguf] = server
            if not _ATEXIT_REGISTERED:
                atexit.register(stop_local_servers)
                _ATEXIT_REGISTERED = True
        return server.base_url, server.model_name


def running_local_servers() -> dict[str, str]:
    """GGUF path -> base URL of every embedded server this process runs."""
    with _LOCK:
        return {str(path): server.base_url for path, server in _SERVERS.items()}


def stop_local_servers() -> None:
    """Stop every embedded server of this process (runs at exit; safe to call twice)."""
    with _LOCK:
        servers = list(_SERVERS.values())
        _SERVERS.clear()
    for server in servers:
        server.handle = None  # the C++ destructor stops the HTTP thread and frees the model
    if servers:
        log.info("stopped %d local llama.cpp server(s)", len(servers))

