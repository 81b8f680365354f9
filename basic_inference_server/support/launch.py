"""Run a support script so that it dies with the manager.

``python -m basic_inference_server.support.launch --parent PID script.py ARGS...``
sets the parent-death signal, then runs the script as ``__main__`` in this same
interpreter (no second Python start-up), exactly as ``python script.py ARGS`` would.
"""

from __future__ import annotations

import argparse
import os
import runpy
import signal
import sys

from ..procutil import die_with_parent


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m basic_inference_server.support.launch")
    parser.add_argument("--parent", type=int, required=True)
    parser.add_argument("script")
    parser.add_argument("args", nargs=argparse.REMAINDER)
    opts = parser.parse_args()
    die_with_parent(signal.SIGKILL, expected_parent=opts.parent)
    sys.argv = [opts.script, *opts.args]
    sys.path.insert(0, os.path.dirname(os.path.abspath(opts.script)))
    runpy.run_path(opts.script, run_name="__main__")


if __name__ == "__main__":
    main()
