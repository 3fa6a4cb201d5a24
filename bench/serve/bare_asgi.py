"""A bare ASGI endpoint: the floor for ``bench/serve/load.py``'s one-client latency target.

No framework, no checks, no batcher: reads the body, decodes the one-row tensor (binary: the
bytes after the header; JSON: orjson, then one numpy conversion), runs the runtime inline on the
event loop, and replies with the same bytes fdkd would (binary: JSON header + raw logits; JSON:
the V2 reply). ``GET /v2/health/ready`` answers 200. Run dir: ``FDKD_SERVE_RUN_DIR``.

    python -m bench.serve.load runs/avdigits --servers bare     # starts it as uvicorn ``bench.serve.bare_asgi:app``
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import orjson

from fdkd.serving.runtime.onnx import OnnxRuntime

RUN = Path(os.environ["FDKD_SERVE_RUN_DIR"])
NAME = json.loads((RUN / "manifest.json").read_text()).get("name", "student")
rt = OnnxRuntime(RUN / "student.onnx", threads=int(os.environ.get("FDKD_BENCH_THREADS", "1")) or None)
SHAPE = [1, *rt.input_shape[1:]]


async def app(scope, receive, send):
    if scope["type"] != "http":
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
        return
    body, more = b"", True
    while more:
        msg = await receive()
        body += msg.get("body", b"")
        more = msg.get("more_body", False)
    if scope["method"] == "GET":
        out, ctype, extra = b'{"ready":true}', b"application/json", []
    else:
        hlen = dict(scope["headers"]).get(b"inference-header-content-length")
        if hlen is not None:
            x = np.frombuffer(body, "<f4", offset=int(hlen)).reshape(SHAPE)
            y = rt(x)
            head = orjson.dumps({"model_name": NAME, "model_version": "1", "outputs": [
                {"name": "logits", "datatype": "FP32", "shape": list(y.shape),
                 "parameters": {"binary_data_size": y.nbytes}}]})
            out, ctype = head + y.tobytes(), b"application/octet-stream"
            extra = [(b"inference-header-content-length", str(len(head)).encode())]
        else:
            x = np.array(orjson.loads(body)["inputs"][0]["data"], np.float32).reshape(SHAPE)
            y = rt(x)
            out = orjson.dumps({"model_name": NAME, "model_version": "1", "outputs": [
                {"name": "logits", "datatype": "FP32", "shape": list(y.shape), "data": y.reshape(-1)}]},
                option=orjson.OPT_SERIALIZE_NUMPY)
            ctype, extra = b"application/json", []
    await send({"type": "http.response.start", "status": 200, "headers": [
        (b"content-type", ctype), (b"content-length", str(len(out)).encode()), *extra]})
    await send({"type": "http.response.body", "body": out})
