"""A completion request's options, checked (OpenAI's fields, charrnn's limits), and the jobs they make.

APIError is an answer in OpenAI's error shape with its status; parse_completion raises it (400) naming the first
bad field. Nothing in a request names a file.
"""

from __future__ import annotations

import math
from typing import Optional

from starlette.responses import JSONResponse

from ..inference.sampling import MAX_TEMPERATURE, MIN_TEMPERATURE
from .scheduler import Job

MAX_STOP = 4  # stop sequences per request (as OpenAI)
MAX_LOGPROBS = 20  # alternatives per character
INT64 = (-(2**63), 2**64 - 1)  # a seed: any 64-bit integer, signed or not (torch takes both)


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
