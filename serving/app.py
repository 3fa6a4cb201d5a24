"""The FastAPI app: KServe / Triton V2 inference protocol plus a raw-modality route.

``create_app(settings)`` is the factory (the model loads in the lifespan handler, never at
import). Routes: ``/v2/health/live``, ``/v2/health/ready``, ``/v2``, ``/v2/models/{m}[/versions/{v}]``
(+ ``/ready``, ``/infer``, ``/config``), ``/v1/classify`` (a WAV or image upload,
preprocessed with the manifest's constants by ``serving.preprocess``, within ``serving.upload``'s
limits), ``/metrics``, and the page a person can use (``/``, ``/v1/model``: ``serving.webpage``). Every error
is ``{"error": "..."}`` with a 4xx (400, never 422) or 5xx status, without stack traces.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from contextlib import asynccontextmanager

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException

from serving import protocol
from serving.batcher import DynamicBatcher, Unavailable
from serving.metrics import Metrics
from serving.middleware import ApiKey, BodyLimit, RequestLog, bounded
from serving.model import LoadedModel, NotServable, load_model
from serving.settings import ServeSettings
from serving.webpage import add_page_routes

log = logging.getLogger("fdkd.serve")
VERSION = "0.1.0"
RETRY_AFTER = {"Retry-After": "1"}
BACKENDS = {"onnxruntime_onnx": "onnxruntime", "tensorrt_plan": "tensorrt"}
EXPOSED_HEADERS = ["Inference-Header-Content-Length", "X-Request-ID", "Retry-After"]


class ApiError(Exception):
    def __init__(self, status: int, message: str, reason: str, headers: dict | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.reason, self.headers = status, message, reason, headers or {}


ERROR_SCHEMA = {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}}
TENSOR_SCHEMA = {"type": "object", "required": ["name", "shape", "datatype"], "properties": {
    "name": {"type": "string"}, "shape": {"type": "array", "items": {"type": "integer"}},
    "datatype": {"type": "string"}, "parameters": {"type": "object"}, "data": {"type": "array"}}}
INFER_REQUEST_SCHEMA = {"type": "object", "required": ["inputs"], "properties": {
    "id": {"type": "string"}, "parameters": {"type": "object"},
    "inputs": {"type": "array", "items": TENSOR_SCHEMA},
    "outputs": {"type": "array", "items": {"type": "object", "required": ["name"], "properties": {
        "name": {"type": "string"}, "parameters": {"type": "object"}}}}}}
INFER_RESPONSE_SCHEMA = {"type": "object", "required": ["model_name", "outputs"], "properties": {
    "model_name": {"type": "string"}, "model_version": {"type": "string"}, "id": {"type": "string"},
    "outputs": {"type": "array", "items": TENSOR_SCHEMA}}}


def _errors(*codes: int) -> dict:
    return {c: {"description": "error", "content": {"application/json": {"schema": ERROR_SCHEMA}}} for c in codes}


def _ok(schema: dict) -> dict:
    return {200: {"description": "ok", "content": {"application/json": {"schema": schema}}}}


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

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        try:
            model = await asyncio.to_thread(load_model, settings.run_dir, settings.artifact,
                                            engine_dir=settings.engine_dir, model_name=settings.model_name,
                                            allow_unvalidated=settings.allow_unvalidated, threads=settings.threads)
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
                                           batch_timeout_s=settings.batch_timeout_s)
            state.batcher.start()
            state.ready, state.not_ready_reason = True, ""
            log.info('{"event": "ready", "model": "%s", "artifact": "%s", "warm_up_s": %.3f}',
                     model.name, model.artifact, seconds)
        except NotServable as e:
            state.not_ready_reason = str(e)
            log.error('{"event": "not_ready", "reason": %s}', json.dumps(str(e)))
        except Exception as e:  # warm-up failed on this device: stay live, never ready, say why
            state.not_ready_reason = f"warm-up failed: {type(e).__name__}: {e}"
            log.error('{"event": "not_ready", "reason": %s}', json.dumps(state.not_ready_reason))
        yield
        if state.batcher:
            await state.batcher.stop()

    app = FastAPI(title="fdkd", version=VERSION, lifespan=lifespan,
                  description="KServe/Triton V2 inference for an fdkd student.")
    app.state.fdkd = state

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

    def _model(name: str, version: str | None = None) -> LoadedModel:
        if not state.ready or state.model is None:
            raise ApiError(503, f"model not ready: {state.not_ready_reason}", "not_ready", RETRY_AFTER)
        if name != state.model.name:
            raise ApiError(404, f"unknown model {bounded(name)}; this server serves {state.model.name!r}",
                           "unknown_model")
        if version not in (None, state.model.version):
            raise ApiError(404, f"model {state.model.name!r} has no version {bounded(version)}", "unknown_version")
        return state.model

    @app.get("/v2/health/live", responses=_ok({"type": "object"}))
    async def live():
        return {"live": True}

    @app.get("/v2/health/ready", responses=_ok({"type": "object"}) | _errors(503))
    async def ready():
        reason = state.unready_reason()
        if not reason:
            return {"ready": True}
        return JSONResponse({"error": f"not ready: {reason}"}, 503, headers=RETRY_AFTER)

    @app.get("/v2", responses=_ok({"type": "object"}))
    async def server_metadata():
        return {"name": "fdkd", "version": VERSION, "extensions": ["binary_tensor_data", "model_configuration"]}

    def _metadata(m: LoadedModel) -> dict:
        return {"name": m.name, "versions": [m.version], "platform": m.platform,
                "inputs": [{"name": m.input_name, "datatype": "FP32", "shape": [-1, *m.input_shape]}],
                "outputs": [{"name": m.output_name, "datatype": "FP32", "shape": [-1, m.num_classes]}]}

    @app.get("/v2/models/{model_name}", responses=_ok({"type": "object"}) | _errors(404, 503))
    async def model_metadata(model_name: str):
        return _metadata(_model(model_name))

    @app.get("/v2/models/{model_name}/versions/{version}", responses=_ok({"type": "object"}) | _errors(404, 503))
    async def model_version_metadata(model_name: str, version: str):
        return _metadata(_model(model_name, version))

    def _model_ready(model_name: str, version: str | None):
        if state.draining:
            raise ApiError(503, "server is draining", "draining", RETRY_AFTER)
        m = _model(model_name, version)
        if reason := state.unready_reason():
            raise ApiError(503, f"model not ready: {reason}", "not_ready", RETRY_AFTER)
        return {"name": m.name, "ready": True}

    @app.get("/v2/models/{model_name}/ready", responses=_ok({"type": "object"}) | _errors(404, 503))
    async def model_ready(model_name: str):
        return _model_ready(model_name, None)

    @app.get("/v2/models/{model_name}/versions/{version}/ready",
             responses=_ok({"type": "object"}) | _errors(404, 503))
    async def model_version_ready(model_name: str, version: str):
        return _model_ready(model_name, version)

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
                "instance_group": [{"count": 1, "kind": "KIND_GPU" if m.platform == "tensorrt_plan" else "KIND_CPU"}]}

    @app.get("/v2/models/{model_name}/config", responses=_ok({"type": "object"}) | _errors(404, 503))
    async def model_config(model_name: str):
        return _config(_model(model_name))

    @app.get("/v2/models/{model_name}/versions/{version}/config", responses=_ok({"type": "object"}) | _errors(404, 503))
    async def model_version_config(model_name: str, version: str):
        return _config(_model(model_name, version))

    async def _infer_rows(request: Request, x: np.ndarray) -> np.ndarray:
        """Through the batcher; the client's disconnect before dispatch drops the request."""
        if state.draining:
            raise ApiError(503, "server is draining", "draining", RETRY_AFTER)
        task = asyncio.ensure_future(state.batcher.submit(x))
        while not task.done():
            done, _ = await asyncio.wait({task}, timeout=0.25)
            if not done and await request.is_disconnected():
                task.cancel()
                raise ApiError(499, "client disconnected", "disconnected")
        try:
            logits, queued = task.result()
        except Unavailable as e:  # queue full or timed out, runtime hung, batcher down, shutting down
            raise ApiError(503, str(e), e.reason, RETRY_AFTER) from None
        except Exception:
            log.exception("runtime failed")
            raise ApiError(500, "inference failed in the runtime", "runtime_error") from None
        state.metrics.queue.observe(queued)
        request.scope.setdefault("state", {})["rows"] = int(len(x))
        return logits

    async def _counted(endpoint: str, request: Request, handler):
        started = time.perf_counter()
        outcome, reason = "failure", "internal"
        try:
            response = await handler()
            outcome, reason = "success", "ok"
            return response
        except ApiError as e:
            reason = e.reason
            raise
        except protocol.BadRequest:
            reason = "bad_request"
            raise
        finally:
            state.metrics.requests.labels(endpoint, outcome, reason).inc()
            state.metrics.request_duration.labels(endpoint).observe(time.perf_counter() - started)

    async def _v2_infer(request: Request, model_name: str, version: str | None):
        async def handle():
            m = _model(model_name, version)
            body = await request.body()
            try:
                req = protocol.parse_infer(body, request.headers.get("inference-header-content-length"),
                                           request.headers.get("content-type", ""), input_name=m.input_name,
                                           input_shape=m.input_shape, output_names=[m.output_name],
                                           max_batch=state.settings.max_batch,
                                           max_depth=state.settings.max_json_depth)
            except protocol.BadRequest as e:
                raise ApiError(400, str(e), "bad_request") from None
            if req.id is not None:
                request.scope.setdefault("state", {})["v2_id"] = req.id
            logits = await _infer_rows(request, req.x)
            wanted = req.outputs if req.outputs is not None else [m.output_name]
            payload, head_len = protocol.build_response(m.name, m.version, req.id,
                                                        {n: logits for n in wanted}, req.binary_outputs)
            if head_len is None:
                return Response(payload, media_type="application/json")
            return Response(payload, media_type="application/octet-stream",
                            headers={"Inference-Header-Content-Length": str(head_len)})

        return await _counted("infer", request, handle)

    infer_doc = {"requestBody": {"required": True, "content": {"application/json": {"schema": INFER_REQUEST_SCHEMA}}}}
    infer_responses = _ok(INFER_RESPONSE_SCHEMA) | _errors(400, 401, 404, 413, 500, 503)

    @app.post("/v2/models/{model_name}/infer", openapi_extra=infer_doc, responses=infer_responses)
    async def infer(model_name: str, request: Request):
        return await _v2_infer(request, model_name, None)

    @app.post("/v2/models/{model_name}/versions/{version}/infer", openapi_extra=infer_doc, responses=infer_responses)
    async def infer_version(model_name: str, version: str, request: Request):
        return await _v2_infer(request, model_name, version)

    classify_doc = {"requestBody": {"required": True, "content": {
        "audio/wav": {"schema": {"type": "string", "format": "binary"}},
        "image/png": {"schema": {"type": "string", "format": "binary"}}}}}
    classify_ok = {"type": "object", "required": ["class_name", "class_index", "probabilities"], "properties": {
        "class_name": {"type": "string"}, "class_index": {"type": "integer"},
        "probabilities": {"type": "object", "additionalProperties": {"type": "number"}}}}

    @app.post("/v1/classify", openapi_extra=classify_doc, responses=_ok(classify_ok) | _errors(400, 401, 413, 500, 503))
    async def classify(request: Request):
        """Classify one raw student-modality file (WAV for audio students, PNG/JPEG for image students)."""

        async def handle():
            if not state.ready or state.model is None:
                raise ApiError(503, f"model not ready: {state.not_ready_reason}", "not_ready", RETRY_AFTER)
            m = state.model
            body = await request.body()
            if request.headers.get("content-type", "").startswith("multipart/form-data"):
                body = await _multipart_file(request)
            try:
                x = preprocess(m, body)
            except protocol.BadRequest as e:
                raise ApiError(400, str(e), "bad_request") from None
            logits = (await _infer_rows(request, x))[0].astype(np.float64)
            p = np.exp(logits - logits.max())
            p /= p.sum()
            k = int(p.argmax())
            return {"class_name": m.class_names[k], "class_index": k,
                    "probabilities": {n: float(v) for n, v in zip(m.class_names, p, strict=True)},
                    "model": m.name, "artifact": m.artifact}

        return await _counted("classify", request, handle)

    add_page_routes(app, state)  # GET / (the page, public) and GET /v1/model

    @app.get("/metrics")
    async def metrics():
        return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    # pure ASGI middleware, innermost first: the body cap runs after authentication; CORS runs before it, so
    # a preflight (which carries no key) is answered by CORS and a 401 still carries the CORS headers
    app.add_middleware(BodyLimit, limit=settings.max_body_bytes, timeout_s=settings.body_timeout_s)
    app.add_middleware(ApiKey, key=settings.api_key.get_secret_value() if settings.api_key else None)
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


def preprocess(m: LoadedModel, body: bytes) -> np.ndarray:
    """Raw file bytes -> [1, ...] features with the run's own preprocessing constants (``serving.upload``)."""
    from serving.upload import UploadError, features

    try:
        return features(m.frontend, body)
    except UploadError as e:
        raise protocol.BadRequest(str(e)) from None
