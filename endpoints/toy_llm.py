"""A generative endpoint without a model: it answers with the words of the prompt.

A :class:`GenerativeWorker` (docs/openai.md, "Serving a model"): its sequences share
the decode steps of one loop (continuous batching), so it serves
``/v1/chat/completions`` and ``/v1/completions`` as a real model would, at thousands
of tokens a second: for client code, tests and benchmarks of everything around a
model. A token is a word (and one more between two messages of a chat).

* ``TEMPERATURE`` 0 (deterministic): the words of the last message (or of ``PROMPT``)
  in order; above 0, words drawn from them (``SEED`` repeats a draw).
* It ends after those words (``finish_reason`` ``stop``), at ``MAX_TOKENS``
  (``length``), or at a word in ``STOP``. ``IGNORE_EOS`` (or ``MIN_TOKENS``) goes on
  past the words, from the first again.
* ``STEP_DELAY_MS`` (a setting) is what each decode step takes, whatever the number of
  sequences in it, as on an accelerator.
* Its vocabulary is the first ``VOCABULARY`` words it sees; later new words come back
  as ``<unk>``.
"""

import time

from basic_inference_server.generation import GenerativeWorker

_CONFIG = {
    "STEP_DELAY_MS": 0,
    "VOCABULARY": 100_000,
    "MAX_SEQUENCES": 16,
}
EOS, UNKNOWN, BETWEEN = 0, 1, 2


class ToyLlmWorker(GenerativeWorker):
    eos_token_ids = frozenset({EOS})

    def __init__(self, **kwargs):
        super().__init__(prefix_log="[TOY]", **kwargs)
        self.words = ["", "<unk>", ""]
        self.ids = {}

    def _id(self, word):
        found = self.ids.get(word)
        if found is None:
            if len(self.words) >= self.cfg_vocabulary:
                return UNKNOWN
            found = self.ids[word] = len(self.words)
            self.words.append(word)
        return found

    def _tokenize(self, prompt):
        texts = [m["content"] for m in prompt] if isinstance(prompt, list) else [prompt]
        tokens = []
        for text in texts:
            if tokens:
                tokens.append(BETWEEN)
            tokens.extend(self._id(word) for word in text.split())
        return tokens

    def _step(self, batch):
        if self.cfg_step_delay_ms:
            time.sleep(self.cfg_step_delay_ms / 1000)
        return [self._next(seq) for seq in batch]

    def _next(self, seq):
        if seq.state is None:  # the answer's words: those after the last message's start
            last = len(seq.prompt) - seq.prompt[::-1].index(BETWEEN) if BETWEEN in seq.prompt else 0
            seq.state = seq.prompt[last:] or [UNKNOWN]
        words, made, params = seq.state, len(seq.tokens), seq.params
        if made >= len(words) and not params.ignore_eos and made >= params.min_tokens:
            return EOS
        return words[made % len(words)] if params.greedy else seq.rng.choice(words)

    def _decode(self, tokens):
        return " ".join(self.words[t] for t in tokens)
