"""fusion-serve: one process serving every bundle given, over HTTP, until SIGTERM or SIGINT drains it."""
from __future__ import annotations

import logging
import os
import signal
import socket
import stat
import sys
from pathlib import Path
from types import FrameType
from typing import Any

import click

from textclassify.runtime import constants as K
from textclassify.runtime.errors import ConfigError, TextClassifyError
from textclassify.serve import settings as S

log = logging.getLogger("textclassify.serve")

EXAMPLES = """\b
Examples:
  fusion-serve --bundle bundles/tickets
  fusion-serve --bundle tickets=bundles/v3 --bundle reviews=bundles/reviews-int8 \\
      --host 0.0.0.0 --port 8080 --token-file /etc/fusion-serve/token \\
      --max-batch-size 32 --max-delay-ms 5 --on-llm-error ml_only

\b
Endpoints (MODEL is the folder name, or NAME in --bundle NAME=DIR):
  GET  /v2/health/live, /v2/health/ready, /v2, /v2/models/MODEL, /v2/models/MODEL/ready
  POST /v2/models/MODEL/infer      Open Inference Protocol (KServe v2; tritonclient works as is)
  POST /v1/models/MODEL/predict    {"texts": [...]} -> predictions, probabilities, labels, degraded, ...
  GET  /metrics                    Prometheus text format
With --token-file every endpoint but /v2/health/* needs 'Authorization: Bearer <token>'.
SIGTERM or SIGINT: readiness goes false, in-flight requests finish, exit 0 within --drain-s.
The LLM API key comes from the provider's environment variable, as for fusion-predict.
"""


@click.command(epilog=EXAMPLES, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--bundle", "bundles", multiple=True, required=True, metavar="[NAME=]DIR",
              help="Bundle to serve; repeat for more. The model name is the folder name unless NAME= is given.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind (0.0.0.0: every interface).")
@click.option("--port", type=click.IntRange(0, 65535), default=8080, show_default=True,
              help="Port to bind; 0 picks a free one (the 'listening on' log line names it).")
@click.option("--max-batch-size", type=click.IntRange(min=1), default=S.DEFAULT_MAX_BATCH_SIZE, show_default=True,
              help="Rows per batch; 1 turns batching off.")
@click.option("--encoder-batch-size", type=click.IntRange(min=1), default=None,
              help="Rows per encoder run inside a batch, shortest first (less padding) [default: "
                   f"{S.DEFAULT_CPU_ENCODER_BATCH} on the CPU, --max-batch-size on CUDA].")
@click.option("--max-delay-ms", type=click.FloatRange(min=0), default=S.DEFAULT_MAX_DELAY_MS, show_default=True,
              help="Longest wait for a batch to fill, from its oldest row's arrival.")
@click.option("--max-queue", type=click.IntRange(min=1), default=S.DEFAULT_MAX_QUEUE, show_default=True,
              help="Rows that may wait for a batch; past it requests get 503 with Retry-After.")
@click.option("--timeout-s", type=click.FloatRange(min=0, min_open=True), default=S.DEFAULT_TIMEOUT_S,
              show_default=True, help="A request not answered within this gets 504.")
@click.option("--max-texts", type=click.IntRange(min=1), default=S.DEFAULT_MAX_TEXTS, show_default=True,
              help="Texts per request; more gets 413.")
@click.option("--max-request-bytes", default="4MiB", show_default=True,
              help="Request body size limit (after decompression); more gets 413.")
@click.option("--token-file", type=click.Path(dir_okay=False), default=None,
              help="File holding the bearer token every endpoint but /v2/health/* requires.")
@click.option("--drain-s", type=click.FloatRange(min=0), default=S.DEFAULT_DRAIN_S, show_default=True,
              help="On SIGTERM/SIGINT, how long in-flight requests may take to finish.")
@click.option("--workers", type=click.IntRange(min=1), default=S.DEFAULT_WORKERS, show_default=True,
              help="Batches running at once, each on its own worker thread (ONNX Runtime, then the LLM).")
@click.option("--llm-base-url", default=None, help="Override the LLM endpoint recorded in the bundles.")
@click.option("--on-llm-error", type=click.Choice(["raise", "ml_only"]), default="raise", show_default=True,
              help="When the LLM fails: 502 naming the provider, or answer from the model alone (rows marked "
                   "degraded).")
@click.option("--variant", type=click.Choice(["auto", "fp32", "int8", "fp16"]), default="auto", show_default=True,
              help="Model variant; auto = fp16 on CUDA when the bundle has it, else fp32.")
@click.option("--providers", default="auto", show_default=True,
              help="auto | cpu | cuda | comma-separated ONNX Runtime provider names.")
@click.option("--device-id", type=click.IntRange(min=0), default=0, show_default=True,
              help="CUDA device the bundles' sessions run on (ignored on the CPU).")
@click.option("--intra-op-threads", type=click.IntRange(min=1), default=None,
              help="ONNX Runtime threads per batch (default: ONNX Runtime's choice).")
@click.option("--cache-dir", default=K.DEFAULT_CACHE_DIR, show_default=True, help="LLM score cache directory.")
@click.option("--access-log/--no-access-log", default=False, show_default=True,
              help="Log one line per request (method, path, status; never texts or headers).")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default="info",
              show_default=True)
def main(bundles: tuple[str, ...], host: str, port: int, max_batch_size: int, encoder_batch_size: int | None,
         max_delay_ms: float, max_queue: int,
         timeout_s: float, max_texts: int, max_request_bytes: str, token_file: str | None, drain_s: float,
         workers: int, llm_base_url: str | None, on_llm_error: str, variant: str, providers: str, device_id: int,
         intra_op_threads: int | None, cache_dir: str, access_log: bool, log_level: str) -> None:
    """Serve textclassify bundles over HTTP: Open Inference Protocol, a plain JSON endpoint, Prometheus metrics."""
    logging.basicConfig(level=log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("httpx", "httpx2", "openai", "httpcore"):  # one line per LLM request otherwise
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLogger().level))
    try:
        import uvicorn  # noqa: F401 - fail early with the extra to install

        from textclassify.serve.app import create_app
    except ImportError as e:
        raise click.ClickException(f"{e.name or e} is not installed; install textclassify[serve] "
                                   "(pip install 'textclassify[serve]').") from None
    try:
        settings = S.ServeSettings(
            max_batch_size=max_batch_size, max_delay_ms=max_delay_ms, max_queue=max_queue, timeout_s=timeout_s,
            max_texts=max_texts, max_request_bytes=S.parse_size(max_request_bytes), drain_s=drain_s,
            workers=workers, token=_read_token(token_file) if token_file else None)
        named = _named_bundles(bundles)
        models = _load(named, providers=providers, variant=variant, llm_base_url=llm_base_url,
                       on_llm_error=on_llm_error, cache_dir=cache_dir, batch_size=max_batch_size,
                       encoder_batch_size=encoder_batch_size, intra_op_threads=intra_op_threads,
                       device_id=device_id)
    except TextClassifyError as e:
        raise click.ClickException(str(e)) from None
    try:
        app = create_app(models, settings)
        code = _run(app, host, port, drain_s, access_log, log_level)
    finally:
        for bundle in models.values():
            bundle.close()
    sys.exit(code)


def _named_bundles(specs: tuple[str, ...]) -> dict[str, Path]:
    named: dict[str, Path] = {}
    for spec in specs:
        name, sep, directory = spec.partition("=")
        path = Path(directory if sep else spec)
        name = name if sep else path.resolve().name
        if not name or "/" in name:
            raise ConfigError(f"--bundle {spec!r}: the model name must be a non-empty name without '/'.")
        if name in named:
            raise ConfigError(f"--bundle {spec!r}: the model name {name!r} is given twice; use NAME=DIR.")
        named[name] = path
    return named


def _load(named: dict[str, Path], *, providers: str, variant: str, llm_base_url: str | None, on_llm_error: str,
          cache_dir: str, batch_size: int, encoder_batch_size: int | None,
          intra_op_threads: int | None, device_id: int = 0) -> dict[str, Any]:
    from textclassify.runtime.bundle import load_bundle

    provider_arg: str | list[str] = providers if providers in ("auto", "cpu", "cuda") else \
        [p.strip() for p in providers.split(",") if p.strip()]
    models: dict[str, Any] = {}
    try:
        for name, path in named.items():
            bundle = load_bundle(path, providers=provider_arg, variant=variant, llm_base_url=llm_base_url,
                                 on_llm_error=on_llm_error, cache_dir=cache_dir, batch_size=batch_size,
                                 intra_op_num_threads=intra_op_threads, device_id=device_id)
            # Loaded (and, on CUDA, warmed up) at the merged batch's size; on the CPU the encoder then runs
            # a merged batch in shorter runs (settings.DEFAULT_CPU_ENCODER_BATCH says why).
            bundle.batch_size = S.encoder_run_rows(bundle.providers, batch_size, encoder_batch_size)
            models[name] = bundle
            log.info("loaded %s from %s: %d labels, variant %s, providers %s, encoder runs of %d rows", name, path,
                     len(bundle.labels), bundle.variant, ",".join(bundle.providers), bundle.batch_size)
    except BaseException:
        for bundle in models.values():
            bundle.close()
        raise
    # The LLM client imports the openai SDK on its first request (1-2 s on two busy cores); a server pays that
    # before it says it is listening, not on its first request.
    import openai  # noqa: F401

    return models


def _read_token(path: str) -> str:
    """The token file's content, stripped; the token itself never appears in a message."""
    try:
        token = Path(path).read_text(encoding="utf-8").strip()
        mode = os.stat(path).st_mode
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"--token-file {path}: cannot read it ({type(e).__name__}).") from None
    if not token:
        raise ConfigError(f"--token-file {path}: the file is empty.")
    if mode & (stat.S_IRGRP | stat.S_IROTH):
        log.warning("--token-file %s is readable by other users; chmod 600 it", path)
    return token


def _run(app: Any, host: str, port: int, drain_s: float, access_log: bool, log_level: str) -> int:
    import uvicorn

    state = app.state.serve

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            # Not recorded in _captured_signals: uvicorn would raise it again after the drain and the
            # process would die by the signal instead of exiting 0.
            state.begin_drain()
            if self.should_exit and sig == signal.SIGINT:
                self.force_exit = True
            else:
                log.info("%s received: finishing in-flight requests (up to %g s)", signal.Signals(sig).name,
                         drain_s)
                self.should_exit = True

        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets=sockets)
            if self.started:
                bound = sockets[0].getsockname() if sockets else (host, port)
                log.info("listening on http://%s:%d (models: %s)", bound[0], bound[1], ", ".join(state.models))

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise click.ClickException(f"cannot bind {host}:{port}: {e.strerror}") from None
    sock.set_inheritable(True)
    config = uvicorn.Config(app, lifespan="on", log_level=log_level, access_log=access_log,
                            timeout_graceful_shutdown=max(drain_s, 0.001), log_config=None, backlog=2048)
    server = Server(config)
    server.run(sockets=[sock])
    return 0 if server.started else 1


__all__ = ["main"]


if __name__ == "__main__":
    main()
