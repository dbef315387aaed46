"""The floor: the least a Python HTTP predict can do, as a bare WSGI app.

    POST /predict/<model>   {"inputs": [[...], ...]} -> {"predictions": [...]}
                            orjson parse, numpy array, model.predict, orjson dump.
    POST /nopredict         parse the same body and answer {"predictions": []}: the HTTP
                            server's and the JSON round trip's own cost.

No framework, no auth, no validation, no logging: what Modelhost adds on top of this is the
platform's overhead. Served by the same HTTP server and worker count as Modelhost's web
process in the same run (granian via platform_site/serve.py, as Modelhost; gunicorn and uvicorn in bench/server_choice.py).
Models come from FLOOR_MODELS=name=path.joblib,... (files we made ourselves in
bench/models.py, so a plain joblib.load is fine here, unlike on the platform).
"""

from __future__ import annotations

import os

import joblib
import numpy as np
import orjson

MODELS = {
    name: joblib.load(path)
    for name, path in (item.split("=", 1) for item in os.environ.get("FLOOR_MODELS", "").split(",") if item)
}
_JSON = [("Content-Type", "application/json")]


def _answer(start_response, status: str, payload: bytes):
    start_response(status, [*_JSON, ("Content-Length", str(len(payload)))])
    return [payload]


def app(environ, start_response):
    length = int(environ.get("CONTENT_LENGTH") or 0)
    raw = environ["wsgi.input"].read(length) if length else b""
    path = environ.get("PATH_INFO", "")
    if path == "/healthz":
        return _answer(start_response, "200 OK", b'{"ok":true}')
    if environ["REQUEST_METHOD"] != "POST":
        return _answer(start_response, "405 Method Not Allowed", b'{"error":"POST"}')
    body = orjson.loads(raw)
    if path == "/nopredict":
        x = np.asarray(body["inputs"], dtype=np.float64)
        return _answer(start_response, "200 OK", orjson.dumps({"predictions": [], "rows": len(x)}))
    if path.startswith("/predict/"):
        model = MODELS.get(path[len("/predict/") :])
        if model is None:
            return _answer(start_response, "404 Not Found", b'{"error":"no such model"}')
        x = np.asarray(body["inputs"], dtype=np.float64)
        return _answer(
            start_response, "200 OK", orjson.dumps({"predictions": model.predict(x)}, option=orjson.OPT_SERIALIZE_NUMPY)
        )
    return _answer(start_response, "404 Not Found", b'{"error":"not found"}')


application = app


class _AnsweredOnLoop:
    """The same application, offering platform_site.rsgi its answers on the event loop (an
    `on_loop` method, as platform_site.dispatch has): bench/slow_clients.py --floor."""

    def __call__(self, environ, start_response):
        return app(environ, start_response)

    def on_loop(self, environ, start_response):
        return app(environ, start_response)


class _MinimalRSGI:
    """The least an RSGI application does, awaiting the body and answering: the RSGI interface's
    own cost, for bench/slow_clients.py --floor."""

    async def __rsgi__(self, scope, protocol):
        await protocol()
        protocol.response_bytes(200, [("content-type", "application/json")], b'{"predictions":[],"rows":1}')


loop_app = _AnsweredOnLoop()
rsgi_app = _MinimalRSGI()
