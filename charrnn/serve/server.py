"""The `charrnn serve` process: load the checkpoint, bind the socket, run uvicorn with the scheduler thread beside
it, reload on --watch, and stop cleanly on SIGINT/SIGTERM (exit 0)."""

from __future__ import annotations

import os
import signal
import socket
import sys
import threading
from typing import Callable, Optional

from ..errors import CharrnnError, UsageError

EXIT_CANT_LISTEN = 75  # the address cannot be bound: in use or not allowed (sysexits EX_TEMPFAIL: try again/another)
DEFAULT_CHARS = 256  # max_tokens when a request gives none
WATCH_INTERVAL = 1.0  # seconds between looks at the checkpoint file under --watch


class ListenError(CharrnnError):
    exit_code = EXIT_CANT_LISTEN


def _say(line: str) -> None:
    sys.stderr.write(f"charrnn: {line}\n")
    sys.stderr.flush()


def model_info(path: str, ckpt: dict, model, name: Optional[str] = None) -> dict:
    progress = ckpt.get("progress") or {}
    if name is None:
        base = os.path.basename(path)
        name = (os.path.basename(os.path.dirname(os.path.abspath(path))) or base) if (
            base in ("latest.pt", "best.pt") or base.startswith("step-")) else os.path.splitext(base)[0]
    config = model.config
    return {"name": name, "step": progress.get("step"), "best_val_loss": progress.get("best_val_loss"),
            "saved_at": ckpt.get("saved_at"), "vocab_size": config.vocab_size, "cell": config.cell,
            "hidden_size": config.hidden_size, "num_layers": config.num_layers}


def _load(path: str):
    from ..store.checkpoint import load_checkpoint
    from ..model.runtime import build_model

    ckpt = load_checkpoint(path)
    model, vocab = build_model(ckpt)
    return ckpt, model, vocab


def _signature(path: str):
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size, st.st_ino


def bind(host: str, port: int) -> socket.socket:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError) as exc:
        raise UsageError(f"--host {host}: cannot resolve it ({exc})") from None
    family, _, _, _, address = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a restart need not wait out TIME_WAIT
        sock.bind(address)
        sock.listen(256)
    except OSError as exc:
        sock.close()
        raise ListenError(f"cannot listen on {host}:{port}: {exc.strerror or exc} (try another --port)") from None
    sock.set_inheritable(True)
    return sock


def check_options(max_streams: int, max_queue: int, max_chars: int, port: int, threads: Optional[int]) -> None:
    if not 1 <= max_streams <= 4096:
        raise UsageError(f"--max-streams must be between 1 and 4096, not {max_streams}")
    if max_queue < 0:
        raise UsageError(f"--max-queue must be >= 0, not {max_queue}")
    if max_chars < 1:
        raise UsageError(f"--max-chars must be >= 1, not {max_chars}")
    if not 0 <= port <= 65535:
        raise UsageError(f"--port must be between 0 and 65535, not {port}")
    if threads is not None and threads < 1:
        raise UsageError(f"--threads must be >= 1, not {threads}")


def _import_extra():
    """uvicorn, once starlette and prometheus_client are known to import; a UsageError naming the extra if not."""
    try:
        import prometheus_client  # noqa: F401
        import starlette  # noqa: F401
        import uvicorn
    except ImportError as exc:
        raise UsageError(f"charrnn serve needs the serve extra ({exc.name} is missing): "
                         f"pip install \"charrnn[serve]\"") from None
    return uvicorn


def _set_threads(threads: Optional[int]) -> None:
    if threads is None:
        return
    import torch

    torch.set_num_threads(threads)
    try:
        import numba

        numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    except ImportError:
        pass


def _watch(path: str, seen, scheduler, name: Optional[str], stop: threading.Event, say) -> None:
    """Reload `path` whenever its size, time or inode changes, until `stop` is set (the --watch thread)."""
    while not stop.wait(WATCH_INTERVAL):
        now = _signature(path)
        if now is None or now == seen:
            continue
        seen = now
        try:
            ckpt, model, vocab = _load(path)
        except CharrnnError as exc:
            say(f"--watch: kept step {scheduler.info.get('step')}: {exc.message}")
            continue
        info = model_info(path, ckpt, model, name)
        scheduler.replace_model(model, vocab, info)
        say(f"reloaded {info['name']} (step {info.get('step')})")


def _server(uvicorn, app, settings, stop_watch: threading.Event, ready: str, say):
    """A uvicorn server that says `ready` once it answers, and on SIGINT/SIGTERM stops the scheduler and exits 0
    (uvicorn by default raises the signal again once it has shut down)."""
    from .scheduler import SHUTDOWN_GRACE

    class Server(uvicorn.Server):
        def handle_exit(self, sig, frame):
            settings.stopping = True
            settings.scheduler.stop()
            stop_watch.set()
            if self.should_exit and sig == signal.SIGINT:
                self.force_exit = True
            self.should_exit = True

        async def startup(self, sockets=None):
            await super().startup(sockets)
            say(ready)

    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off", ws="none",
                            timeout_graceful_shutdown=int(SHUTDOWN_GRACE) + 5, server_header=False)
    return Server(config)


def serve(checkpoint: Optional[str] = None, host: str = "127.0.0.1", port: int = 8080,
          api_key: Optional[str] = None, max_streams: int = 16, max_queue: int = 64, max_chars: int = 4096,
          watch: bool = False, device: str = "cpu", threads: Optional[int] = None, name: Optional[str] = None,
          say: Callable[[str], None] = _say) -> None:
    """Serve a checkpoint until SIGINT/SIGTERM. `say` gets the lines meant for the operator (stderr)."""
    check_options(max_streams, max_queue, max_chars, port, threads)
    api_key = api_key or None  # CHARRNN_API_KEY= (empty) means no key
    uvicorn = _import_extra()

    from ..store.checkpoint import resolve_checkpoint
    from ..model.runtime import resolve_device
    from .app import Settings, build_app
    from .metrics import Metrics
    from .scheduler import SHUTDOWN_GRACE, Scheduler

    dev = resolve_device(device)
    path = resolve_checkpoint(checkpoint)
    seen = _signature(path)
    ckpt, model, vocab = _load(path)
    _set_threads(threads)
    info = model_info(path, ckpt, model, name)
    sock = bind(host, port)
    metrics = Metrics()
    metrics.model_step.set(info.get("step") or 0)
    scheduler = Scheduler(model, vocab, info, max_streams, max_queue, dev, metrics)
    settings = Settings(scheduler, metrics, api_key, max_chars, DEFAULT_CHARS)
    shown_host = f"[{host}]" if ":" in host else host
    if api_key is None and host not in ("127.0.0.1", "localhost", "::1"):
        say(f"warning: listening on {host} without --api-key: anyone who can reach this machine can use the model")
    stop_watch = threading.Event()
    where = "" if dev.type == "cpu" else f", {dev}"
    ready = f"serving {info['name']} (step {info.get('step')}{where}) on http://{shown_host}:{sock.getsockname()[1]}"
    server = _server(uvicorn, build_app(settings), settings, stop_watch, ready, say)
    scheduler.start()
    if watch:
        threading.Thread(target=_watch, args=(path, seen, scheduler, name, stop_watch, say),
                         name="charrnn-serve-watch", daemon=True).start()
    try:
        server.run(sockets=[sock])
    finally:
        stop_watch.set()
        scheduler.stop()
        scheduler.join(SHUTDOWN_GRACE + 5)
        sock.close()
