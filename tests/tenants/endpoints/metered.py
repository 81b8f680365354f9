"""Test endpoint: reports the units of a request (its field ``n``) as ``USAGE``."""

from basic_inference_server import FlaskWorker


class MeteredWorker(FlaskWorker):
    def _pre_process(self, inputs):
        return float(inputs.get("n", 1))

    def _predict(self, units):
        return units

    def _post_process(self, units):
        return {"done": True, "USAGE": units}
