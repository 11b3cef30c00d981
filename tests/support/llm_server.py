"""A loopback OpenAI-compatible chat server for tests: JSON and logprobs answers, fault injection, counters.

It parses the prompt format of `textclassify.runtime.llm.prompts` on its own (labels after the
``Labels:`` line, the text on the line after ``Text to classify:``), so a prompt change that breaks
the contract breaks the tests. Also a pytest plugin (fixtures `llm_server`, `llm_config_overrides`)
and a command: ``python -m tests.support.llm_server --port 0 --delay 0.1`` prints the base URL.
"""
from __future__ import annotations

import argparse
import json
import math
import re
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from tests.support.data import keyword_scores

Scorer = Callable[[str, list[str], bool], dict[str, float]]
FAULT_KINDS = ("429", "500", "502", "503", "stall", "disconnect", "not_json", "bad_scores", "no_choices",
               "no_logprobs", "no_label_logprobs", "echo_key", "dribble", "empty_json", "huge_logprob")
JUNK_TOKENS = ("The", "I", "\n")
_CODE_LINE = re.compile(r"^([A-Z]): (.*)$")


@dataclass
class Prompt:
    """What the server read from a request: the text, the labels (and codes) and the task."""

    text: str
    labels: list[str]
    codes: list[str] | None
    multi_label: bool


@dataclass
class _Fault:
    kind: str
    remaining: int
    text: str | None
    opts: dict[str, Any] = field(default_factory=dict)


def parse_prompt(messages: list[dict[str, Any]]) -> Prompt:
    """Text, labels, codes and task from the system and user messages of a scoring request."""
    system = next(str(m.get("content", "")) for m in messages if m.get("role") == "system")
    user = next(str(m.get("content", "")) for m in messages if m.get("role") == "user")
    lines = system.splitlines()
    labels, codes = [], []
    for line in lines[lines.index("Labels:") + 1:]:
        if not line:
            break
        coded = _CODE_LINE.match(line)
        if line.startswith("- "):
            labels.append(line[2:])
        elif coded:
            codes.append(coded.group(1))
            labels.append(coded.group(2))
        else:
            raise ValueError(f"unexpected label line {line!r}")
    head, _, text = user.partition("\n")
    if head != "Text to classify:" or "\n" in text:
        raise ValueError(f"unexpected user message {user[:80]!r}")
    return Prompt(text, labels, codes or None, "multi-label" in lines[0])


class FakeLLMServer:
    """`POST /v1/chat/completions` on 127.0.0.1 with a request counter and injectable faults."""

    def __init__(self, scorer: Scorer | None = None, *, delay_s: float = 0.0, logprobs_enabled: bool = True,
                 accept_response_format: bool = True, port: int = 0) -> None:
        self.scorer: Scorer = scorer or keyword_scores
        self.delay_s = delay_s
        self.logprobs_enabled = logprobs_enabled
        self.accept_response_format = accept_response_format
        self._port = port
        self._lock = threading.Lock()
        self._faults: list[_Fault] = []
        self._requests = 0
        self._tokens = {"prompt_tokens": 0, "completion_tokens": 0}  # summed over the usage blocks sent
        self._texts: list[str | None] = []
        self._bodies: list[dict[str, Any]] = []
        self._in_flight = 0
        self.max_in_flight = 0
        self._httpd: ThreadingHTTPServer | None = None

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> FakeLLMServer:
        """Bind a free port and serve from a daemon thread."""
        handler = type("Handler", (_Handler,), {"fake": self})
        self._httpd = _Server(("127.0.0.1", self._port), handler)
        threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def stop(self) -> None:
        """Stop serving and close the socket."""
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> FakeLLMServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        """http://127.0.0.1:<port>/v1"""
        assert self._httpd is not None, "server not started"
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    # -- observations ------------------------------------------------------------------------
    @property
    def requests(self) -> int:
        """Chat-completion requests received (faults included)."""
        with self._lock:
            return self._requests

    @property
    def texts_seen(self) -> list[str | None]:
        """The text of every request, in arrival order (None where the prompt could not be read)."""
        with self._lock:
            return list(self._texts)

    @property
    def bodies(self) -> list[dict[str, Any]]:
        """The JSON bodies of the last 200 requests."""
        with self._lock:
            return list(self._bodies)

    @property
    def tokens(self) -> dict[str, int]:
        """Prompt and completion tokens of every answer that carried a usage block."""
        with self._lock:
            return dict(self._tokens)

    def stats(self) -> dict[str, Any]:
        """Counters as one JSON-able dict (also served at GET /stats)."""
        with self._lock:
            counts = Counter(self._texts)
            return {"requests": self._requests, "unique_texts": len(counts),
                    "max_count": max(counts.values(), default=0), "max_in_flight": self.max_in_flight}

    # -- configuration -----------------------------------------------------------------------
    def inject(self, kind: str, times: int = 1, *, text: str | None = None, **opts: Any) -> None:
        """Answer the next `times` requests (those whose text contains `text`, if given) with fault `kind`."""
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault {kind!r}; expected one of {FAULT_KINDS}")
        with self._lock:
            self._faults.append(_Fault(kind, times, text, opts))

    def pending_faults(self) -> int:
        """How many injected fault answers are still to be given."""
        with self._lock:
            return sum(f.remaining for f in self._faults)

    def settings(self, **overrides: Any) -> Any:
        """LLMSettings pointing at this server (provider openai-compatible, model 'fake')."""
        from textclassify.runtime.llm import LLMSettings

        return LLMSettings(provider="openai-compatible", base_url=self.base_url, model="fake", **overrides)

    def config_overrides(self) -> dict[str, str]:
        """The AutoFusionClassifier config keys that point at this server."""
        return {"llm_provider": "openai-compatible", "llm_base_url": self.base_url, "llm_model": "fake"}

    # -- request handling (called from handler threads) ---------------------------------------
    def _begin(self, body: dict[str, Any], prompt: Prompt | None) -> _Fault | None:
        with self._lock:
            self._requests += 1
            self._texts.append(prompt.text if prompt else None)
            self._bodies = (self._bodies + [body])[-200:]
            self._in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self._in_flight)
            for fault in self._faults:
                if fault.remaining > 0 and (fault.text is None or (prompt and fault.text in prompt.text)):
                    fault.remaining -= 1
                    return fault
        return None

    def _end(self) -> None:
        with self._lock:
            self._in_flight -= 1

    def answer(self, body: dict[str, Any], prompt: Prompt, fault: _Fault | None, auth: str) -> tuple[int, dict, bytes]:
        """(status, headers, body bytes) for one request."""
        kind = fault.kind if fault else None
        if kind in ("429", "500", "502", "503"):
            headers = {"Retry-After": str(fault.opts["retry_after"])} if "retry_after" in fault.opts else {}
            return int(kind), headers, _error_body(f"injected {kind}", kind)
        if kind == "echo_key":
            return int(fault.opts.get("status", 401)), {}, _error_body(f"Incorrect API key provided: {auth}", "auth")
        if kind == "not_json":
            return 200, {}, b"<html><body>502 upstream hiccup</body></html>"
        if "response_format" in body and not self.accept_response_format:
            return 400, {}, _error_body("response_format is not supported by this model", "invalid_request")
        scores = self.scorer(prompt.text, list(prompt.labels), prompt.multi_label)
        wants_logprobs = bool(body.get("logprobs"))
        if wants_logprobs and not prompt.multi_label:
            content, logprobs = self._logprob_answer(prompt, scores, kind)
        elif kind == "empty_json":
            content, logprobs = "{}", None
        else:
            content, logprobs = json.dumps(_bad_scores(scores, fault.opts) if kind == "bad_scores" else scores), None
        choices = [] if kind == "no_choices" else [
            {"index": 0, "finish_reason": "stop", "logprobs": logprobs,
             "message": {"role": "assistant", "content": content}}]
        prompt_tokens = sum(len(str(m.get("content", ""))) for m in body.get("messages", [])) // 4
        completion_tokens = max(1, len(content) // 4)
        with self._lock:
            self._tokens["prompt_tokens"] += prompt_tokens
            self._tokens["completion_tokens"] += completion_tokens
        out = {"id": f"chatcmpl-{self.requests}", "object": "chat.completion", "created": int(time.time()),
               "model": body.get("model"), "choices": choices,
               "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                         "total_tokens": prompt_tokens + completion_tokens}}
        return 200, {}, json.dumps(out).encode()

    def _logprob_answer(self, prompt: Prompt, scores: dict[str, float], kind: str | None) -> tuple[str, Any]:
        names = prompt.codes or [label[:4].lower() for label in prompt.labels]
        probs = [max(scores.get(label, 0.0), 1e-9) for label in prompt.labels]
        total = sum(probs)
        best = max(range(len(probs)), key=probs.__getitem__)
        content = prompt.codes[best] if prompt.codes else prompt.labels[best]
        if not self.logprobs_enabled or kind == "no_logprobs":
            return content, None
        if kind == "no_label_logprobs":
            top = [(tok, math.log(0.3)) for tok in JUNK_TOKENS]
        elif kind == "huge_logprob":  # an impossible value (a log-probability is <= 0) on a label token
            top = [(names[0], 800.0)] + [(n, math.log(0.1)) for n in names[1:]]
        else:
            top = [(name, math.log(0.99 * p / total)) for name, p in zip(names, probs)]
            top.append((JUNK_TOKENS[0], math.log(0.01)))
        top.sort(key=lambda t: -t[1])
        entries = [{"token": tok, "logprob": lp, "bytes": list(tok.encode())} for tok, lp in top]
        return content, {"content": [dict(entries[0], top_logprobs=entries)], "refusal": None}


def _error_body(message: str, kind: str) -> bytes:
    return json.dumps({"error": {"message": message, "type": kind, "param": None, "code": None}}).encode()


def _bad_scores(scores: dict[str, float], opts: dict[str, Any]) -> dict[str, Any]:
    variant = opts.get("variant", "extra")
    bad: dict[str, Any] = dict(scores)
    first = next(iter(bad))
    if variant == "missing":
        del bad[first]
    elif variant == "extra":
        bad["not_a_label"] = 0.5
    elif variant == "non_numeric":
        bad[first] = "high"
    elif variant == "out_of_range":
        bad[first] = 1.5
    else:
        raise ValueError(f"unknown bad_scores variant {variant!r}")
    return bad


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    wbufsize = 1 << 16  # headers and body leave in one write (flushed after each request) ...
    fake: FakeLLMServer

    def setup(self) -> None:
        super().setup()
        # ... and without Nagle: a second small write would wait ~40 ms for the client's delayed ACK.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        pass

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        if self.path.rstrip("/").endswith("/stats"):
            self._send(200, {}, json.dumps(self.fake.stats()).encode())
        else:
            self._send(404, {}, _error_body(f"no route {self.path}", "not_found"))

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if not self.path.rstrip("/").endswith("/chat/completions"):
            self._send(404, {}, _error_body(f"no route {self.path}", "not_found"))
            return
        body = json.loads(raw)
        try:
            prompt: Prompt | None = parse_prompt(body.get("messages", []))
        except (ValueError, StopIteration):
            prompt = None
        fault = self.fake._begin(body, prompt)
        try:
            if self.fake.delay_s:
                time.sleep(self.fake.delay_s)
            if fault is not None and fault.kind == "stall":
                time.sleep(float(fault.opts.get("seconds", 3.0)))
                fault = None  # a late but normal answer, if anyone is still listening
            if fault is not None and fault.kind == "dribble":
                self._dribble(float(fault.opts.get("interval", 2.0)), float(fault.opts.get("seconds", 120.0)))
                return
            if fault is not None and fault.kind == "disconnect":
                self.close_connection = True
                return
            if prompt is None:
                self._send(400, {}, _error_body("cannot read the text and labels from the prompt", "invalid"))
                return
            self._send(*self.fake.answer(body, prompt, fault, self.headers.get("Authorization", "")))
        finally:
            self.fake._end()

    def finish(self) -> None:
        try:
            super().finish()
        except OSError:  # the client hung up on a dribbling or stalled answer
            pass

    def _dribble(self, interval: float, seconds: float) -> None:
        """A 200 with its headers at once, then one byte of body every `interval` s (for up to `seconds`)."""
        self.close_connection = True
        try:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", "100000")
            self.end_headers()
            self.wfile.flush()
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                self.wfile.write(b" ")
                self.wfile.flush()
                time.sleep(interval)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def _send(self, status: int, headers: dict[str, str], payload: bytes) -> None:
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.send_header("x-request-id", f"req-{self.fake.requests}")
            for name, value in headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True


@pytest.fixture
def llm_server() -> Iterator[FakeLLMServer]:
    """A started FakeLLMServer (keyword scorer, logprobs on, no delay), stopped after the test."""
    server = FakeLLMServer().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def llm_config_overrides(llm_server: FakeLLMServer) -> dict[str, str]:
    """{"llm_provider": "openai-compatible", "llm_base_url": <the server>, "llm_model": "fake"}."""
    return llm_server.config_overrides()


def main() -> None:
    """Serve until killed, printing the base URL on the first line of stdout."""
    parser = argparse.ArgumentParser(description="Loopback fake OpenAI-compatible LLM server")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--delay", type=float, default=0.0, help="seconds before each answer")
    parser.add_argument("--no-logprobs", action="store_true")
    args = parser.parse_args()
    server = FakeLLMServer(delay_s=args.delay, logprobs_enabled=not args.no_logprobs, port=args.port).start()
    print(server.base_url, flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        server.stop()


if __name__ == "__main__":
    main()
