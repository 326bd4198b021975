"""Reprojection of a robot camera's image into the training pinhole, against analytic renders.

The scene is a textured plane at depth z = 1 in front of a camera at the origin: any camera's
image of it is the texture evaluated at each pixel's ray (``CameraModel.ray_directions``, which
honours the distortion), so the image the training camera would have taken is known exactly and
a reprojected wide-angle image can be compared with it pixel by pixel.
"""
import threading

import cv2
from hypothesis import given, settings, strategies as st
import numpy as np
import pytest
import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from mspr_ros.camera.model import CameraModel, network_camera
from mspr_ros.camera.reprojection import MIN_COVERAGE, Reprojection, ReprojectionCache
from mspr_ros.preprocess import PreprocessingConfig

RESIZE, CROP = 256, 224
#: The camera the network was trained with, as the network sees it (224 x 224, about 45 deg).
TRAINING = network_camera(CameraModel.from_fov(320, 240, 65.0), RESIZE, CROP)

# Mean absolute error (grey levels) between a reprojected render and the training camera's own
# render, over the covered pixels. Measured 0.15 to 0.17 for every lens below at 400x300 and
# 640x480, 0.25 through the prescale at 1280x960; the bound leaves 4x margin. Ignoring the
# distortion (reprojecting as if the lens were a pinhole) gives 3.6 to 4.4 and plain
# resize + centre crop of the wide image 23: both far outside.
MAE_BOUND = 1.0
# The 99th percentile of the absolute error: measured 1 grey level (uint8 rounding).
P99_BOUND = 3.0
# Mean absolute error between the reprojection of a pinhole image and torchvision's resize +
# centre crop of it (test 2): measured 0.12, bound 2x that (a half-pixel slip gives 0.60).
PATHS_MAE_BOUND = 0.25

# (spot x, spot y, amplitude): sharp features on the plane, sigma 0.012 plane units (2.4 px in
# the coarsest camera below, 3.2 px in the training camera), so sharp but not aliased.
SPOTS = [(0.1, 0.05, 70.0), (-0.25, 0.2, -70.0), (0.3, -0.25, 60.0), (-0.1, -0.3, -60.0),
         (0.0, 0.0, -60.0), (0.33, 0.3, 60.0)]
SPOT_SIGMA = 0.012


def texture(x, y, phase=0.0):
    """Grey level in [20, 235] of the plane point (x, y): a few cycles per unit plus spots."""
    value = (128.0 + 30.0 * np.sin(2 * np.pi * (1.5 * x + 0.4 * y) + phase)
             * np.cos(2 * np.pi * 1.1 * y)
             + 20.0 * np.sin(2 * np.pi * (2.3 * x - 1.7 * y) + 2 * phase)
             + 12.0 * np.sin(2 * np.pi * (5.0 * x + 3.0 * y) + phase))
    for spot_x, spot_y, amplitude in SPOTS:
        value = value + amplitude * np.exp(-((x - spot_x) ** 2 + (y - spot_y) ** 2)
                                           / (2 * SPOT_SIGMA ** 2))
    return np.clip(value, 20.0, 235.0)


def render(camera, smooth=False):
    """Return the uint8 RGB image of the plane z = 1 (each channel a shifted texture)."""
    rays = camera.ray_directions().astype(np.float64)
    x, y = rays[..., 0], rays[..., 1]
    if smooth:
        channels = [128.0 + 60.0 * np.sin(2 * np.pi * (1.2 * x + 0.2 * c)) * np.cos(3.0 * y)
                    for c in range(3)]
    else:
        channels = [texture(x, y, 0.7 * c) for c in range(3)]
    return np.round(np.stack(channels, axis=-1)).astype(np.uint8)


def wide_camera(width, height, model, distortion, fov_deg=90.0):
    """Return a square-pixel camera of ``fov_deg`` (pinhole measure) with the given lens."""
    pinhole = CameraModel.from_fov(width, height, fov_deg)
    return CameraModel(width, height, pinhole.fx, pinhole.fy, pinhole.cx, pinhole.cy, model,
                       tuple(distortion))


LENSES = {
    'plumb_bob': (-0.28, 0.07, 0.0005, -0.0005, 0.0),
    'rational_polynomial': (-0.2, 0.05, 0.0, 0.0, 0.0, 0.1, 0.0, 0.0),
    'equidistant': (-0.02, 0.01, -0.005, 0.001),
}


def errors(image, reference, mask):
    diff = np.abs(image.astype(np.float64) - reference.astype(np.float64))[mask]
    return diff.mean(), np.percentile(diff, 99)


def torchvision_eval(rgb):
    """Apply the evaluation transform's geometry (mspr_ros.preprocess) to H x W x 3 uint8."""
    image = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)
    image = TF.resize(image, [RESIZE], interpolation=InterpolationMode.BILINEAR, antialias=True)
    return TF.center_crop(image, [CROP]).permute(1, 2, 0).numpy()


@pytest.fixture(scope='module')
def training_render():
    return render(TRAINING)


# --- 1. a wide distorted camera into the training pinhole -------------------------------------

@pytest.mark.parametrize('size', [(400, 300), (640, 480)])
@pytest.mark.parametrize('model', sorted(LENSES))
def test_wide_distorted_camera_reprojects_to_the_training_view(size, model, training_render):
    source = wide_camera(*size, model, LENSES[model])
    image = render(source)
    reprojection = Reprojection.build(source, TRAINING)
    assert reprojection.covers and reprojection.prescale == 1
    out = reprojection.apply(image)
    assert out.shape == (CROP, CROP, 3) and out.dtype == np.uint8 and out.flags.c_contiguous
    mae, p99 = errors(out, training_render, reprojection.valid_mask)
    assert mae < MAE_BOUND and p99 <= P99_BOUND, (mae, p99)

    # The same image without undistortion is far off: the comparison can fail.
    as_pinhole = CameraModel.pinhole(source.width, source.height, source.fx, source.fy,
                                     source.cx, source.cy)
    ignored = Reprojection.build(as_pinhole, TRAINING)
    mask = ignored.valid_mask & reprojection.valid_mask
    assert errors(ignored.apply(image), training_render, mask)[0] > 3 * MAE_BOUND
    assert errors(torchvision_eval(image), training_render, np.ones((CROP, CROP), bool))[0] \
        > 10 * MAE_BOUND


# --- 2. the two input paths of the node agree -------------------------------------------------

def test_pinhole_source_agrees_with_the_evaluation_transform():
    source = CameraModel.from_fov(320, 240, 65.0)
    cfg = PreprocessingConfig()
    target = network_camera(source, cfg.resize, cfg.crop)
    image = render(source)
    reprojection = Reprojection.build(source, target)
    assert reprojection.coverage == 1.0
    out = reprojection.apply(image)
    reference = torchvision_eval(image)
    # Both bilinear at 240 -> 256; they differ by uint8 rounding and the remap's 1/32 px fixed
    # point. Measured 0.12 grey levels (at most 1); a target camera off by half a pixel gives
    # 0.60 and by a quarter 0.32, so the bound (2x the measurement) sees a half-pixel slip.
    mae = np.abs(out.astype(np.float64) - reference).mean()
    assert mae < PATHS_MAE_BOUND and np.abs(out.astype(np.float64) - reference).max() <= 2, mae
    slipped = CameraModel.pinhole(CROP, CROP, target.fx, target.fy, target.cx + 0.5, target.cy)
    slipped_out = Reprojection.build(source, slipped).apply(image)
    interior = (slice(2, -2), slice(2, -2))
    assert np.abs(slipped_out[interior].astype(np.float64) - reference[interior]).mean() \
        > 2 * PATHS_MAE_BOUND


# --- 3. coverage ------------------------------------------------------------------------------

def test_a_narrow_camera_does_not_cover_and_leaves_black():
    source = CameraModel.from_fov(320, 240, 40.0)
    reprojection = Reprojection.build(source, TRAINING)
    assert reprojection.coverage < MIN_COVERAGE
    assert reprojection.covers is False
    out = reprojection.apply(render(source))
    valid = reprojection.valid_mask
    assert np.all(out[~valid] == 0)
    assert np.all(out[valid] >= 20)  # the texture is never darker than 20
    # The coverage is the share of target rays that land inside the source image.
    rays = TRAINING.ray_directions().reshape(-1, 3).astype(np.float64)
    landed = source.project(rays)
    inside = ((landed >= 0) & (landed <= [source.width - 1, source.height - 1])).all(axis=1)
    assert reprojection.coverage == pytest.approx(inside.mean(), abs=0.005)
    assert 0.3 < reprojection.coverage < 0.8


def test_a_ninety_degree_camera_covers():
    reprojection = Reprojection.build(wide_camera(640, 480, 'plumb_bob', LENSES['plumb_bob']),
                                      TRAINING)
    assert reprojection.covers is True and reprojection.coverage >= MIN_COVERAGE


@settings(deadline=None, max_examples=25)
@given(fov=st.floats(30.0, 120.0), k1=st.floats(-0.3, 0.1), k2=st.floats(0.0, 0.08),
       width=st.sampled_from([160, 320, 640]), aspect=st.sampled_from([0.75, 0.5625, 1.0]),
       shift=st.floats(-0.05, 0.05))
def test_coverage_is_the_share_of_target_rays_the_source_sees(fov, k1, k2, width, aspect,
                                                              shift):
    height = int(width * aspect)
    base = CameraModel.from_fov(width, height, fov)
    source = CameraModel(width, height, base.fx, base.fy, base.cx + shift * width, base.cy,
                         'plumb_bob', (k1, k2, 0.0, 0.0, 0.0))
    reprojection = Reprojection.build(source, TRAINING)
    # A finer source is sampled prescaled, whose [0, W - 1] reaches half a source pixel less far.
    sampled = source.scaled(width // reprojection.prescale, height // reprojection.prescale)
    rays = TRAINING.ray_directions().reshape(-1, 3).astype(np.float64)
    landed = sampled.project(rays)
    inside = ((landed >= 0) & (landed <= [sampled.width - 1, sampled.height - 1])).all(axis=1)
    # The lenses drawn are monotonic over the target's field, so only the image edge decides;
    # pixels right on it may go either way (float32 maps).
    assert reprojection.coverage == pytest.approx(inside.mean(), abs=0.003)
    assert reprojection.covers == (reprojection.coverage >= MIN_COVERAGE)


# --- 4. folded distortion ---------------------------------------------------------------------

def fold_radius(k1, k2):
    """Return the undistorted radius where r (1 + k1 r^2 + k2 r^4) stops increasing."""
    radius = np.linspace(0.0, 5.0, 500001)
    slope = 1 + 3 * k1 * radius ** 2 + 5 * k2 * radius ** 4
    return radius[np.argmax(slope <= 0)]


@pytest.mark.parametrize('k1, k2', [(-0.5, 0.0), (0.3, -0.4)])
def test_folded_plumb_bob_gives_black_not_folded_content(k1, k2):
    source = CameraModel(400, 300, 200.0, 200.0, 199.5, 149.5, 'plumb_bob',
                         (k1, k2, 0.0, 0.0, 0.0))
    target = CameraModel.pinhole(224, 224, 80.0, 80.0, 111.5, 111.5)  # about 110 deg
    reprojection = Reprojection.build(source, target)
    v, u = np.mgrid[0:224, 0:224]
    radius = np.hypot((u - 111.5) / 80.0, (v - 111.5) / 80.0)
    beyond = radius > fold_radius(k1, k2) + 1.0 / 80.0  # a target pixel past the fold
    # The scenario folds: OpenCV's own map sends many rays past the fold into the image.
    map_x, map_y = cv2.initUndistortRectifyMap(source.matrix(), source.distortion_vector(),
                                               np.eye(3), target.matrix(), (224, 224),
                                               cv2.CV_32FC1)
    raw_inside = (map_x >= 0) & (map_x <= 399) & (map_y >= 0) & (map_y <= 299)
    assert (raw_inside & beyond).mean() > 0.3

    out = reprojection.apply(np.full((300, 400, 3), 200, np.uint8))
    assert np.all(out[beyond] == 0)
    assert not np.any(reprojection.valid_mask & beyond)
    assert np.all(out[reprojection.valid_mask] == 200)
    assert reprojection.coverage <= (raw_inside & ~beyond).mean()
    assert reprojection.coverage >= 0.95 * (raw_inside & (radius < fold_radius(k1, k2))).mean()
    assert not reprojection.covers


# --- 5. the cache -----------------------------------------------------------------------------

def test_cache_builds_once_per_camera_pair():
    cache = ReprojectionCache()
    first = wide_camera(320, 240, 'plumb_bob', LENSES['plumb_bob'])
    frames = np.random.default_rng(0).integers(0, 256, (50, 240, 320, 3), dtype=np.uint8)
    for frame in frames:
        # A new but equal CameraModel each frame, as from each CameraInfo message.
        camera = CameraModel.from_dict(first.to_dict())
        assert cache.get(camera, TRAINING).apply(frame).shape == (CROP, CROP, 3)
    assert cache.builds == 1
    second = wide_camera(640, 480, 'equidistant', LENSES['equidistant'])
    reprojection = cache.get(second, TRAINING)
    assert cache.builds == 2 and reprojection.source == second
    assert cache.get(first, TRAINING).source == first
    assert cache.builds == 2
    assert len(cache) == 2


def test_cache_drops_the_least_recently_used():
    cache = ReprojectionCache(maxsize=2)
    cameras = [CameraModel.from_fov(64 + 8 * i, 48, 90.0) for i in range(3)]
    cache.get(cameras[0], TRAINING)
    cache.get(cameras[1], TRAINING)
    cache.get(cameras[0], TRAINING)  # now the most recent
    cache.get(cameras[2], TRAINING)  # drops cameras[1]
    assert cache.builds == 3 and len(cache) == 2
    cache.get(cameras[0], TRAINING)
    assert cache.builds == 3
    cache.get(cameras[1], TRAINING)
    assert cache.builds == 4


def test_cache_builds_once_under_concurrent_calls():
    cache = ReprojectionCache()
    source = wide_camera(640, 480, 'plumb_bob', LENSES['plumb_bob'])
    start = threading.Barrier(8)
    results = []

    def worker():
        start.wait()
        results.append(cache.get(source, TRAINING))

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert cache.builds == 1
    assert len(results) == 8 and all(result is results[0] for result in results)


def test_cache_caches_no_failed_build():
    cache = ReprojectionCache()
    distorted = wide_camera(64, 48, 'plumb_bob', LENSES['plumb_bob'])
    with pytest.raises(ValueError):
        cache.get(distorted, distorted)
    assert cache.builds == 0 and len(cache) == 0


# --- 6. errors --------------------------------------------------------------------------------

def test_apply_names_both_sizes_of_a_wrong_image():
    reprojection = Reprojection.build(CameraModel.from_fov(640, 480, 90.0), TRAINING)
    with pytest.raises(ValueError, match=r'640x480.*320x240'):
        reprojection.apply(np.zeros((240, 320, 3), np.uint8))
    with pytest.raises(ValueError, match='640x480'):
        reprojection.apply(np.zeros((480, 640, 3), np.float32))
    with pytest.raises(ValueError, match='640x480'):
        reprojection.apply(np.zeros((480, 640), np.uint8))


def test_a_distorted_target_is_refused():
    target = CameraModel(224, 224, 200.0, 200.0, 111.5, 111.5, 'plumb_bob', (-0.1, 0, 0, 0, 0))
    with pytest.raises(ValueError, match='pinhole.*plumb_bob'):
        Reprojection.build(CameraModel.from_fov(640, 480, 90.0), target)


def test_apply_takes_views_and_read_only_images():
    source = wide_camera(320, 240, 'plumb_bob', LENSES['plumb_bob'])
    reprojection = Reprojection.build(source, TRAINING)
    image = render(source)
    expected = reprojection.apply(image)
    bgr = np.ascontiguousarray(image[..., ::-1])
    np.testing.assert_array_equal(reprojection.apply(bgr[..., ::-1]), expected)
    image.setflags(write=False)
    np.testing.assert_array_equal(reprojection.apply(image), expected)


# --- 7. prescale ------------------------------------------------------------------------------

def test_a_fine_source_is_prescaled_and_matches_the_direct_maps(training_render):
    source = wide_camera(1280, 960, 'plumb_bob', LENSES['plumb_bob'])
    assert source.fx / TRAINING.fx > 2
    prescaled = Reprojection.build(source, TRAINING)
    assert prescaled.prescale >= 2 and prescaled.covers
    direct = Reprojection.build(source, TRAINING, prescale=1)
    assert direct.prescale == 1
    smooth = render(source, smooth=True)
    mask = prescaled.valid_mask & direct.valid_mask
    # A smooth image: the area-average prescale then changes nothing but rounding (measured
    # 0.25 grey levels); a prescaled camera off by one source pixel would give several.
    mae, p99 = errors(prescaled.apply(smooth), direct.apply(smooth), mask)
    assert mae < MAE_BOUND and p99 <= P99_BOUND, (mae, p99)
    # And on the textured scene both match the training camera.
    mae, p99 = errors(prescaled.apply(render(source)), training_render, prescaled.valid_mask)
    assert mae < MAE_BOUND and p99 <= P99_BOUND, (mae, p99)


def test_prescale_averages_detail_finer_than_the_target():
    # One-pixel stripes, far finer than a target pixel (2.4 source pixels): the training
    # transform's antialiased resize shows them as grey. The area-average prescale does too
    # (measured 0.5 grey levels from 127.5); bilinear sampling alone aliases them into
    # stripes of black and white (measured mean deviation 63).
    source = wide_camera(1280, 960, 'plumb_bob', LENSES['plumb_bob'])
    stripes = np.zeros((960, 1280, 3), np.uint8)
    stripes[:, ::2] = 255
    prescaled = Reprojection.build(source, TRAINING)
    mask = prescaled.valid_mask
    deviation = np.abs(prescaled.apply(stripes)[mask].astype(np.float64) - 127.5).mean()
    assert deviation < 5.0, deviation
    aliased = Reprojection.build(source, TRAINING, prescale=1).apply(stripes)[mask]
    assert np.abs(aliased.astype(np.float64) - 127.5).mean() > 30.0


def test_prescale_is_one_below_twice_the_target_focal_length():
    source = CameraModel.pinhole(640, 480, 1.9 * TRAINING.fx, 1.9 * TRAINING.fy, 319.5, 239.5)
    assert Reprojection.build(source, TRAINING).prescale == 1
    source = CameraModel.pinhole(1920, 1440, 3.5 * TRAINING.fx, 3.2 * TRAINING.fy, 959.5, 719.5)
    assert Reprojection.build(source, TRAINING).prescale == 3


@pytest.mark.parametrize('prescale', [0, -1, 1.5, True])
def test_a_bad_prescale_is_refused(prescale):
    with pytest.raises(ValueError, match='prescale'):
        Reprojection.build(CameraModel.from_fov(64, 48, 90.0), TRAINING, prescale=prescale)
