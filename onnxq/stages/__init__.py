"""The stages of ``onnxq.quantize``, one module each, in pipeline order: inputs →
prepare → ranges → weights → replan (plan, rewrite, graph passes) → check → save →
evaluate. :mod:`onnxq.pipeline` lists them."""
