"""dhr: DHR weakly-supervised semantic segmentation as a Hydra + PyTorch Lightning framework.

Importing the package is cheap on purpose: torch and Lightning load only in the modules that
need them, so the evaluator and ``--help`` start fast.
"""

__version__ = "0.1.0"
