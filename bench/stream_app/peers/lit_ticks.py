"""bench_stream's LitServe app: ``/ticks`` streams the chunks of ``ticklib.ticks``.

usage: python lit_ticks.py PORT [API_SERVERS]

One inference worker (``workers_per_device=1``, as the project's endpoint has
``NR_WORKERS`` 1) and two uvicorn API servers (the project's front has two workers), as
the peer harness's ``lit_app.py`` runs LitServe; ``stream=True`` on the LitAPI.
"""

import sys

import litserve as ls
from ticklib import params, ticks


class TicksAPI(ls.LitAPI):
    def setup(self, device):
        pass

    def decode_request(self, request):
        return params(request)

    def predict(self, prep):
        yield from ticks(*prep)

    def encode_response(self, outputs):
        yield from outputs


if __name__ == "__main__":
    port = int(sys.argv[1])
    api_servers = int(sys.argv[2]) if len(sys.argv) > 2 else 2
    server = ls.LitServer(TicksAPI(api_path="/ticks", stream=True), accelerator="cpu",
                          devices=1, workers_per_device=1, timeout=60)
    server.run(host="127.0.0.1", port=port, num_api_servers=api_servers,
               log_level="warning", generate_client_file=False)
