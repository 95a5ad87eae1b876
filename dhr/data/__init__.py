"""Dataset layer: layout, tags, palettes, transforms, datasets, datamodule, synthetic generator.

Only the torch-free modules are imported eagerly by nothing; import submodules directly.
"""
