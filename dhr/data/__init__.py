"""Dataset layer: layout, tags, palettes, transforms, datasets, datamodules, synthetic generator.

Nothing is imported here: ``layout``, ``tags``, ``palette`` and ``synthetic`` are torch-free
and the evaluator imports them directly, so it starts fast.
"""
