"""Start the gateway: ``python run_gateway.py [--host H] [--port P] [--config F] [--endpoints D]``."""

import sys

from basic_inference_server import run_gateway

if __name__ == "__main__":
    sys.exit(run_gateway())
