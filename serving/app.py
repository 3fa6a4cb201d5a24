"""The FastAPI app: KServe / Triton V2 inference protocol plus a raw-modality route.

``create_app(settings)`` is the factory (the model loads in the lifespan handler, never at
import). Routes: ``/v2/health/live``, ``/v2/health/ready``, ``/v2``, ``/v2/models/{m}[/versions/{v}]``
(+ ``/ready``, ``/infer``, ``/config``), ``/v1/classify`` (a WAV or image upload,
preprocessed with the manifest's constants by ``fdkd.serving.preprocess``, within ``fdkd.serving.upload``'s
limits), ``/metrics``, and the page a person can use (``/``, ``/v1/model``: ``fdkd.serving.webpage``). Every error
is ``{"error": "..."}`` with a 4xx (400, never 422) or 5xx status, without stack traces.

``/openapi.json`` is FastAPI's document completed by ``fdkd.serving.openapi`` (the served model's names, the
modality's media types, the API key's scheme and 401s), so that it says what this server does.

Model metadata (``parameters``), ``/config`` (``parameters``) and ``/v1/model`` say whether the server runs
with ``--allow-unvalidated`` and whether the served artifact passed validation in the mode it runs in
(``allow_unvalidated``, ``validated``, ``validation_warning``): the override is never hidden from clients.
With ``settings.trust`` the run must carry a signature by that key (``fdkd.serving.signature``), else not ready.
"""

from __future__ import annotations

import asyncio
import json
import logging
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException

from fdkd.serving import openapi as api_doc
from fdkd.serving.batcher import DynamicBatcher
from fdkd.serving.errors import RETRY_AFTER, ApiError
from fdkd.serving.inference import HotPath, Inference, error_reply, is_multipart
from fdkd.serving.metrics import Metrics
from fdkd.serving.middleware import EXEMPT, ApiKey, BodyLimit, RequestLog
from fdkd.serving.model import LoadedModel, NotServable, load_model
from fdkd.serving.preprocess import AudioFrontend
from fdkd.serving.settings import ServeSettings
from fdkd.serving.webpage import add_page_routes

log = logging.getLogger("fdkd.serve")
VERSION = "0.1.0"
BACKENDS = {"onnxruntime_onnx": "onnxruntime", "tensorrt_plan": "tensorrt"}
EXPOSED_HEADERS = ["Inference-Header-Content-Length", "X-Request-ID", "Retry-After"]



class FdkdApp(FastAPI):
    """FastAPI, except that the inference requests ``hot.takes`` go to the bare ASGI hot path.

    They pass the same user middleware (built from ``user_middleware``, so whatever is added with
    ``add_middleware`` applies to them too) but not FastAPI's own stack (error and telemetry
    wrappers, routing, dependency injection); the hot path answers every error itself.
    """

    hot: HotPath | None = None
    _hot_stack = None

    async def __call__(self, scope, receive, send) -> None:
        hot = self.hot
        if hot is not None and hot.takes(scope):
            if self._hot_stack is None:
                stack = hot
                for cls, args, kwargs in reversed(self.user_middleware):
                    stack = cls(stack, *args, **kwargs)
                self._hot_stack = stack
            return await self._hot_stack(scope, receive, send)
        return await super().__call__(scope, receive, send)


class State:
    def __init__(self, settings: ServeSettings, runtime_override=None) -> None:
        self.settings = settings
        self.metrics = Metrics(settings.max_batch)
        self.model: LoadedModel | None = None
        self.batcher: DynamicBatcher | None = None
        self.ready = False
        self.not_ready_reason = "loading"
        self.draining = False
        self.runtime_override = runtime_override

    def unready_reason(self) -> str:
        """Why readiness is 503 (loading, refused, draining, batcher down, runtime hung), or "" when ready."""
        if self.draining:
            return "draining"
        if not self.ready:
            return self.not_ready_reason
        return (self.batcher.failure if self.batcher else None) or ""


def create_app(settings: ServeSettings, runtime_override=None) -> FastAPI:
    """Build the app. ``runtime_override`` wraps the loaded runtime (fault and slow-runtime tests)."""
    state = State(settings, runtime_override)
    inference = Inference(state)

    def _log_batch(requests: int, rows: int, compute_s: float, queued_s: float) -> None:
        if log.isEnabledFor(logging.INFO):
            log.info('{"event": "batch", "requests": %d, "rows": %d, "compute_ms": %.3f, "max_queued_ms": %.3f}',
                     requests, rows, 1000 * compute_s, 1000 * queued_s)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        try:
            model = await asyncio.to_thread(load_model, settings.run_dir, settings.artifact,
                                            engine_dir=settings.engine_dir, model_name=settings.model_name,
                                            allow_unvalidated=settings.allow_unvalidated, threads=settings.threads,
                                            trust=settings.trust)
            for w in model.warnings:
                log.warning(w)
            max_batch = settings.max_batch
            engine_max = getattr(model.runtime, "max_batch", None)
            if engine_max:
                max_batch = min(max_batch, engine_max)
            state.settings = settings.model_copy(update={"max_batch": max_batch})
            seconds = await asyncio.to_thread(model.warm_up, max_batch)
            if runtime_override is not None:
                model.runtime = runtime_override(model.runtime)
            state.model = model
            state.batcher = DynamicBatcher(model.runtime, max_batch=max_batch, max_queue=settings.max_queue,
                                           max_queue_delay_s=settings.max_queue_delay_ms / 1000,
                                           queue_timeout_s=settings.queue_timeout_ms / 1000, metrics=state.metrics,
                                           delay_s=settings.debug_delay_ms / 1000,
                                           batch_timeout_s=settings.batch_timeout_s, on_batch=_log_batch,
                                           featurize=model.frontend if isinstance(model.frontend, AudioFrontend)
                                           else None)
            state.batcher.start()
            state.ready, state.not_ready_reason = True, ""
            log.info('{"event": "ready", "model": "%s", "artifact": "%s", "sha256": "%s", "mode": %s, '
                     '"warm_up_s": %.3f}', model.name, model.artifact, model.sha256, json.dumps(model.mode), seconds)
        except NotServable as e:
            state.not_ready_reason = str(e)
            log.error('{"event": "not_ready", "reason": %s}', json.dumps(str(e)))
        except Exception as e:  # warm-up failed on this device: stay live, never ready, say why
            state.not_ready_reason = f"warm-up failed: {type(e).__name__}: {e}"
            log.error('{"event": "not_ready", "reason": %s}', json.dumps(state.not_ready_reason))
        yield
        await inference.stop()
        if state.batcher:
            await state.batcher.stop()

    app = FdkdApp(title="fdkd", version=VERSION, lifespan=lifespan,
                  description="KServe/Triton V2 inference for an fdkd student.")
    app.state.fdkd = state
    app.hot = HotPath(inference)

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError):
        return JSONResponse({"error": exc.message}, exc.status, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", []))
        return JSONResponse({"error": f"invalid request at {where}: {first.get('msg', 'invalid')}"}, 400)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        msg = "not found" if exc.status_code == 404 else str(exc.detail)
        return JSONResponse({"error": msg}, exc.status_code, headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unhandled(request: Request, exc: Exception):
        log.exception("unhandled error")  # the traceback goes to the log, never to the client
        return JSONResponse({"error": "internal server error"}, 500)

    _model = inference.model  # one check (ready, name, version) for the hot path and these routes

    @app.get("/v2/health/live", responses=api_doc.ok({"type": "object"}))
    async def live():
        return {"live": True}

    @app.get("/v2/health/ready", responses=api_doc.ok({"type": "object"}) | api_doc.errors(503))
    async def ready():
        reason = state.unready_reason()
        if not reason:
            return {"ready": True}
        return JSONResponse({"error": f"not ready: {reason}"}, 503, headers=RETRY_AFTER)

    @app.get("/v2", responses=api_doc.ok({"type": "object"}))
    async def server_metadata():
        return {"name": "fdkd", "version": VERSION, "extensions": ["binary_tensor_data", "model_configuration"]}

    def _validation_parameters(m: LoadedModel) -> dict:
        """What a client must know about the served artifact's validation (``--allow-unvalidated`` is visible)."""
        return {"allow_unvalidated": bool(state.settings.allow_unvalidated), "validated": m.validated,
                "validation_warning": "; ".join(m.warnings)}

    def _metadata(m: LoadedModel) -> dict:
        return {"name": m.name, "versions": [m.version], "platform": m.platform,
                "inputs": [{"name": m.input_name, "datatype": "FP32", "shape": [-1, *m.input_shape]}],
                "outputs": [{"name": m.output_name, "datatype": "FP32", "shape": [-1, m.num_classes]}],
                "parameters": _validation_parameters(m)}

    def model_route(method: str, tail: str, names: tuple[str, str], handler, with_request: bool = False, **doc):
        """Register ``handler(model_name, version[, request])`` at V2's two forms of a model path:
        /v2/models/{m}<tail> (version None) and /v2/models/{m}/versions/{v}<tail>, named ``names`` (the
        route names make /openapi.json's operation ids). One handler per resource, not one per path."""
        register = getattr(app, method)
        if with_request:
            async def latest(model_name: str, request: Request):
                return await handler(model_name, None, request)

            async def versioned(model_name: str, version: str, request: Request):
                return await handler(model_name, version, request)
        else:
            async def latest(model_name: str):
                return handler(model_name, None)

            async def versioned(model_name: str, version: str):
                return handler(model_name, version)
        register(f"/v2/models/{{model_name}}{tail}", name=names[0], **doc)(latest)
        register(f"/v2/models/{{model_name}}/versions/{{version}}{tail}", name=names[1], **doc)(versioned)

    model_route("get", "", ("model_metadata", "model_version_metadata"),
                lambda name, version: _metadata(_model(name, version)),
                responses=api_doc.ok({"type": "object"}) | api_doc.errors(404, 503))

    def _model_ready(model_name: str, version: str | None):
        if state.draining:
            raise ApiError(503, "server is draining", "draining", RETRY_AFTER)
        m = _model(model_name, version)
        if reason := state.unready_reason():
            raise ApiError(503, f"model not ready: {reason}", "not_ready", RETRY_AFTER)
        return {"name": m.name, "ready": True}

    model_route("get", "/ready", ("model_ready", "model_version_ready"), _model_ready,
                responses=api_doc.ok({"type": "object"}) | api_doc.errors(404, 503))

    def _config(m: LoadedModel) -> dict:
        """Triton's ``ModelConfig`` in its protobuf JSON form (tritonclient's model_config_pb2 parses it)."""
        inp = {"name": m.input_name, "data_type": "TYPE_FP32", "dims": m.input_shape}
        out = {"name": m.output_name, "data_type": "TYPE_FP32", "dims": [m.num_classes]}
        return {"name": m.name, "platform": m.platform, "backend": BACKENDS.get(m.platform, ""),
                "version_policy": {"specific": {"versions": [int(m.version)]}},
                "max_batch_size": state.settings.max_batch, "input": [inp], "output": [out],
                "dynamic_batching": {"max_queue_delay_microseconds": int(1000 * state.settings.max_queue_delay_ms),
                                     "default_queue_policy": {
                                         "timeout_action": "REJECT",
                                         "default_timeout_microseconds": int(1000 * state.settings.queue_timeout_ms),
                                         "max_queue_size": state.settings.max_queue}},
                "instance_group": [{"count": 1, "kind": "KIND_GPU" if m.platform == "tensorrt_plan" else "KIND_CPU"}],
                "parameters": {"artifact": {"string_value": m.artifact}, "sha256": {"string_value": m.sha256},
                               "execution_mode": {"string_value": json.dumps(m.mode, sort_keys=True)}}
                | {k: {"string_value": json.dumps(v) if isinstance(v, bool) else v}
                   for k, v in _validation_parameters(m).items()}}

    model_route("get", "/config", ("model_config", "model_version_config"),
                lambda name, version: _config(_model(name, version)),
                responses=api_doc.ok({"type": "object"}) | api_doc.errors(404, 503))

    def _fallback_headers(request: Request) -> dict:
        return {k.lower(): v for k, v in request.headers.raw}

    def _reply(reply: tuple[int, bytes, list]) -> Response:
        status, payload, extra = reply
        return Response(payload, status, headers={k.decode(): v.decode("latin-1") for k, v in extra})

    # The hot path (fdkd.serving.inference.HotPath) answers these POSTs before FastAPI sees them; the routes below
    # document them in /openapi.json and answer when the hot path is off (hot_path=False) or for multipart.
    # (their request bodies, the binary extension's header and 401 under a key: fdkd.serving.openapi.document)
    infer_responses = api_doc.ok(api_doc.INFER_RESPONSE) | api_doc.errors(400, 404, 415, 500, 503)

    async def infer(model_name: str, version: str | None, request: Request):
        return _reply(await inference.infer(model_name, version, _fallback_headers(request), await request.body(),
                                            request.is_disconnected, request.scope.setdefault("state", {})))

    model_route("post", "/infer", ("infer", "infer_version"), infer, with_request=True, responses=infer_responses)

    @app.post("/v1/classify", responses=api_doc.ok(api_doc.CLASSIFY_RESPONSE) | api_doc.errors(400, 415, 500, 503))
    async def classify(request: Request):
        """Classify one raw student-modality file (WAV for audio students, PNG/JPEG for image students, a 16-bit
        PNG for depth students, a .npy for array students)."""
        headers = _fallback_headers(request)
        body = await request.body()
        if is_multipart(headers.get(b"content-type", b"")):
            try:
                body = await _multipart_file(request)
            except ApiError as e:
                return _reply(error_reply(e.status, e.message, e.headers))
        return _reply(await inference.classify(headers, body, request.is_disconnected,
                                               request.scope.setdefault("state", {})))

    add_page_routes(app, state)  # GET / (the page, public) and GET /v1/model

    @app.get("/metrics", response_class=Response, responses={200: {
        "description": "Prometheus metrics, text format 0.0.4",
        "content": {api_doc.METRICS_MEDIA_TYPE.split(";")[0]: {"schema": {"type": "string"}}}}})
    async def metrics():
        return Response(generate_latest(state.metrics.registry), media_type=api_doc.METRICS_MEDIA_TYPE)

    def openapi() -> dict:
        """FastAPI's document plus what only this server knows (``fdkd.serving.openapi``), built once."""
        if app.openapi_schema is None:
            base = FastAPI.openapi(app)
            app.openapi_schema = api_doc.document(base, api_doc.model_facts(settings.run_dir, settings.model_name),
                                          keyed=settings.api_key is not None, exempt=EXEMPT)
        return app.openapi_schema

    app.openapi = openapi

    # pure ASGI middleware, innermost first: the body cap runs after authentication; CORS runs before it, so
    # a preflight (which carries no key) is answered by CORS and a 401 still carries the CORS headers
    app.add_middleware(BodyLimit, limit=settings.max_body_bytes, timeout_s=settings.body_timeout_s)
    app.add_middleware(ApiKey, key=settings.api_key.get_secret_value() if settings.api_key else None,
                       routes=app.router.routes)  # a wrong method on a route that exists: its 405, not 401
    if settings.cors_origins:  # CORS is off unless origins are configured
        from starlette.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["GET", "POST"],
                           allow_headers=["*"], expose_headers=EXPOSED_HEADERS)
    app.add_middleware(RequestLog)
    return app


async def _multipart_file(request: Request) -> bytes:
    try:
        form = await request.form()
    except Exception:  # python-multipart's parse errors
        raise ApiError(400, "malformed multipart body", "bad_request") from None
    files = [v for v in form.values() if hasattr(v, "read")]
    if len(files) != 1:
        raise ApiError(400, f"multipart body must hold exactly one file, found {len(files)}", "bad_request")
    return await files[0].read()
