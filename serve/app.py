"""create_app: the Starlette application of fusion-serve (Open Inference Protocol, plain JSON, metrics, auth).

    app = create_app({"tickets": bundle}, ServeSettings(max_batch_size=32), predictor_factory=None)

`predictor_factory(name, bundle, metrics)` returns the Predictor (serve.batcher) a model's requests go
through; None gives fusion-serve's DynamicBatcher on a pool of `settings.workers` threads. The app owns the
predictors (it closes them on shutdown), never the bundles: whoever loaded them closes them.
"""
from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from textclassify.runtime.bundle import Bundle
from textclassify.runtime.errors import DataError, LLMError
from textclassify.runtime.validation import validate_texts
from textclassify.serve import protocol as P
from textclassify.serve.batcher import DynamicBatcher, Predictor, QueueFullError, RequestTimeoutError
from textclassify.serve.metrics import ModelMetrics, ServeMetrics
from textclassify.serve.settings import RETRY_AFTER_S, ServeSettings

log = logging.getLogger("textclassify.serve")
PredictorFactory = Callable[[str, Bundle, ModelMetrics], Predictor]
Handler = Callable[[Request], Awaitable[Response]]


class ServerState:
    """What the handlers share: models, predictors, settings, metrics and the ready/draining flags."""

    def __init__(self, models: Mapping[str, Bundle], settings: ServeSettings, metrics: ServeMetrics) -> None:
        self.models = dict(models)
        self.settings = settings
        self.metrics = metrics
        self.predictors: dict[str, Predictor] = {}
        self.ready = False
        self.draining = False

    def begin_drain(self) -> None:
        """Readiness goes false and new inference is refused; requests already in flight still complete."""
        if not self.draining:
            log.info("draining: readiness is false, new inference requests get 503")
        self.draining = True
        self.ready = False


def create_app(models: Mapping[str, Bundle], settings: ServeSettings, *,
               predictor_factory: PredictorFactory | None = None, metrics: ServeMetrics | None = None) -> Starlette:
    """The HTTP app over loaded, warmed-up bundles (name -> Bundle); see the module docstring."""
    if not models:
        raise ValueError("create_app needs at least one model.")
    state = ServerState(models, settings, metrics or ServeMetrics())
    executor: ThreadPoolExecutor | None = None

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        nonlocal executor
        factory = predictor_factory
        if factory is None:
            executor = ThreadPoolExecutor(max_workers=settings.workers, thread_name_prefix="textclassify-serve")
            pool = executor

            def factory(name: str, bundle: Bundle, model_metrics: ModelMetrics) -> Predictor:
                return DynamicBatcher(bundle, executor=pool, max_batch_size=settings.max_batch_size,
                                      max_delay_ms=settings.max_delay_ms, max_queue=settings.max_queue,
                                      max_concurrent_batches=settings.workers, metrics=model_metrics)

        for name, bundle in state.models.items():
            state.predictors[name] = factory(name, bundle, state.metrics.for_model(name))
        state.ready = True
        try:
            yield
        finally:
            state.begin_drain()
            await asyncio.gather(*(p.close(settings.drain_s) for p in state.predictors.values()))
            if executor is not None:
                executor.shutdown(wait=True)
            log.info("drained: every queued and running batch finished")

    h = _Handlers(state)
    routes = [
        Route("/v2/health/live", h.endpoint("v2_live", h.live, public=True)),
        Route("/v2/health/ready", h.endpoint("v2_ready", h.ready, public=True)),
        Route("/v2", h.endpoint("v2_server_metadata", h.server_metadata)),
        Route("/v2/models/{name}", h.endpoint("v2_model_metadata", h.model_metadata)),
        Route("/v2/models/{name}/versions/{version}", h.endpoint("v2_model_metadata", h.model_metadata)),
        Route("/v2/models/{name}/ready", h.endpoint("v2_model_ready", h.model_ready)),
        Route("/v2/models/{name}/versions/{version}/ready", h.endpoint("v2_model_ready", h.model_ready)),
        Route("/v2/models/{name}/infer", h.endpoint("v2_infer", h.infer), methods=["POST"]),
        Route("/v2/models/{name}/versions/{version}/infer", h.endpoint("v2_infer", h.infer), methods=["POST"]),
        Route("/v1/models/{name}/predict", h.endpoint("v1_predict", h.predict), methods=["POST"]),
        Route("/metrics", h.endpoint("metrics", h.render_metrics)),
    ]
    app = Starlette(routes=routes, lifespan=lifespan,
                    exception_handlers={HTTPException: _http_exception, Exception: _unexpected})
    app.state.serve = state
    return app


class _Handlers:
    def __init__(self, state: ServerState) -> None:
        self.s = state
        self._token = state.settings.token.strip().encode() if state.settings.token else None

    # -- plumbing: auth, errors and the request counter around every handler ---------------------
    def endpoint(self, name: str, handler: Handler, *, public: bool = False) -> Handler:
        requests = self.s.metrics.requests

        async def wrapped(request: Request) -> Response:
            try:
                if not public and not self._authorised(request):
                    response: Response = _error(401, "missing or wrong bearer token",
                                                {"WWW-Authenticate": 'Bearer realm="fusion-serve"'})
                else:
                    response = await handler(request)
            except _Reply as reply:
                response = reply.response
            except Exception:  # never a traceback to the client; the log has it (without the texts)
                log.exception("%s: unexpected error", name)
                response = _error(500, "internal server error; the server log has the details")
            requests.labels(name, str(response.status_code)).inc()
            return response

        return wrapped

    def _authorised(self, request: Request) -> bool:
        if self._token is None:
            return True
        header = request.headers.get("authorization", "")
        scheme, _, credentials = header.partition(" ")
        # compare_digest on bytes of any length: the time does not depend on how much of the token matched
        return scheme.lower() == "bearer" and hmac.compare_digest(credentials.strip().encode(), self._token)

    def _model(self, request: Request) -> tuple[str, Bundle]:
        name = request.path_params["name"]
        version_ = request.path_params.get("version")
        if name not in self.s.models or version_ not in (None, "1"):
            what = f"model {name!r}" + (f" version {version_!r}" if version_ is not None else "")
            raise _Reply(_error(404, f"{what} is not served here (models: {sorted(self.s.models)})"))
        return name, self.s.models[name]

    async def _body(self, request: Request) -> bytes:
        limit = self.s.settings.max_request_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise _Reply(_error(413, f"request body of {declared} bytes is over max_request_bytes ({limit} bytes)"))
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise _Reply(_error(413, f"request body is over max_request_bytes ({limit} bytes)"))
            chunks.append(chunk)
        try:
            return P.decompress(b"".join(chunks), request.headers.get("content-encoding"), limit)
        except P.ProtocolError as e:
            raise _Reply(_error(400, str(e))) from None
        except P.PayloadTooLargeError as e:
            raise _Reply(_error(413, str(e))) from None

    async def _answer(self, name: str, texts: list[str]) -> Any:
        if self.s.draining:
            raise _Reply(_error(503, "the server is shutting down", {"Retry-After": str(RETRY_AFTER_S)}))
        try:
            texts = validate_texts(texts)
        except DataError as e:
            raise _Reply(_error(400, str(e))) from None
        predictor = self.s.predictors[name]
        start = time.perf_counter()
        try:
            answer = await predictor.predict(texts, self.s.settings.timeout_s)
        except QueueFullError as e:
            raise _Reply(_error(503, f"server busy: {e}", {"Retry-After": str(RETRY_AFTER_S)})) from None
        except RequestTimeoutError as e:
            raise _Reply(_error(504, f"request timed out after timeout_s ({self.s.settings.timeout_s:g} s): {e}")) \
                from None
        except LLMError as e:
            raise _Reply(_error(502, _llm_message(e))) from None
        except DataError as e:
            raise _Reply(_error(400, str(e))) from None
        self.s.metrics.for_model(name).request_seconds(time.perf_counter() - start)
        return answer

    # -- the endpoints -----------------------------------------------------------------------
    async def live(self, request: Request) -> Response:
        return JSONResponse({"live": True})

    async def ready(self, request: Request) -> Response:
        return JSONResponse({"ready": self.s.ready}, status_code=200 if self.s.ready else 503)

    async def server_metadata(self, request: Request) -> Response:
        return JSONResponse({"name": "textclassify", "version": _package_version(),
                             "extensions": ["binary_tensor_data"]})

    async def model_metadata(self, request: Request) -> Response:
        name, bundle = self._model(request)
        extra = {"providers": ",".join(bundle.providers), "variant": bundle.variant,
                 "on_llm_error": bundle.on_llm_error}
        if bundle.thresholds is not None:
            extra["thresholds"] = json.dumps(bundle.thresholds)
        return JSONResponse(P.model_metadata(name, bundle.labels, bundle.multi_label, extra))

    async def model_ready(self, request: Request) -> Response:
        name, _ = self._model(request)
        ready = self.s.ready and name in self.s.predictors
        return JSONResponse({"name": name, "ready": ready}, status_code=200 if ready else 503)

    async def infer(self, request: Request) -> Response:
        name, bundle = self._model(request)
        body = await self._body(request)
        try:
            parsed = P.parse_infer(body, request.headers.get(P.HEADER_LENGTH), self.s.settings.max_texts)
        except P.ProtocolError as e:
            raise _Reply(_error(400, str(e))) from None
        except P.PayloadTooLargeError as e:
            raise _Reply(_error(413, str(e))) from None
        answer = await self._answer(name, parsed.texts)
        content, headers = P.encode_infer(name, parsed, answer.rows, len(bundle.labels), bundle.multi_label)
        media = "application/octet-stream" if headers else "application/json"
        return Response(content, media_type=media, headers=headers)

    async def predict(self, request: Request) -> Response:
        name, bundle = self._model(request)
        body = await self._body(request)
        try:
            texts = P.parse_plain(body, self.s.settings.max_texts)
        except P.ProtocolError as e:
            raise _Reply(_error(400, str(e))) from None
        except P.PayloadTooLargeError as e:
            raise _Reply(_error(413, str(e))) from None
        answer = await self._answer(name, texts)
        return JSONResponse(P.plain_response(answer.rows, bundle.labels, answer.usage))

    async def render_metrics(self, request: Request) -> Response:
        for name, predictor in self.s.predictors.items():
            self.s.metrics.for_model(name).queue_depth(predictor.queue_depth())
        content, media = self.s.metrics.render()
        return Response(content, headers={"Content-Type": media})


class _Reply(Exception):
    """Carries a finished error response out of a helper."""

    def __init__(self, response: Response) -> None:
        self.response = response


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    # {"error": message} is the v2 protocol's error shape; the plain endpoint uses it too.
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def _llm_message(e: LLMError) -> str:
    provider = e.provider or "unknown"
    status = f" (HTTP {e.status_code})" if e.status_code else ""
    detail = str(e).split(" -- ")[0]
    return (f"LLM provider '{provider}' failed{status}: {detail} -- start fusion-serve with --on-llm-error ml_only "
            "to answer from the model alone when the LLM cannot be reached")


async def _http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return _error(exc.status_code, f"{exc.detail}: {request.method} {request.url.path}")


async def _unexpected(request: Request, exc: Exception) -> Response:
    log.error("unexpected error on %s %s", request.method, request.url.path, exc_info=exc)
    return _error(500, "internal server error; the server log has the details")


def _package_version() -> str:
    try:
        return version("textclassify")
    except PackageNotFoundError:
        return "unknown"


__all__ = ["PredictorFactory", "ServerState", "create_app"]
