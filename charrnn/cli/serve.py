"""`charrnn serve`: a model over HTTP (serve/: an OpenAI-compatible API, a page to try it, metrics)."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from .common import Checkpoint, guarded, setup_logging


def serve(
    checkpoint: Checkpoint = None,
    host: Annotated[str, typer.Option(help="Address to listen on; 0.0.0.0 for every interface (set --api-key then).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on; 0 picks a free one (the start-up line names it).")] = 8080,
    api_key: Annotated[Optional[str], typer.Option(envvar="CHARRNN_API_KEY", show_envvar=True, help="Require 'Authorization: Bearer KEY' on /v1/* and /metrics.")] = None,
    max_streams: Annotated[int, typer.Option(help="Rows generated together (one per choice); more requests wait in the queue.")] = 16,
    max_queue: Annotated[int, typer.Option(help="Requests that may wait for a row; beyond that, 429.")] = 64,
    max_chars: Annotated[int, typer.Option(help="Largest max_tokens (characters) a request may ask for.")] = 4096,
    watch: Annotated[bool, typer.Option("--watch", help="Reload the checkpoint when training replaces it (streams in flight go on).")] = False,
    device: Annotated[str, typer.Option(help="cpu, cuda, cuda:N, mps or auto.")] = "cpu",
    threads: Annotated[Optional[int], typer.Option(help="CPU threads for the model (default: torch's and numba's own).")] = None,
    name: Annotated[Optional[str], typer.Option("--name", help="Model name in the API (default: the run directory's name).")] = None,
):
    """Serve a model over HTTP: an OpenAI-compatible API, a page to try it, metrics (see docs/serve.md).

    Example: charrnn serve checkpoints/my-run --port 8080, then open http://127.0.0.1:8080/
    """
    setup_logging(False)

    def go():
        from ..serve.server import serve as serve_fn

        serve_fn(checkpoint, host=host, port=port, api_key=api_key, max_streams=max_streams, max_queue=max_queue,
                 max_chars=max_chars, watch=watch, device=device, threads=threads, name=name)

    guarded(go)
