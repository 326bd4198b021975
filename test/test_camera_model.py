"""CameraModel: CameraInfo, serialisation, projection round trips, the evaluation transform.

The camera the network sees after resize and centre crop is checked against torchvision's own
resize and centre crop.
"""
from hypothesis import assume, given, settings, strategies as st
import numpy as np
import pytest
import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from mspr_ros.camera.model import CameraModel, DISTORTION_MODELS, evaluation_crop, network_camera

# The shared CPU makes per-example timing meaningless; the example count bounds the runtime.
PROPERTY_SETTINGS = settings(deadline=None, max_examples=60)

K_640 = [500.0, 0.0, 319.5, 0.0, 505.0, 239.5, 0.0, 0.0, 1.0]


# --- from_camera_info -------------------------------------------------------------------------

def test_from_camera_info_pads_a_four_coefficient_plumb_bob():
    camera = CameraModel.from_camera_info(640, 480, 'plumb_bob', [-0.28, 0.07, 0.001, -0.002],
                                          K_640)
    assert camera.distortion_model == 'plumb_bob'
    assert camera.distortion == (-0.28, 0.07, 0.001, -0.002, 0.0)
    assert (camera.fx, camera.fy, camera.cx, camera.cy) == (500.0, 505.0, 319.5, 239.5)
    assert (camera.width, camera.height) == (640, 480)


@pytest.mark.parametrize('model, d', [('plumb_bob', [0.0] * 5), ('plumb_bob', []),
                                      ('rational_polynomial', [0.0] * 8), ('', []),
                                      ('none', [])])
def test_from_camera_info_without_distortion_is_a_pinhole(model, d):
    camera = CameraModel.from_camera_info(640, 480, model, d, K_640)
    assert camera.is_pinhole
    assert camera.distortion_model == 'none' and camera.distortion == ()


def test_from_camera_info_keeps_an_equidistant_model_with_zero_coefficients():
    # theta = atan(r) is no pinhole even with k1..k4 = 0: it must not become 'none'.
    camera = CameraModel.from_camera_info(640, 480, 'equidistant', [0.0] * 4, K_640)
    assert camera.distortion_model == 'equidistant'


def test_from_camera_info_names_an_unknown_model():
    with pytest.raises(ValueError, match='kannala_brandt'):
        CameraModel.from_camera_info(640, 480, 'kannala_brandt', [0.1, 0.0, 0.0, 0.0], K_640)


def test_from_camera_info_rejects_a_wrong_coefficient_count():
    with pytest.raises(ValueError, match='rational_polynomial.*8 coefficients, got 5'):
        CameraModel.from_camera_info(640, 480, 'rational_polynomial', [0.1] * 5, K_640)


@pytest.mark.parametrize('width, height', [(0, 480), (640, 0), (0, 0)])
def test_from_camera_info_rejects_an_uncalibrated_size(width, height):
    with pytest.raises(ValueError, match='calibrated'):
        CameraModel.from_camera_info(width, height, 'plumb_bob', [0.0] * 5, K_640)


@pytest.mark.parametrize('k', [[0.0, 0, 319.5, 0, 505.0, 239.5, 0, 0, 1],
                               [500.0, 0, 319.5, 0, 0.0, 239.5, 0, 0, 1]])
def test_from_camera_info_rejects_a_zero_focal_length(k):
    with pytest.raises(ValueError, match='focal'):
        CameraModel.from_camera_info(640, 480, 'plumb_bob', [0.0] * 5, k)


def test_from_camera_info_says_an_all_zero_k_is_uncalibrated():
    # What an uncalibrated driver publishes; the message must say so, not blame skew.
    with pytest.raises(ValueError, match='not calibrated'):
        CameraModel.from_camera_info(640, 480, 'plumb_bob', [0.0] * 5, [0.0] * 9)


@pytest.mark.parametrize('index, value', [(1, 0.5), (3, 0.5), (6, 0.1), (7, 0.1), (8, 2.0)])
def test_from_camera_info_rejects_skew_and_a_non_pinhole_matrix(index, value):
    k = list(K_640)
    k[index] = value
    with pytest.raises(ValueError, match='skew'):
        CameraModel.from_camera_info(640, 480, 'plumb_bob', [0.0] * 5, k)


def test_from_camera_info_rejects_a_short_k():
    with pytest.raises(ValueError, match='9 values'):
        CameraModel.from_camera_info(640, 480, 'plumb_bob', [0.0] * 5, K_640[:6])


# --- to_dict / from_dict ----------------------------------------------------------------------

@st.composite
def cameras(draw, models=tuple(DISTORTION_MODELS)):
    width = draw(st.integers(16, 2048))
    height = draw(st.integers(16, 2048))
    fx = draw(st.floats(50.0, 2000.0))
    fy = draw(st.floats(50.0, 2000.0))
    cx = draw(st.floats(0.0, width - 1.0))
    cy = draw(st.floats(0.0, height - 1.0))
    model = draw(st.sampled_from(models))
    distortion = draw(st.lists(st.floats(-0.5, 0.5), min_size=DISTORTION_MODELS[model],
                               max_size=DISTORTION_MODELS[model]))
    return CameraModel(width, height, fx, fy, cx, cy, model, tuple(distortion))


@PROPERTY_SETTINGS
@given(cameras())
def test_to_dict_from_dict_round_trip(camera):
    data = camera.to_dict()
    assert CameraModel.from_dict(data) == camera
    assert isinstance(data['distortion'], list)


def test_from_dict_names_unknown_and_missing_keys():
    data = CameraModel.from_fov(64, 48).to_dict()
    with pytest.raises(ValueError, match='lens'):
        CameraModel.from_dict({**data, 'lens': 'wide'})
    del data['fy']
    with pytest.raises(ValueError, match='fy'):
        CameraModel.from_dict(data)


# --- project / normalized_coordinates ---------------------------------------------------------

# Coefficient ranges of real lenses. Near the radius where a distortion polynomial turns, the
# distorted radius hardly changes with the true one and no undistortion can be exact; a lens is
# calibrated over the field where it is well inside that, so draws whose radial slope falls below
# MIN_RADIAL_SLOPE within the drawn points are discarded (``assume``).
COEFFICIENTS = {
    'none': [],
    'plumb_bob': [st.floats(-0.3, 0.1), st.floats(0.0, 0.08), st.floats(-0.002, 0.002),
                  st.floats(-0.002, 0.002), st.floats(-0.01, 0.01)],
    'rational_polynomial': [st.floats(-0.3, 0.3), st.floats(-0.03, 0.05),
                            st.floats(-0.002, 0.002), st.floats(-0.002, 0.002),
                            st.floats(-0.005, 0.005), st.floats(0.0, 0.3), st.floats(0.0, 0.05),
                            st.floats(0.0, 0.005)],
    'equidistant': [st.floats(-0.05, 0.05)] * 4,
}
MIN_RADIAL_SLOPE = 0.3


def distorted_radius(model, coefficients, radius):
    """Return the distorted normalised radius of undistorted radius (array) ``radius``."""
    c = coefficients
    r2 = radius ** 2
    if model == 'plumb_bob':
        return radius * (1 + c[0] * r2 + c[1] * r2 ** 2 + c[4] * r2 ** 3)
    if model == 'rational_polynomial':
        return radius * ((1 + c[0] * r2 + c[1] * r2 ** 2 + c[4] * r2 ** 3)
                         / (1 + c[5] * r2 + c[6] * r2 ** 2 + c[7] * r2 ** 3))
    if model == 'equidistant':
        t2 = np.arctan(radius) ** 2
        return np.arctan(radius) * (1 + c[0] * t2 + c[1] * t2 ** 2 + c[2] * t2 ** 3
                                    + c[3] * t2 ** 4)
    return radius


@PROPERTY_SETTINGS
@pytest.mark.parametrize('model', sorted(DISTORTION_MODELS))
@given(data=st.data())
def test_project_then_normalized_coordinates_round_trip(model, data):
    coefficients = data.draw(st.tuples(*COEFFICIENTS[model]))
    camera = CameraModel(640, 480, data.draw(st.floats(150.0, 800.0)),
                         data.draw(st.floats(150.0, 800.0)), data.draw(st.floats(250.0, 390.0)),
                         data.draw(st.floats(190.0, 290.0)), model, coefficients)
    reach = 1.5 if model == 'equidistant' else 0.8
    xy = np.array(data.draw(st.lists(st.tuples(st.floats(-reach, reach), st.floats(-reach, reach)),
                                     min_size=1, max_size=20)))
    radii = np.linspace(0.0, np.hypot(xy[:, 0], xy[:, 1]).max() + 1e-3, 200)
    assume(np.diff(distorted_radius(model, coefficients, radii)).min()
           >= MIN_RADIAL_SLOPE * (radii[1] - radii[0]))
    depth = np.array(data.draw(st.lists(st.floats(0.1, 50.0), min_size=len(xy),
                                        max_size=len(xy))))
    points = np.column_stack([xy * depth[:, None], depth])
    pixels = camera.project(points)
    assert pixels.shape == (len(xy), 2)
    np.testing.assert_allclose(camera.normalized_coordinates(pixels), xy, rtol=0.0, atol=1e-6)


def test_ray_directions_are_the_normalised_coordinates_of_each_pixel():
    camera = CameraModel(40, 30, 30.0, 31.0, 19.0, 15.0, 'plumb_bob', (-0.28, 0.07, 0, 0, 0))
    rays = camera.ray_directions()
    assert rays.shape == (30, 40, 3) and rays.dtype == np.float32 and not rays.flags.writeable
    np.testing.assert_allclose(rays[..., 2], 1.0)
    pixels = camera.project(rays[[0, 7, 29], [0, 13, 39]].astype(np.float64))
    np.testing.assert_allclose(pixels, [[0, 0], [13, 7], [39, 29]], atol=1e-3)


def test_a_distorted_camera_projects_other_than_its_pinhole():
    # Guards the round trip above against a project() that ignored the distortion both ways.
    camera = CameraModel(640, 480, 320.0, 320.0, 319.5, 239.5, 'plumb_bob',
                         (-0.28, 0.07, 0.0, 0.0, 0.0))
    pinhole = CameraModel.pinhole(640, 480, 320.0, 320.0, 319.5, 239.5)
    corner = np.array([[0.8, 0.6, 1.0]])
    assert np.linalg.norm(camera.project(corner) - pinhole.project(corner)) > 20.0


# --- the evaluation transform against torchvision ---------------------------------------------

RESIZE, CROP = 256, 224

# Bounds of the geometry check, in network-input pixels. Without antialiasing, bilinear resize
# reproduces a linear ramp exactly and the measured error is below 1e-4 px. Downscaling, the
# antialiasing filter's window is cut at whole pixels, which ripples the ramp by up to 0.07 px
# (measured at 400x300), with zero mean. So: every pixel within 0.1 px (the brief asks 0.5, which
# already catches an off-by-one crop), and the mean offset within 0.005 px, which catches scaling
# about pixel 0 instead of the image corner (a constant 0.5 (1 - scale) px: 0.03 to 0.28 px here).
GEOMETRY_MAX_PX = 0.1
GEOMETRY_MEAN_PX = 0.005


@pytest.mark.parametrize('width, height', [(640, 480), (320, 240), (400, 300), (480, 640),
                                           (1024, 576)])
def test_network_camera_matches_torchvision_resize_and_center_crop(width, height):
    # An off-centre principal point: the crop must shift it, not assume it is central.
    camera = CameraModel(width, height, 0.9 * width, 0.92 * width, 0.46 * width, 0.53 * height)
    # Each pixel holds its own coordinates: bilinear (and, downscaling, the antialiasing
    # triangle filter) reproduce a linear ramp exactly away from the border, so the transformed
    # image tells for each of its pixels which source position it shows.
    v, u = np.meshgrid(np.arange(height, dtype=np.float32), np.arange(width, dtype=np.float32),
                       indexing='ij')
    image = torch.from_numpy(np.stack([u, v]))
    resized = TF.resize(image, [RESIZE], interpolation=InterpolationMode.BILINEAR,
                        antialias=True)
    new_width, new_height, left, top = evaluation_crop(width, height, RESIZE, CROP)
    assert tuple(resized.shape[1:]) == (new_height, new_width)
    out = TF.center_crop(resized, [CROP]).numpy()
    assert out.shape == (2, CROP, CROP)
    np.testing.assert_array_equal(out, resized[:, top:top + CROP, left:left + CROP].numpy())

    network = network_camera(camera, RESIZE, CROP)
    assert (network.width, network.height) == (CROP, CROP) and network.is_pinhole
    # Forward, as the brief states it: a 3-D point seen in the source lands where
    # network.project says. Every source position the crop shows is such a point.
    shown = out.reshape(2, -1).T.astype(np.float64)
    rays = camera.normalized_coordinates(shown)
    points = np.column_stack([rays, np.ones(len(rays))]) * 3.0
    v_out, u_out = np.meshgrid(np.arange(CROP), np.arange(CROP), indexing='ij')
    landed = network.project(points)
    offset = landed - np.column_stack([u_out.ravel(), v_out.ravel()])
    assert np.hypot(offset[:, 0], offset[:, 1]).max() < GEOMETRY_MAX_PX
    assert np.all(np.abs(offset.mean(axis=0)) < GEOMETRY_MEAN_PX), offset.mean(axis=0)


@pytest.mark.parametrize('width, height, expected', [
    (640, 480, (341, 256, 58, 16)), (480, 640, (256, 341, 16, 58)),
    (1024, 576, (455, 256, 116, 16)), (256, 256, (256, 256, 16, 16))])
def test_evaluation_crop_sizes_and_offsets(width, height, expected):
    # int(round(x.5)) rounds half to even, as torchvision's center_crop does (58.5 -> 58).
    assert evaluation_crop(width, height, RESIZE, CROP) == expected


def test_network_camera_refuses_a_distorted_camera():
    camera = CameraModel(640, 480, 320.0, 320.0, 319.5, 239.5, 'plumb_bob', (-0.2, 0, 0, 0, 0))
    with pytest.raises(ValueError, match='undistort'):
        network_camera(camera, RESIZE, CROP)


def test_scaled_and_cropped_move_pixel_centres():
    camera = CameraModel.pinhole(100, 50, 80.0, 80.0, 49.5, 24.5)
    half = camera.scaled(50, 25)
    # Pixel 0 of the half image averages source pixels 0 and 1: its centre is at source 0.5.
    assert half.project(np.array([[(0.5 - 49.5) / 80.0, 0.0, 1.0]]))[0, 0] == pytest.approx(0.0)
    assert (half.fx, half.cx, half.cy) == (40.0, 24.5, 12.0)
    window = camera.cropped(10, 5, 30, 20)
    assert (window.width, window.height, window.cx, window.cy) == (30, 20, 39.5, 19.5)


def test_a_fisheye_seeing_beyond_ninety_degrees_has_no_z1_rays_and_says_so():
    # Corners 109 deg off the axis: a z = 1 ray cannot point there (OpenCV gives ~1e16).
    camera = CameraModel(150, 120, 50.0, 50.0, 74.5, 59.5, 'equidistant', (0.0, 0.0, 0.0, 0.0))
    with pytest.raises(ValueError, match='too far off its axis'):
        camera.ray_directions()
