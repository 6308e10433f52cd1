"""Peri-LN: normalization placement (pre / post / peri) in Transformers."""
