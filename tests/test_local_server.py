"""The embedded llama.cpp server of llm_provider 'local': real GGUF, real openai SDK, real shutdown."""
from __future__ import annotations

import importlib.util
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from urllib.parse import urlparse

import pytest

from textclassify.runtime import constants as K
from textclassify.runtime.errors import ConfigError, MissingDependencyError
from textclassify.runtime.llm import local_server as ls

HAVE_XLLAMACPP = importlib.util.find_spec("xllamacpp") is not None
HAVE_GGUF = ls.default_gguf_path().is_file()
needs_server = pytest.mark.skipif(
    not (HAVE_XLLAMACPP and HAVE_GGUF),
    reason="xllamacpp is not installed (pip install 'textclassify[demo]')" if not HAVE_XLLAMACPP
    else f"no GGUF at {ls.default_gguf_path()}: {ls.FETCH_HINT}",
)
REPO = Path(__file__).resolve().parents[1]


def _port_open(base_url: str) -> bool:
    url = urlparse(base_url)
    try:
        with socket.create_connection((url.hostname, url.port), timeout=1.0):
            return True
    except OSError:
        return False


@pytest.fixture
def server():
    """The default server, stopped again after the test."""
    base_url, model = ls.ensure_local_server()
    yield base_url, model
    ls.stop_local_servers()


@needs_server
def test_chat_completion_with_logprobs(server):
    """One real chat completion through the openai SDK returns top logprobs for the first token."""
    import openai

    base_url, model = server
    assert base_url.startswith("http://127.0.0.1:") and base_url.endswith("/v1")
    assert model == "SmolLM2-135M-Instruct.Q4_1.gguf"
    client = openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=60)
    try:
        resp = client.chat.completions.create(
            model=model, temperature=0, max_tokens=2, logprobs=True, top_logprobs=5,
            messages=[{"role": "system", "content": "Answer with one word: positive or negative."},
                      {"role": "user", "content": "A wonderful, moving film."}],
        )
    finally:
        client.close()
    first = resp.choices[0].logprobs.content[0]
    assert len(first.top_logprobs) == 5
    assert all(t.logprob <= 0.0 for t in first.top_logprobs)
    assert resp.usage.prompt_tokens > 0


@needs_server
def test_server_is_reused_and_restartable(server):
    """Two calls share one server; after stop_local_servers the port closes and a new call starts a new one."""
    base_url, _ = server
    assert ls.ensure_local_server(str(ls.default_gguf_path())) == server
    assert ls.running_local_servers() == {str(ls.default_gguf_path().resolve()): base_url}
    ls.stop_local_servers()
    assert ls.running_local_servers() == {}
    assert not _port_open(base_url)
    again, _ = ls.ensure_local_server()
    assert _port_open(again)


def _blocked_signals(tid: int) -> int | None:
    """The SigBlk mask of one thread of this process (Linux /proc), as an integer; None once it has ended."""
    try:
        status = Path(f"/proc/self/task/{tid}/status").read_text()
    except FileNotFoundError:
        return None
    for line in status.splitlines():
        if line.startswith("SigBlk:"):
            return int(line.split()[1], 16)
    raise AssertionError(f"no SigBlk line for thread {tid}")


@needs_server
@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs Linux /proc")
def test_server_threads_leave_ctrl_c_to_python():
    """Every thread the server starts has SIGINT and SIGTERM blocked, so the kernel delivers them to a
    Python thread (one on an HTTP thread left Ctrl-C unseen during a sleep); the caller's mask comes back."""
    ls.stop_local_servers()
    before = set(os.listdir("/proc/self/task"))
    try:
        ls.ensure_local_server()
        python_threads = {t.native_id for t in threading.enumerate()}  # started elsewhere meanwhile
        started = [int(tid) for tid in set(os.listdir("/proc/self/task")) - before if int(tid) not in python_threads]
        assert started, "the server started no thread of its own"
        wanted = (1 << (signal.SIGINT - 1)) | (1 << (signal.SIGTERM - 1))
        for tid in started:
            mask = _blocked_signals(tid)
            assert mask is None or mask & wanted == wanted, f"server thread {tid} can take SIGINT or SIGTERM"
        assert not {signal.SIGINT, signal.SIGTERM} & signal.pthread_sigmask(signal.SIG_BLOCK, [])
    finally:
        ls.stop_local_servers()


# An atexit handler registered before the server starts runs after the server's own one (LIFO), so it
# sees whether the port is closed while the interpreter is still alive.
# The child restores Python's own Ctrl-C handler first: a pytest started in the background by a shell
# without job control (`make test &`) ignores SIGINT, its children inherit that, and Python keeps it ignored.
_CHILD = textwrap.dedent("""
    import atexit, signal, socket, sys, time
    signal.signal(signal.SIGINT, signal.default_int_handler)
    from urllib.parse import urlparse
    state = {}
    def report():
        url = urlparse(state["url"])
        try:
            socket.create_connection((url.hostname, url.port), timeout=1.0).close()
            print("port open at exit", flush=True)
        except OSError:
            print("port closed at exit", flush=True)
    atexit.register(report)
    from textclassify.runtime.llm.local_server import ensure_local_server
    state["url"], _ = ensure_local_server()
    print(state["url"], flush=True)
    mode = sys.argv[1]
    if mode == "error":
        raise RuntimeError("boom")
    if mode == "wait":
        time.sleep(60)
""")


@needs_server
@pytest.mark.parametrize(("mode", "expected_rc"), [("exit", 0), ("error", 1), ("sigint", None)])
def test_server_stops_at_interpreter_exit(mode, expected_rc):
    """A normal exit, an uncaught error and Ctrl-C each close the port before the interpreter ends."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-c", _CHILD, "wait" if mode == "sigint" else mode], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        url = proc.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:"), proc.stderr.read() if proc.poll() is not None else url
        if mode == "sigint":
            assert _port_open(url)
            proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "port closed at exit" in out, (out, err)
    if expected_rc is not None:
        assert proc.returncode == expected_rc, err
    else:
        assert "KeyboardInterrupt" in err
    assert not _port_open(url)


def test_missing_explicit_gguf_is_a_config_error(tmp_path, monkeypatch):
    """A llm_model path that does not exist names the path and the working directory."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as info:
        ls.ensure_local_server("models/nope.gguf")
    assert str(info.value) == (
        "llm_model: expected a path to a GGUF file for llm_provider 'local', got 'models/nope.gguf' "
        f"(no such file from {tmp_path})."
    )


def test_non_gguf_file_is_a_config_error(tmp_path):
    """A file without the GGUF magic is refused before llama.cpp sees it."""
    bad = tmp_path / "model.gguf"
    bad.write_bytes(b"PK\x03\x04 not a model")
    with pytest.raises(ConfigError) as info:
        ls.ensure_local_server(str(bad))
    assert str(info.value) == (
        f"llm_model: {str(bad)!r} is not a GGUF file (it starts with b'PK\\x03\\x04', not b'GGUF')."
    )


def test_missing_default_gguf_says_how_to_fetch_it(tmp_path, monkeypatch):
    """With no llm_model and no file at the default path, the error says how to fetch the GGUF."""
    missing = tmp_path / "none.gguf"
    monkeypatch.setenv(K.LOCAL_GGUF_ENV, str(missing))
    with pytest.raises(MissingDependencyError) as info:
        ls.ensure_local_server(None)
    assert str(info.value) == (
        f"The default local LLM (SmolLM2-135M-Instruct GGUF) is not at ${K.LOCAL_GGUF_ENV}={missing}; "
        "run `make demo` (or python -m textclassify.train.demo_assets) to fetch it, "
        f"or set llm_model (or ${K.LOCAL_GGUF_ENV}) to a GGUF file you have."
    )


def test_env_var_chooses_the_default_gguf(tmp_path, monkeypatch):
    """$TEXTCLASSIFY_LOCAL_GGUF overrides the default path, and the model name is the file name."""
    fake = tmp_path / "tiny.gguf"
    fake.write_bytes(b"GGUF" + b"\0" * 16)
    monkeypatch.setenv(K.LOCAL_GGUF_ENV, str(fake))
    assert ls.default_gguf_path() == fake
    assert ls.local_model_name() == "tiny.gguf"


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="no CPU affinity on this OS")
def test_usable_cores_follow_the_affinity_mask_not_the_machine():
    """Pinned to one CPU (as a container's cpuset would), the process counts 1 usable core, whatever
    os.cpu_count() says; the whole mask again afterwards."""
    mask = os.sched_getaffinity(0)
    assert ls.usable_cores() == len(mask)
    try:
        os.sched_setaffinity(0, {min(mask)})
        assert ls.usable_cores() == 1
    finally:
        os.sched_setaffinity(0, mask)


def test_server_threads_default_to_half_the_cores_and_follow_the_env_var(monkeypatch):
    """Unset: half the cores (1 to 8); $TEXTCLASSIFY_LOCAL_THREADS: exactly that many."""
    monkeypatch.delenv(K.LOCAL_THREADS_ENV, raising=False)
    monkeypatch.setattr(ls, "usable_cores", lambda: 2)
    assert ls._server_threads() == 1
    monkeypatch.setattr(ls, "usable_cores", lambda: 64)
    assert ls._server_threads() == 8
    monkeypatch.setenv(K.LOCAL_THREADS_ENV, " 3 ")
    assert ls._server_threads() == 3
    monkeypatch.setenv(K.LOCAL_THREADS_ENV, "64")
    assert ls._server_threads() == 64  # every core of the 64


@pytest.mark.parametrize("value", ["0", "-2", "two", "1.5", "3", "100000"])
def test_bad_threads_env_var_is_a_config_error_before_anything_loads(tmp_path, monkeypatch, value):
    """Not an integer from 1 to the core count: the error names the variable, the range and the value, and no
    server starts (100000 threads once killed the whole process inside libgomp)."""
    fake = tmp_path / "tiny.gguf"
    fake.write_bytes(b"GGUF" + b"\0" * 16)
    monkeypatch.setattr(ls, "usable_cores", lambda: 2)
    monkeypatch.setenv(K.LOCAL_THREADS_ENV, value)
    with pytest.raises(ConfigError) as info:
        ls.ensure_local_server(str(fake))
    assert str(info.value) == (f"${K.LOCAL_THREADS_ENV} must be an integer from 1 to 2 (the llama.cpp threads of "
                               f"the local server, at most this machine's cores), got {value!r}.")
    assert ls.running_local_servers() == {}


def test_threads_env_var_reaches_llama_cpp_params(tmp_path, monkeypatch):
    """The thread count is what llama.cpp is given, for prompt and generation alike (xllamacpp stands in)."""
    import types

    from textclassify.runtime.errors import LLMError

    seen = {}

    class Cpu:
        n_threads, poll = 0, 50

    class Params:
        def __init__(self):
            self.model, self.cpuparams, self.cpuparams_batch = types.SimpleNamespace(path=""), Cpu(), Cpu()

    def server(params):
        seen.update(threads=(params.cpuparams.n_threads, params.cpuparams_batch.n_threads),
                    poll=(params.cpuparams.poll, params.cpuparams_batch.poll))
        raise RuntimeError("stand-in: not started")

    monkeypatch.setitem(sys.modules, "xllamacpp", types.SimpleNamespace(CommonParams=Params, Server=server))
    monkeypatch.setattr(ls, "usable_cores", lambda: 2)
    monkeypatch.setenv(K.LOCAL_THREADS_ENV, "2")
    fake = tmp_path / "tiny.gguf"
    fake.write_bytes(b"GGUF" + b"\0" * 16)
    with pytest.raises(LLMError, match="could not start"):
        ls.ensure_local_server(str(fake))
    assert seen == {"threads": (2, 2), "poll": (0, 0)}


def test_missing_xllamacpp_names_the_demo_extra(tmp_path, monkeypatch):
    """Without xllamacpp the error names textclassify[demo]."""
    fake = tmp_path / "tiny.gguf"
    fake.write_bytes(b"GGUF" + b"\0" * 16)
    monkeypatch.setitem(sys.modules, "xllamacpp", None)  # makes `import xllamacpp` raise ImportError
    with pytest.raises(MissingDependencyError) as info:
        ls.ensure_local_server(str(fake))
    assert str(info.value) == (
        "'xllamacpp' is not installed; install textclassify[demo] (pip install 'textclassify[demo]')."
    )
    assert ls.running_local_servers() == {}
