"""A fork server for tests that start the CLI many times (the SIGKILL loop).

Starting Python and importing torch costs seconds per process, and the kill loop starts over 50 trainers. This
server imports torch and charrnn once, then forks one child per request; the child runs the real entry point
(`charrnn.cli.commands.main`) with the requested argv and environment, its stderr in a file and stdout on /dev/null, and
exits with the CLI's exit code. Each child is a separate process that can be SIGKILLed like any other.

Protocol (one JSON object a line on stdin, one answer a line on stdout):
    {"argv": [...], "env": {...}, "stderr": PATH, "hooks": {...}}  ->  {"pid": PID}
    {"wait": PID}                                                  ->  {"status": exit code, or -signal}

"hooks" (optional) names faults the child installs before it runs the CLI (see tests/faults.py), e.g.
{"slow_write": 0.003}.
"""

from __future__ import annotations

import json
import os
import sys


def _child(request: dict) -> None:
    code = 1
    try:
        os.environ.update(request.get("env", {}))
        if request.get("hooks"):
            import faults  # tests/faults.py, beside this file

            faults.install(request["hooks"])
        null = os.open(os.devnull, os.O_RDWR)
        os.dup2(null, 0)
        os.dup2(null, 1)
        err = os.open(request["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(err, 2)
        sys.argv = ["charrnn", *request["argv"]]
        from charrnn.cli.commands import main

        try:
            main()
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def serve() -> None:
    import torch  # noqa: F401  (the point: imported once, before any fork)

    import tqdm  # noqa: F401

    import charrnn.cli.commands  # noqa: F401
    import charrnn.data.cache  # noqa: F401
    import charrnn.inference.evaluation  # noqa: F401
    import charrnn.model.network  # noqa: F401
    import charrnn.model.runtime  # noqa: F401
    import charrnn.training.launch  # noqa: F401

    out = sys.stdout
    for line in sys.stdin:
        request = json.loads(line)
        if "wait" in request:
            _, status = os.waitpid(request["wait"], 0)
            code = os.waitstatus_to_exitcode(status)
            out.write(json.dumps({"status": code}) + "\n")
        else:
            pid = os.fork()
            if pid == 0:
                _child(request)
            out.write(json.dumps({"pid": pid}) + "\n")
        out.flush()


if __name__ == "__main__":
    serve()
