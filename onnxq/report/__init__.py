"""Measuring a quantized model against its float original."""
