"""What `charrnn export` does: check the request, load the model, write one format atomically.

    export_model("checkpoints/run", "safetensors", "model.safetensors")   # -> ["model.safetensors"]
    export_model(None, "onnx", "model-onnx")                              # -> [".../step.onnx", ".../prefill.onnx"]

User mistakes are UsageError (exit 2): an unknown format, an output that exists without `force`, an input that is no
checkpoint, the `export` extra missing. An ONNX model that does not match torch is ExportCheckError (exit 1).
Nothing is left behind on failure.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
from typing import Optional

from ..errors import NotACheckpointError, UsageError

FORMATS = ("safetensors", "onnx", "web")
log = logging.getLogger("charrnn")


def _require_extra(*modules: str) -> None:
    import importlib

    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError:
            raise UsageError(f"{name} is not installed, which --format onnx needs: pip install \"charrnn[export]\"") \
                from None


def _check_output(output: str, fmt: str, force: bool) -> None:
    if not output:
        raise UsageError("-o/--output must name a file (safetensors) or a directory (onnx, web)")
    if os.path.lexists(output):
        if not force:
            raise UsageError(f"{output} exists: pass --force to replace it")
        if fmt == "safetensors" and os.path.isdir(output):
            raise UsageError(f"{output} is a directory; --format safetensors writes a file")
        if fmt != "safetensors" and not os.path.isdir(output):
            raise UsageError(f"{output} is a file; --format {fmt} writes a directory")


def _load(checkpoint: Optional[str]):
    from ..model.runtime import load_model

    try:
        return load_model(checkpoint)
    except NotACheckpointError as exc:
        raise UsageError(exc.message) from None


def export_model(checkpoint: Optional[str], fmt: str, output: str, force: bool = False) -> list[str]:
    """Export a checkpoint (file, run directory, .safetensors, or None: the newest run) as `fmt` to `output`;
    returns the paths written."""
    if fmt not in FORMATS:
        raise UsageError(f"unknown format {fmt!r}: use {', '.join(FORMATS)}")
    if fmt == "onnx":
        _require_extra("onnx", "onnxruntime")
    _check_output(output, fmt, force)
    ckpt, model, vocab = _load(checkpoint)
    model.float()  # any precision a checkpoint can have is exported as float32
    if fmt == "safetensors":
        from ..store.modelfile import save_model_file

        return [save_model_file(ckpt, model, output)]
    if fmt == "onnx":
        from .onnx_model import export_onnx

        files, report = export_onnx(ckpt, model, vocab)
        worst = max(report["prefill_max_diff"], report["step_max_diff"])
        log.info(f"checked with onnxruntime: logits within {worst:.1e} of torch's over {report['chars']} characters, "
                 f"greedy text equal for {report['greedy_chars']}")
        return write_directory(output, files)
    try:
        from .web import write_web
    except ImportError:
        raise UsageError("--format web is not available in this charrnn") from None
    return _write_web_folder(write_web, ckpt, model, vocab, output)


def _write_web_folder(write_web, ckpt, model, vocab, output: str) -> list[str]:
    """write_web builds a new folder whole; with --force an existing one is swapped out only once the new one is
    complete (a failure leaves the old folder as it was)."""
    from ..store.fileio import TEMP_PREFIX, write_error

    output = os.path.abspath(output)
    if not os.path.isdir(output):
        try:
            return list(write_web(ckpt, model, vocab, output))
        except OSError as exc:
            raise write_error(exc, output, "web folder") from None
    parent, base = os.path.dirname(output), os.path.basename(output)[:100]
    fresh = os.path.join(parent, f"{TEMP_PREFIX}{base}.{secrets.token_hex(4)}")
    old = os.path.join(parent, f"{TEMP_PREFIX}{base}.old.{secrets.token_hex(4)}")
    try:
        written = write_web(ckpt, model, vocab, fresh)
        os.rename(output, old)
        os.rename(fresh, output)
    except OSError as exc:
        shutil.rmtree(fresh, ignore_errors=True)
        if os.path.isdir(old) and not os.path.exists(output):
            os.rename(old, output)
        raise write_error(exc, output, "web folder") from None
    except BaseException:
        shutil.rmtree(fresh, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)
    return [os.path.join(output, os.path.relpath(path, fresh)) for path in written]


def write_directory(output: str, files: dict) -> list[str]:
    """Write {name: bytes} into the directory `output`: a new one appears whole (built under a temp name, then
    renamed); an existing one (--force) gets each file replaced atomically. On failure nothing new is left."""
    from ..store.fileio import atomic_write, write_new_directory

    output = os.path.abspath(output)
    if os.path.isdir(output):
        for name, data in files.items():
            with atomic_write(os.path.join(output, name), what="ONNX model") as f:
                f.write(data)
        return [os.path.join(output, name) for name in files]
    write_new_directory(output, files, what="ONNX directory")
    return [os.path.join(output, name) for name in files]
