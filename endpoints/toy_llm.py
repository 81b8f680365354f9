"""A generative endpoint without a model: it answers with the words of the prompt.

It speaks the generation contract (basic_inference_server/generation.py), so it serves
``/v1/chat/completions`` and ``/v1/completions`` (docs/openai.md) as a real model
would, thousands of tokens a second: for client code, tests and benchmarks of
everything around a model. A token is a word.

* ``TEMPERATURE`` 0 (deterministic): the words of the last message (or of ``PROMPT``)
  in order; above 0, words drawn from them (``SEED`` repeats a draw).
* It ends after the prompt's words (``finish_reason`` ``stop``), at ``MAX_TOKENS``
  (``length``), or at a word in ``STOP``. ``IGNORE_EOS`` (or ``MIN_TOKENS``) goes on
  past the words, from the first again.
* ``TOKEN_DELAY_MS`` (a setting) paces the words, as a model's decode steps would.
"""

import random
import time

from basic_inference_server import FlaskWorker
from basic_inference_server.generation import GenerationParams, final_chunk, prompt_of

_CONFIG = {
    "MAX_PROMPT_CHARS": 100_000,
    "MAX_TOKENS_CAP": 4096,  # the most MAX_TOKENS a request may ask for
    "TOKEN_DELAY_MS": 0,
}


class ToyLlmWorker(FlaskWorker):
    def __init__(self, **kwargs):
        super().__init__(prefix_log="[TOY]", **kwargs)

    def _pre_process(self, inputs):
        prompt = prompt_of(inputs, self.cfg_max_prompt_chars)
        params = GenerationParams.of(inputs, self.cfg_max_tokens_cap)
        if isinstance(prompt, list):
            counted = sum(len(m["content"].split()) for m in prompt)
            words = prompt[-1]["content"].split()
        else:
            words = prompt.split()
            counted = len(words)
        return words or ["..."], counted, params

    def _predict(self, prep):
        words, prompt_tokens, params = prep
        draw = random.Random(params.seed)
        delay = self.cfg_token_delay_ms / 1000
        made, reason = 0, "length"
        while made < params.max_tokens:
            past_end = made >= len(words)
            if past_end and not params.ignore_eos and made >= params.min_tokens:
                reason = "stop"
                break
            word = words[made % len(words)] if params.greedy else draw.choice(words)
            if word in params.stop:
                reason = "stop"
                break
            if delay:
                time.sleep(delay)
            made += 1
            yield {"text": word if made == 1 else " " + word}
        yield final_chunk(reason, prompt_tokens, made)

    def _post_process(self, chunk):
        return chunk
