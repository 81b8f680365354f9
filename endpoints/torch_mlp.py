"""A small real PyTorch model built in code: a seeded MLP classifier.

It runs on CUDA when a GPU is visible to the worker and on the CPU otherwise.
Send ``{"SIGNATURE": "torch_mlp", "INPUT_VALUE": [16 floats]}`` (or a list of such rows).
"""

from basic_inference_server import FlaskWorker

_CONFIG = {
    "IN_FEATURES": 16,
    "HIDDEN": 64,
    "CLASSES": 4,
    "SEED": 42,
}


class TorchMlpWorker(FlaskWorker):
    def __init__(self, **kwargs):
        super().__init__(prefix_log="[MLP]", **kwargs)

    def _load_model(self):
        import torch  # imported in the worker process, after the fork

        self.torch = torch
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        torch.manual_seed(self.cfg_seed)
        self.model = torch.nn.Sequential(
            torch.nn.Linear(self.cfg_in_features, self.cfg_hidden),
            torch.nn.ReLU(),
            torch.nn.Linear(self.cfg_hidden, self.cfg_classes),
        ).to(self.device).eval()
        self.log.P(f"MLP ready on {self.device}")

    def _pre_process(self, inputs):
        rows = inputs.get("INPUT_VALUE")
        if not isinstance(rows, list) or not rows:
            raise ValueError(f"INPUT_VALUE must be a list of {self.cfg_in_features} numbers "
                             f"or a list of such lists")
        if not isinstance(rows[0], list):
            rows = [rows]
        for row in rows:
            if len(row) != self.cfg_in_features or not all(
                    isinstance(x, (int, float)) and not isinstance(x, bool) for x in row):
                raise ValueError(f"each row must hold {self.cfg_in_features} numbers")
        return self.torch.tensor(rows, dtype=self.torch.float32, device=self.device)

    def _predict(self, batch):
        with self.torch.inference_mode():
            return self.torch.softmax(self.model(batch), dim=-1).cpu()

    def _post_process(self, probs):
        return {
            "classes": probs.argmax(dim=-1).tolist(),
            "probabilities": [[round(p, 6) for p in row] for row in probs.tolist()],
            "device": str(self.device),
        }
