"""`charrnn serve`: a trained model as an HTTP service (OpenAI-compatible completions, a page, Prometheus metrics).

This package owns the HTTP routes (app.py), a request's options and their checks (options.py), the
continuous-batching scheduler thread that owns the model (scheduler.py), the batch-invariant steppers it drives
(rows.py, _rowkernels.py), the metrics (metrics.py), the built-in page (page.html) and the process around them
(server.py). It imports the inference code (inference/sampling.py's sampling rule, runtime.load_model,
checkpoint) and never the training code. starlette, uvicorn and prometheus_client (the `serve` extra) are imported
only by `charrnn serve`, never by `import charrnn` or the other commands.
"""
