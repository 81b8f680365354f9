"""Generative endpoints: the contract with the OpenAI routes (:mod:`.contract`), and
:class:`GenerativeWorker`, whose decode steps run over a batch that sequences join and
leave between steps (continuous batching, :mod:`.engine`)."""

from .contract import DEFAULT_MAX_TOKENS, GenerationParams, final_chunk, prompt_of
from .engine import Engine, Sequence
from .worker import GenerativeWorker

__all__ = ["DEFAULT_MAX_TOKENS", "Engine", "GenerationParams", "GenerativeWorker", "Sequence",
           "final_chunk", "prompt_of"]
