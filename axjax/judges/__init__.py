"""Judges of steered generations: an OpenAI-compatible endpoint, a local axjax model, an offline proxy."""
