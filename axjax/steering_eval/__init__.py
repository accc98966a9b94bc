"""Steering evaluation (AxBench section 4.2): rows to generate, steered generation, scores, factor selection,
reports. Named apart from `axjax.steering`, the intervention constructor."""
