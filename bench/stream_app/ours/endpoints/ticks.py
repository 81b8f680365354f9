"""bench_stream's endpoint: streams the chunks of ``ticklib.ticks`` (peers/ticklib.py)."""

from ticklib import params, ticks

from basic_inference_server import FlaskWorker


class TicksWorker(FlaskWorker):
    def _pre_process(self, inputs):
        return params(inputs)

    def _predict(self, prep):
        return ticks(*prep)

    def _post_process(self, chunk):
        return chunk
