"""Dense CRF op on each installed backend: posteriors normalised, edges respected, the runner's
batches equal single calls, the release's de-normalisation on every level, parameters validated
with the key named, and the backend chosen as documented."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dhr.errors import DHRError
from dhr.ops.crf import (
    CRFParams,
    CRFRunner,
    denormalize,
    dense_crf,
    dense_crf_batch,
    pydensecrf_installed,
)

PARAMS = CRFParams.defaults()
BACKENDS = ["torch", pytest.param("pydensecrf", marks=pytest.mark.skipif(
    not pydensecrf_installed(), reason="pydensecrf is the [crf] extra"))]
needs_pydensecrf = pytest.mark.skipif(not pydensecrf_installed(), reason="pydensecrf is the [crf] extra")


def two_region_case(seed: int = 0, h: int = 48, w: int = 64):
    rng = np.random.default_rng(seed)
    image = np.zeros((h, w, 3), np.uint8)
    image[:, : w // 2] = (200, 40, 40)
    image[:, w // 2 :] = (40, 40, 200)
    truth = np.zeros((h, w), int)
    truth[:, w // 2 :] = 1
    p1 = np.clip(truth * 0.6 + 0.2 + rng.normal(0, 0.25, (h, w)), 0.01, 0.99)  # noisy, but informative
    return image, np.stack([1 - p1, p1]).astype(np.float32), truth


@pytest.mark.parametrize("backend", BACKENDS)
def test_posteriors_sum_to_one_and_clean_up_noise(backend):
    image, probs, truth = two_region_case()
    q = dense_crf(image, probs, PARAMS, backend=backend)
    assert isinstance(q, np.ndarray) and q.dtype == np.float32
    assert q.shape == probs.shape and np.allclose(q.sum(0), 1, atol=1e-4)
    before = (probs.argmax(0) == truth).mean()
    after = (q.argmax(0) == truth).mean()
    assert before < 0.97 and after > 0.99 and after > before


@pytest.mark.parametrize("backend", BACKENDS)
def test_runner_batches_equal_single_calls(backend):
    """Crops of two sizes and 2-5 labels in one call: grouped by size, labels padded, split in chunks."""
    rng = np.random.default_rng(1)
    cases = []
    for i, (h, w, k) in enumerate([(48, 64, 2), (40, 40, 4), (48, 64, 5), (40, 40, 3), (48, 64, 5)]):
        image, _, _ = two_region_case(i, h, w)
        logits = rng.normal(0, 1.5, (k, h, w)).astype(np.float32)
        cases.append((torch.from_numpy(image), torch.softmax(torch.from_numpy(logits), 0)))
    params = CRFParams.defaults(backend=backend, chunk=2, processes=2)
    single = [dense_crf(im, p, params) for im, p in cases]
    with CRFRunner(params) as runner:  # a persistent runner (and pydensecrf pool), called twice
        batched = [runner([c[0] for c in cases], [c[1] for c in cases]) for _ in range(2)]
    for one, *many in zip(single, *batched, strict=True):
        for got in many:
            assert got.shape == one.shape
            torch.testing.assert_close(got, one, atol=1e-6, rtol=0)


def test_batched_call_takes_tensors_and_keeps_them_on_their_device():
    image, probs, _ = two_region_case()
    images = torch.from_numpy(np.stack([image, image[::-1].copy()]))
    p = torch.from_numpy(np.stack([probs, probs]))
    q = dense_crf_batch(images, p, PARAMS, backend="torch")
    assert q.shape == p.shape and q.device == p.device and q.dtype == torch.float32
    torch.testing.assert_close(q[0], torch.from_numpy(dense_crf(image, probs, PARAMS, backend="torch")))


@pytest.mark.parametrize("backend", BACKENDS)
def test_parameters_change_the_result(backend):
    image, probs, _ = two_region_case()
    assert not np.allclose(dense_crf(image, probs, PARAMS, backend=backend),
                           dense_crf(image, probs, CRFParams.defaults(bilateral_srgb=30.0), backend=backend))


def test_parameters_are_validated_with_the_key_named():
    for key, value in (("bilateral_sxy", 0), ("iterations", 0), ("denorm", "floor"), ("processes", -1), ("clip", 2),
                       ("backend", "cuda"), ("chunk", 0)):
        with pytest.raises(DHRError, match=f"crf.{key}"):
            CRFParams.defaults(**{key: value})
    with pytest.raises(DHRError, match="crf.bogus"):
        CRFParams.defaults(bogus=1)


def test_a_checkpoint_crf_node_without_the_new_keys_still_loads():
    old = {k: v for k, v in CRFParams.defaults().__dict__.items() if k not in ("backend", "chunk")}
    params = CRFParams.from_cfg(old)
    assert params.backend == "auto" and params.chunk == "auto"
    assert params.chunk_for(torch.device("cpu")) == 1 and params.chunk_for(torch.device("cuda")) == 16


def test_auto_takes_torch_on_an_accelerator_and_pydensecrf_on_the_cpu_when_installed(monkeypatch):
    import dhr.ops.crf.params as P

    auto = CRFParams.defaults()
    assert auto.backend_for(torch.device("cuda", 0)) == "torch"
    assert auto.backend_for(torch.device("cpu")) == ("pydensecrf" if pydensecrf_installed() else "torch")
    monkeypatch.setattr(P, "pydensecrf_installed", lambda: False)
    assert auto.backend_for(torch.device("cpu")) == "torch"
    with pytest.raises(DHRError, match=r"crf.backend=pydensecrf.*\[crf\].*crf.backend=torch"):
        CRFParams.defaults(backend="pydensecrf")


def test_shape_mismatch_is_reported():
    image, probs, _ = two_region_case()
    with pytest.raises(ValueError, match="CRF image is"):
        dense_crf(image[:40], probs, PARAMS, backend="torch")


def test_a_lattice_too_wide_for_64_bit_codes_names_the_fix():
    image = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    _, probs, _ = two_region_case(h=32, w=32)
    with pytest.raises(DHRError, match="crf.bilateral_srgb"):
        dense_crf(image, probs, CRFParams.defaults(bilateral_srgb=0.0005, bilateral_sxy=0.001), backend="torch")


def test_denormalize_truncates():
    from dhr.utils.imagenet import IMAGENET_MEAN, IMAGENET_STD

    pixel = np.array([100.7, 0.2, 254.9]) / 255.0
    normed = ((pixel - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)).astype(np.float32).reshape(3, 1, 1)
    assert denormalize(normed, "truncate")[0, 0].tolist() == [100, 0, 254]
    assert denormalize(normed, "round")[0, 0].tolist() == [101, 0, 255]
    batched = denormalize(torch.from_numpy(np.stack([normed, normed])), "truncate")
    assert batched.dtype == torch.uint8 and batched.shape == (2, 1, 1, 3) and batched[1, 0, 0].tolist() == [100, 0, 254]


def test_denormalize_is_the_release_float64_arithmetic_on_every_level():
    """All 256 levels of each channel, normalised in float32 as the data loader does (dhr-method.md §5.1)."""
    from dhr_reference.relabel import release_denormalize

    from dhr.utils.imagenet import IMAGENET_MEAN, IMAGENET_STD

    levels = np.repeat(np.arange(256, dtype=np.float32)[:, None], 3, axis=1)  # (256, 3): every level of R, G, B
    normed = ((levels / 255.0 - np.float32(IMAGENET_MEAN)) / np.float32(IMAGENET_STD)).T[:, None, :]  # (3, 1, 256)
    ours = denormalize(normed, "truncate")
    np.testing.assert_array_equal(ours, release_denormalize(normed))
    f32 = np.floor(np.clip((normed.transpose(1, 2, 0) * np.float32(IMAGENET_STD) + np.float32(IMAGENET_MEAN))
                           * np.float32(255), 0, 255)).astype(np.uint8)
    moved = (f32 != ours).sum(axis=(0, 1))
    assert (moved > 10).all(), f"float32 arithmetic should move many levels per channel (moved {moved.tolist()})"


@pytest.mark.parametrize("backend", BACKENDS)
def test_hard_label_crf_snaps_a_shifted_mask_to_the_image_edge(backend):
    from dataclasses import replace

    from dhr.ops.crf import crf_refine_labels, labels_to_probs

    image, _, truth = two_region_case()
    shifted = np.roll(truth, 4, axis=1).astype(np.uint8)  # boundary 4 px off the colour edge
    shifted[:, :4] = 0
    shifted[0, 0] = 255
    probs = labels_to_probs(shifted, 2)
    assert np.allclose(probs.sum(0), 1) and probs[:, 0, 0].tolist() == [0.5, 0.5]
    refined = crf_refine_labels(image, shifted, 2, replace(PARAMS, backend=backend))
    assert (refined == truth).mean() > (shifted == truth).mean()
    assert (refined == truth).mean() > 0.99


def test_the_gather_path_of_devices_without_sparse_matmul_equals_the_csr_path():
    from dataclasses import replace

    from dhr.ops.crf.lattice import Lattice
    from dhr.ops.crf.mean_field import bilateral_features

    image, probs, _ = two_region_case()
    rng = np.random.default_rng(0)
    image = np.clip(image.astype(int) + rng.integers(-30, 30, image.shape), 0, 255).astype(np.uint8)
    lattice = Lattice.build(bilateral_features(torch.from_numpy(image)[None], 67.0, 3.0))
    assert lattice.splat is not None and lattice.slice is not None
    values = torch.from_numpy(rng.random((1, image.shape[0] * image.shape[1], 3), dtype=np.float32))
    gathered = replace(lattice, splat=None, slice=None).filter(values)
    torch.testing.assert_close(gathered, lattice.filter(values), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(lattice.filter(values), values)  # it filters
