"""Streaming endpoint: sends the words of TEXT one chunk each, ``DELAY_MS`` apart.

``_predict`` returns a generator, so the endpoint streams: SSE with
``Accept: text/event-stream`` or ``"STREAM": true``, NDJSON with
``Accept: application/x-ndjson``, otherwise every chunk gathered into one answer. The
last chunk reports the words sent as ``USAGE`` (see docs/endpoints.md, "Streaming").
A client that leaves closes the generator after the word in the making.
"""

import time

from basic_inference_server import FlaskWorker

_CONFIG = {
    "MAX_TEXT": 10_000,  # characters
    "MAX_DELAY_MS": 1000,  # between two words
    "MAX_STREAM_MS": 60_000,  # DELAY_MS times the words
}


class WordsWorker(FlaskWorker):
    def __init__(self, **kwargs):
        super().__init__(prefix_log="[WORDS]", **kwargs)

    def _pre_process(self, inputs):
        text = inputs.get("TEXT", "")
        if not isinstance(text, str) or len(text) > self.cfg_max_text:
            raise ValueError(f"TEXT must be a string of at most {self.cfg_max_text} characters")
        delay = inputs.get("DELAY_MS", 0)
        if isinstance(delay, bool) or not isinstance(delay, (int, float)) \
                or not 0 <= delay <= self.cfg_max_delay_ms:
            raise ValueError(f"DELAY_MS must be a number from 0 to {self.cfg_max_delay_ms}")
        words = text.split()
        if delay * len(words) > self.cfg_max_stream_ms:
            raise ValueError(f"DELAY_MS times the words of TEXT must be at most "
                             f"{self.cfg_max_stream_ms} ms")
        return words, delay / 1000

    def _predict(self, prep):
        words, delay = prep
        for index, word in enumerate(words):
            if index and delay:
                time.sleep(delay)
            chunk = {"index": index, "word": word}
            if index == len(words) - 1:
                chunk["USAGE"] = len(words)
            yield chunk

    def _post_process(self, chunk):
        return chunk
