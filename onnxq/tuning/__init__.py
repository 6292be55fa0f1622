"""Output-driven fallback: find the quantization decisions that cost the most output
fidelity and undo only those, until the outputs meet a target."""

from onnxq.tuning.search import SearchResult, search_fallback

__all__ = ["SearchResult", "search_fallback"]
