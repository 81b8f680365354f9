"""No-op endpoint: answers with what it was sent. Useful for health checks and benchmarks."""

from basic_inference_server import FlaskWorker

_CONFIG = {
    "PREFIX": "",
}


class EchoWorker(FlaskWorker):
    def __init__(self, **kwargs):
        super().__init__(prefix_log="[ECHO]", **kwargs)

    def _pre_process(self, inputs):
        return {k: v for k, v in inputs.items() if k != "SIGNATURE"}

    def _predict(self, prep_inputs):
        return prep_inputs

    def _post_process(self, pred):
        return {"echo": pred, "prefix": self.cfg_prefix}
