"""Tests of the Localizer, image preprocessing and device resolution."""
import logging

import numpy as np
import pytest
import skimage.data
import torch

from mspr_ros.bundle import build_model_from_bundle, BundleError
from mspr_ros.device import resolve_device
from mspr_ros.localizer import Localizer
from mspr_ros.model.inference import FewQueryCrossAttention
from mspr_ros.preprocess import preprocess_image, PreprocessingConfig


@pytest.fixture(scope='module')
def localizer(tiny_bundle_path) -> Localizer:
    """Return a CPU localizer for the shared tiny bundle."""
    return Localizer.from_file(tiny_bundle_path, device='cpu')


def test_localize_real_photo(localizer):
    """A real photo gives a bundle scene, a canonical unit quaternion and the scene covariance."""
    result = localizer.localize(skimage.data.astronaut())
    assert localizer.scene_names == ['atrium', 'corridor', 'lab']
    assert result.scene_name == localizer.scene_names[result.scene_index]
    assert result.scene_probabilities.shape == (3,)
    assert result.scene_probabilities.dtype == np.float64
    assert result.scene_probabilities.sum() == pytest.approx(1.0)
    assert result.scene_confidence == result.scene_probabilities.max()
    assert result.position.shape == (3,) and np.isfinite(result.position).all()
    assert result.orientation.shape == (4,)
    assert np.linalg.norm(result.orientation) == pytest.approx(1.0)
    assert result.orientation[3] >= 0
    assert result.covariance.shape == (6, 6)
    assert np.array_equal(result.covariance, localizer.bundle.covariance[result.scene_name])
    assert not result.position.flags.writeable
    assert localizer.timings.preprocess_ms > 0 and localizer.timings.inference_ms > 0


def test_results_equal_the_models_own_forward(localizer):
    """Localizer outputs equal an eval-mode forward of the bundle's model on the same tensor."""
    photo = skimage.data.coffee()
    result = localizer.localize(photo)
    model = build_model_from_bundle(localizer.bundle)
    tensor = preprocess_image(photo, localizer.bundle.preprocessing)
    with torch.no_grad():
        out = model(tensor[None])
    quaternion = out['orientation'][0].double().numpy()
    quaternion /= np.linalg.norm(quaternion)
    quaternion *= np.sign(quaternion[3])
    assert result.scene_index == int(out['scene'][0])
    # The Localizer runs the copy rewritten for inference (BatchNorm folded, products
    # reassociated): float32 rounding differs by about 1e-6.
    np.testing.assert_allclose(result.scene_probabilities,
                               out['scene_log_probs'][0].exp().double().numpy(), atol=1e-5)
    np.testing.assert_allclose(result.position, out['position'][0].double().numpy(), atol=1e-5)
    np.testing.assert_allclose(result.orientation, quaternion, atol=1e-5)


def test_the_torch_back_end_runs_the_copy_rewritten_for_inference(localizer):
    """Its BatchNorms are folded, its cross-attention projects no tokens (outputs: test above)."""
    model = localizer.model
    assert not model.training
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    assert all(isinstance(layer.cross_attn, FewQueryCrossAttention)
               for branch in (model.transformer_t, model.transformer_rot)
               for layer in branch.decoder.layers)


def test_batch_equals_single_images(localizer):
    """localize_batch over images of different sizes equals localize on each image."""
    images = [skimage.data.astronaut(), skimage.data.coffee(), skimage.data.chelsea(),
              np.ascontiguousarray(skimage.data.rocket()[:, ::-1])]
    batched = localizer.localize_batch(images, batch_size=3)
    assert len(batched) == len(images)
    for image, from_batch in zip(images, batched):
        single = localizer.localize(image)
        assert single.scene_index == from_batch.scene_index
        np.testing.assert_allclose(single.scene_probabilities, from_batch.scene_probabilities,
                                   atol=1e-5)
        np.testing.assert_allclose(single.position, from_batch.position, atol=1e-5)
        np.testing.assert_allclose(single.orientation, from_batch.orientation, atol=1e-5)


@pytest.mark.parametrize('image, problem', [
    (np.zeros((32, 32, 3), np.float32), 'uint8'),
    (np.zeros((32, 32), np.uint8), '3 dimensions'),
    (np.zeros((32, 32, 4), np.uint8), '3 channels'),
    (np.zeros((0, 32, 3), np.uint8), 'empty'),
    ([[0, 0, 0]], 'numpy array'),
])
def test_bad_images_are_rejected(localizer, image, problem):
    """Wrong dtype, rank, channel count, emptiness or type raise ValueError naming it."""
    with pytest.raises(ValueError, match=problem):
        localizer.localize(image)
    with pytest.raises(ValueError, match='image 1'):
        localizer.localize_batch([skimage.data.astronaut(), image])


def test_preprocessing_matches_the_paper_transform():
    """Shorter side to 256 and centre crop 224: a 512x1024 image keeps its central band."""
    image = np.zeros((512, 1024, 3), np.uint8)
    image[:, 256:768] = 255  # the crop (centre 224 of 512 after resize) lies inside the band
    tensor = preprocess_image(image, PreprocessingConfig())
    assert tensor.shape == (3, 224, 224)
    white = (1.0 - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor([0.229, 0.224, 0.225])
    torch.testing.assert_close(tensor, white[:, None, None].expand(3, 224, 224))


def test_fp16_on_cpu_warns_and_runs_float32(tiny_bundle_path, caplog):
    """fp16 falls back to float32 on the CPU with one warning naming both."""
    with caplog.at_level(logging.WARNING, logger='mspr_ros.localizer'):
        localizer = Localizer.from_file(tiny_bundle_path, device='cpu', precision='fp16')
    [warning] = [r.getMessage() for r in caplog.records if r.name == 'mspr_ros.localizer']
    assert 'precision fp16' in warning and 'running fp32' in warning
    assert localizer.precision == 'fp32' and not localizer.cuda_graphs
    localizer.warmup(1)
    assert localizer.localize(skimage.data.coffee()).position.dtype == np.float64


def test_missing_bundle_raises_bundle_error(tmp_path):
    """Localizer.from_file surfaces BundleError for a missing file."""
    with pytest.raises(BundleError, match='nothing.safetensors'):
        Localizer.from_file(tmp_path / 'nothing.safetensors', device='cpu')


def test_resolve_device():
    """'cpu' and 'auto' resolve; unknown or unavailable devices raise ValueError."""
    assert resolve_device('cpu') == torch.device('cpu')
    expected = 'cuda' if torch.cuda.is_available() else 'cpu'
    assert resolve_device('auto').type == expected
    for spec in ('tpu', 'cuda:x', 'cuda:999'):
        with pytest.raises(ValueError, match=spec):
            resolve_device(spec)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match='CUDA is not available'):
            resolve_device('cuda')
