"""Dense CRF (``dhr-method.md`` §7): one parameter set, one de-normalisation, two backends.

Unary -log(clip(p, clip, 1)) with no renormalisation; Gaussian (sxy, compat) and bilateral
(sxy, srgb, compat) Potts terms on the uint8 RGB image; ``iterations`` mean-field steps; Q sums
to 1 per pixel. Every caller (relabelling, DHR masks, CAM seeds, CAUSE evaluation, prediction)
reads the same :class:`CRFParams`, built from the ``crf`` config node, and runs through a
:class:`CRFRunner`. ``crf.backend`` picks the arithmetic: ``torch`` (``mean_field``: a batched
permutohedral lattice on any device, written from pydensecrf's source) or ``pydensecrf`` (the C++
library, CPU worker processes); ``auto`` takes torch on a GPU, pydensecrf on the CPU when installed.
"""

from dhr.ops.crf.image import denormalize
from dhr.ops.crf.params import BACKENDS, CRFParams, pydensecrf_installed
from dhr.ops.crf.runner import (
           CRFRunner,
           PassThroughCRF,
           crf_refine_labels,
           dense_crf,
           dense_crf_batch,
           labels_to_probs,
)

__all__ = ["BACKENDS", "CRFParams", "CRFRunner", "PassThroughCRF", "crf_refine_labels", "denormalize", "dense_crf",
           "dense_crf_batch", "labels_to_probs", "pydensecrf_installed"]
