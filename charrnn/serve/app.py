"""The HTTP routes (Starlette): OpenAI-compatible completions and models, health, metrics and the page.

Errors are OpenAI's shape, {"error": {"message", "type", "param", "code"}}, with the status that says whose fault it
is: 400 a malformed body or a value out of range, 401 a missing or wrong key, 404 no such route or model, 413 a body
over MAX_BODY, 429 every row busy and the queue full, 503 shutting down. Nothing in a request names a file.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import math
import time
import uuid
from importlib import resources
from typing import Optional

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request as HTTPRequest
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from ..inference.sampling import MAX_TEMPERATURE, MIN_TEMPERATURE
from .scheduler import Job, QueueFull, Request

MAX_BODY = 1 << 20  # bytes of a request body
MAX_STOP = 4  # stop sequences per request (as OpenAI)
MAX_LOGPROBS = 20  # alternatives per character
INT64 = (-(2**63), 2**64 - 1)  # a seed: any 64-bit integer, signed or not (torch takes both)
ROUTES = {"/", "/health", "/metrics", "/v1/models", "/v1/completions"}


class APIError(Exception):
    def __init__(self, status: int, message: str, param: Optional[str] = None, code: Optional[str] = None,
                 type: Optional[str] = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.type = type or {401: "authentication_error", 404: "not_found_error", 429: "rate_limit_error",
                             503: "server_unavailable"}.get(status, "invalid_request_error")

    def response(self) -> JSONResponse:
        body = {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}
        headers = {"WWW-Authenticate": "Bearer"} if self.status == 401 else None
        return JSONResponse(body, status_code=self.status, headers=headers)


class Settings:
    """What the routes need: the scheduler (which holds the model's info), metrics, limits and the key."""

    def __init__(self, scheduler, metrics, api_key: Optional[str], max_chars: int, default_chars: int):
        self.scheduler, self.metrics = scheduler, metrics
        self.api_key = api_key
        self.max_chars, self.default_chars = max_chars, min(default_chars, max_chars)
        self.stopping = False


# ------------------------------------------------------------------------------------------------- validation
def _type_name(value) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "an array",
            dict: "an object", type(None): "null"}.get(type(value), type(value).__name__)


def _int(body: dict, name: str, default, low=None, high=None, note: str = ""):
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise APIError(400, f"'{name}' must be an integer, not {_type_name(value)}", name)
    if (low is not None and value < low) or (high is not None and value > high):
        raise APIError(400, f"'{name}' must be between {low} and {high}{note}, not {value}", name)
    return value


def _number(body: dict, name: str, default):
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise APIError(400, f"'{name}' must be a number, not {_type_name(value)}", name)
    if not math.isfinite(value):
        raise APIError(400, f"'{name}' must be a finite number", name)
    return float(value)


def _bool(body: dict, name: str, default: bool = False) -> bool:
    value = body.get(name)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise APIError(400, f"'{name}' must be a boolean, not {_type_name(value)}", name)
    return value


def parse_completion(body, settings: Settings) -> dict:
    """The options of a completion request, checked; APIError(400) names the first bad field."""
    if not isinstance(body, dict):
        raise APIError(400, f"the request body must be a JSON object, not {_type_name(body)}")
    prompt = body.get("prompt", "")
    if prompt is None:
        prompt = ""
    prompts = [prompt] if isinstance(prompt, str) else prompt
    if not isinstance(prompts, list) or not prompts or not all(isinstance(p, str) for p in prompts):
        raise APIError(400, "'prompt' must be a string or a non-empty array of strings (token ids are not "
                            "supported: a character model's tokens are characters)", "prompt")
    max_tokens = _int(body, "max_tokens", settings.default_chars, 0, settings.max_chars,
                      " (characters; the server's --max-chars)")
    temperature = _number(body, "temperature", 1.0)
    if temperature != 0 and not MIN_TEMPERATURE <= temperature <= MAX_TEMPERATURE:
        raise APIError(400, f"'temperature' must be 0 (greedy) or between {MIN_TEMPERATURE} and "
                            f"{MAX_TEMPERATURE}, not {temperature:g}", "temperature")
    top_p = _number(body, "top_p", None)
    if top_p is not None and not 0 < top_p <= 1:
        raise APIError(400, f"'top_p' must be above 0 and at most 1, not {top_p:g}", "top_p")
    top_k = _int(body, "top_k", None, -1, None)
    top_k = None if top_k is not None and top_k <= 0 else top_k  # 0 or -1: no top-k (as llama.cpp)
    n = _int(body, "n", 1, 1, settings.scheduler.max_streams, " (the server's --max-streams)")
    if n * len(prompts) > settings.scheduler.max_streams:
        raise APIError(400, f"{len(prompts)} prompts x n={n} is more than the server's --max-streams "
                            f"({settings.scheduler.max_streams})", "n")
    stop = body.get("stop")
    stops = [] if stop is None else [stop] if isinstance(stop, str) else stop
    if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops) or len(stops) > MAX_STOP:
        raise APIError(400, f"'stop' must be a non-empty string or an array of at most {MAX_STOP} of them", "stop")
    seed = _int(body, "seed", None, *INT64, " (a 64-bit integer)")
    logprobs = _int(body, "logprobs", None, 0, MAX_LOGPROBS)
    stream = _bool(body, "stream")
    echo = _bool(body, "echo")
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise APIError(400, "'stream_options' must be an object", "stream_options")
    include_usage = _bool(options or {}, "include_usage")
    for name, neutral in (("presence_penalty", 0), ("frequency_penalty", 0), ("best_of", 1)):
        value = body.get(name)
        if value is not None and value != neutral:
            raise APIError(400, f"'{name}' is not supported by charrnn serve", name)
    for name in ("suffix", "logit_bias"):
        if body.get(name):
            raise APIError(400, f"'{name}' is not supported by charrnn serve", name)
    vocab = settings.scheduler.vocab
    unknown = sorted(set("".join(prompts) + "".join(stops)) - set(vocab.index))
    if unknown:
        from ..data.vocab import describe_chars

        where = "prompt" if set(unknown) & set("".join(prompts)) else "stop"
        raise APIError(400, f"the {where} has characters not in the model's vocabulary: {describe_chars(unknown)}",
                       where, "unknown_characters")
    return dict(prompts=prompts, max_tokens=max_tokens, temperature=temperature, top_p=top_p, top_k=top_k, n=n,
                stop=stops, seed=seed, logprobs=logprobs, stream=stream, echo=echo, include_usage=include_usage)


def make_jobs(options: dict, vocab) -> list[Job]:
    """One job per prompt and choice, in OpenAI's order (prompt-major); choice i of a seeded request draws from
    seed + i (mod 2^64), so each choice is reproducible on its own."""
    start = "\n" if "\n" in vocab.index else vocab.chars[0]
    jobs = []
    for p, prompt in enumerate(options["prompts"]):
        ids = [vocab.index[c] for c in (prompt or start)]
        for k in range(options["n"]):
            index = p * options["n"] + k
            seed = options["seed"]
            seed = None if seed is None else (seed + index) % 2**64
            jobs.append(Job(ids, options["max_tokens"], options["temperature"], options["top_k"],
                            options["top_p"], options["stop"], options["logprobs"], seed))
    return jobs


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
