"""The HTTP routes (Starlette): OpenAI-compatible completions and models, health, metrics and the page.

Errors are OpenAI's shape, {"error": {"message", "type", "param", "code"}}, with the status that says whose fault it
is: 400 a malformed body or a value out of range, 401 a missing or wrong key, 404 no such route or model, 413 a body
over MAX_BODY, 429 every row busy and the queue full, 503 shutting down. Nothing in a request names a file.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import time
import uuid
from importlib import resources

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request as HTTPRequest
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from .options import APIError, Settings, make_jobs, parse_completion
from .scheduler import Job, QueueFull, Request

MAX_BODY = 1 << 20  # bytes of a request body
ROUTES = {"/", "/health", "/metrics", "/v1/models", "/v1/completions"}


# ------------------------------------------------------------------------------------------------- the routes
def build_app(settings: Settings):
    """The ASGI application: the routes below, wrapped in the request counter."""
    return API(settings).app()


class API:
    """The routes, as methods sharing the settings."""

    def __init__(self, settings: Settings):
        self.settings, self.scheduler, self.metrics = settings, settings.scheduler, settings.metrics

    def check_key(self, request: HTTPRequest) -> None:
        if self.settings.api_key is None:
            return
        given = request.headers.get("authorization", "")
        token = given[7:].strip() if given[:7].lower() == "bearer " else request.headers.get("x-api-key", "")
        if not hmac.compare_digest(token.encode("utf-8", "replace"), self.settings.api_key.encode("utf-8")):
            raise APIError(401, "a missing or wrong API key: send 'Authorization: Bearer KEY'" if token or given
                           else "this server needs an API key: send 'Authorization: Bearer KEY'",
                           code="invalid_api_key")

    async def read_json(self, request: HTTPRequest):
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > MAX_BODY:
            raise APIError(413, f"the request body is over {MAX_BODY} bytes", code="request_too_large")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > MAX_BODY:
                raise APIError(413, f"the request body is over {MAX_BODY} bytes", code="request_too_large")
            chunks.append(chunk)
        try:
            return json.loads(b"".join(chunks).decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise APIError(400, f"the request body is not valid JSON ({exc.__class__.__name__})",
                           code="invalid_json") from None

    def model_card(self) -> dict:
        info = self.scheduler.info
        return {"id": info["name"], "object": "model", "created": int(info.get("saved_at") or 0),
                "owned_by": "charrnn", "step": info.get("step"), "best_val_loss": info.get("best_val_loss"),
                "vocab_size": info.get("vocab_size"), "cell": info.get("cell"),
                "hidden_size": info.get("hidden_size"), "num_layers": info.get("num_layers")}

    async def models(self, request: HTTPRequest):
        self.check_key(request)
        return JSONResponse({"object": "list", "data": [self.model_card()]})

    async def one_model(self, request: HTTPRequest):
        self.check_key(request)
        card = self.model_card()
        if request.path_params["model"] != card["id"]:
            raise APIError(404, f"no model {request.path_params['model']!r}: this server serves {card['id']!r}",
                           "model", "model_not_found")
        return JSONResponse(card)

    async def health(self, request: HTTPRequest):
        if self.settings.stopping:
            return JSONResponse({"status": "shutting down"}, status_code=503)
        info = self.scheduler.info
        return JSONResponse({"status": "ok", "model": info["name"], "step": info.get("step")})

    async def metrics_route(self, request: HTTPRequest):
        self.check_key(request)
        body, content_type = self.metrics.render()
        return Response(body, media_type=content_type)

    async def page(self, request: HTTPRequest):
        html = resources.files("charrnn.serve").joinpath("page.html").read_bytes()
        return Response(html, media_type="text/html; charset=utf-8",
                        headers={"Content-Security-Policy": "default-src 'self'; style-src 'self' 'unsafe-inline'; "
                                                            "script-src 'self' 'unsafe-inline'; img-src 'self' data:"})

    async def favicon(self, request: HTTPRequest):
        return Response(status_code=204)

    async def completions(self, request: HTTPRequest):
        self.check_key(request)
        if self.settings.stopping:
            raise APIError(503, "the server is shutting down", code="shutting_down")
        options = parse_completion(await self.read_json(request), self.settings)
        loop = asyncio.get_running_loop()
        job_list = make_jobs(options, self.scheduler.vocab)
        req = Request(job_list, loop, asyncio.Event())
        try:
            self.scheduler.submit(req)
        except QueueFull as exc:
            if self.settings.stopping:
                raise APIError(503, "the server is shutting down", code="shutting_down") from None
            raise APIError(429, f"the server is busy: {exc}; try again shortly", code="queue_full") from None
        meta = {"id": f"cmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": self.scheduler.info["name"]}
        if options["stream"]:
            return StreamingResponse(self.stream(req, options, meta), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        try:
            await self.wait_done(req, request)
        finally:
            if not req.done:
                self.scheduler.cancel(req)
        if req.cancelled:
            return Response(status_code=499)
        return JSONResponse(self.whole(req, options, meta))

    async def wait_done(self, req: Request, request: HTTPRequest) -> None:
        """Until the request is done; cancels it when the client goes away first."""
        async def gone():
            while True:
                message = await request.receive()
                if message["type"] == "http.disconnect":
                    return

        watcher = asyncio.ensure_future(gone())
        try:
            while not req.done:
                waiter = asyncio.ensure_future(req.event.wait())
                finished, _ = await asyncio.wait({waiter, watcher}, return_when=asyncio.FIRST_COMPLETED)
                if watcher in finished:
                    waiter.cancel()
                    req.cancelled = True
                    return
                req.event.clear()
        finally:
            watcher.cancel()

    def logprob_block(self, job: Job, lo: int, hi: int, offset: int) -> dict:
        tokens = job.chars[lo:hi]
        offsets, pos = [], offset
        for c in tokens:
            offsets.append(pos)
            pos += len(c)
        return {"tokens": tokens, "token_logprobs": [e[0] for e in job.entries[lo:hi]],
                "top_logprobs": [e[1] for e in job.entries[lo:hi]], "text_offset": offsets}

    def usage(self, req: Request, options: dict) -> dict:
        prompt = sum(len(p) for p in options["prompts"])
        completion = sum(len(job.chars) for job in req.jobs)
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}

    def prompt_of(self, options: dict, index: int) -> str:
        return options["prompts"][index // options["n"]]

    def whole(self, req: Request, options: dict, meta: dict) -> dict:
        choices = []
        for i, job in enumerate(req.jobs):
            head = self.prompt_of(options, i) if options["echo"] else ""
            lp = self.logprob_block(job, 0, job.visible, len(head)) if job.logprobs is not None else None
            choices.append({"text": head + "".join(job.chars[: job.visible]), "index": i, "logprobs": lp,
                            "finish_reason": job.finish_reason})
        return {"id": meta["id"], "object": "text_completion", "created": meta["created"], "model": meta["model"],
                "choices": choices, "usage": self.usage(req, options)}

    async def stream(self, req: Request, options: dict, meta: dict):
        read = [0] * len(req.jobs)
        closed = [False] * len(req.jobs)
        head = {"id": meta["id"], "object": "text_completion", "created": meta["created"], "model": meta["model"]}

        def chunk(choice: dict) -> str:
            return "data: " + json.dumps({**head, "choices": [choice]}, ensure_ascii=False) + "\n\n"

        try:
            if options["echo"]:
                yield "".join(chunk({"text": self.prompt_of(options, i), "index": i, "logprobs": None,
                                     "finish_reason": None}) for i in range(len(req.jobs)))
            while True:
                req.event.clear()
                out = []
                for i, job in enumerate(req.jobs):
                    if closed[i]:
                        continue
                    reason = job.finish_reason  # read before visible: the scheduler sets visible first
                    hi = job.visible
                    finished = reason is not None
                    if hi > read[i] or finished:
                        lp = self.logprob_block(job, read[i], hi, 0) if job.logprobs is not None else None
                        if lp is not None:
                            base = sum(len(c) for c in job.chars[: read[i]]) + (
                                len(self.prompt_of(options, i)) if options["echo"] else 0)
                            lp["text_offset"] = [base + o for o in lp["text_offset"]]
                        out.append(chunk({"text": "".join(job.chars[read[i]:hi]), "index": i, "logprobs": lp,
                                          "finish_reason": reason}))
                        read[i] = hi
                        closed[i] = finished
                if out:
                    yield "".join(out)
                if all(closed):
                    break
                await req.event.wait()
            if options["include_usage"]:
                yield "data: " + json.dumps({**head, "choices": [], "usage": self.usage(req, options)}) + "\n\n"
            yield "data: [DONE]\n\n"
        finally:
            if not req.done:
                self.scheduler.cancel(req)

    async def api_error(self, request: HTTPRequest, exc: APIError):
        return exc.response()

    async def server_error(self, request: HTTPRequest, exc: Exception):
        """A bug: the client gets the error shape (500); uvicorn logs the traceback on stderr."""
        return APIError(500, f"internal error ({exc.__class__.__name__})", type="server_error").response()

    async def http_error(self, request: HTTPRequest, exc: HTTPException):
        if exc.status_code == 404:
            return APIError(404, f"no route {request.url.path}", code="not_found").response()
        if exc.status_code == 405:
            return APIError(405, f"{request.method} is not allowed on {request.url.path}",
                            code="method_not_allowed").response()
        return APIError(exc.status_code, str(exc.detail)).response()

    def app(self):
        routes = [
            Route("/", self.page), Route("/favicon.ico", self.favicon), Route("/health", self.health),
            Route("/metrics", self.metrics_route), Route("/v1/models", self.models),
            Route("/v1/models/{model:path}", self.one_model),
            Route("/v1/completions", self.completions, methods=["POST"]),
        ]
        handlers = {APIError: self.api_error, HTTPException: self.http_error, Exception: self.server_error}
        app = Starlette(routes=routes, exception_handlers=handlers)
        return CountRequests(app, self.metrics)


class CountRequests:
    """ASGI middleware: every HTTP answer counted by route (a known one, or "other") and status."""

    def __init__(self, app, metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope.get("path", "")
        route = path if path in ROUTES else "/v1/models" if path.startswith("/v1/models/") else "other"

        async def counted(message):
            if message["type"] == "http.response.start":
                self.metrics.requests.labels(route, str(message["status"])).inc()
            await send(message)

        await self.app(scope, receive, counted)
