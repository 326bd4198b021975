"""The node's ``camera_model`` rule (ROS-free): which camera each frame is read with, over time."""
import pytest

from mspr_ros.camera.model import CameraModel
from mspr_ros.camera.selection import (CAMERA_COVERAGE, CAMERA_MISMATCH, CameraSelection,
                                       NO_CAMERA_INFO)

WIDE = CameraModel(400, 300, 200.0, 200.0, 199.5, 149.5, 'plumb_bob', (-0.28, 0.07, 0, 0, 0))
OTHER = CameraModel(400, 300, 210.0, 210.0, 199.5, 149.5)
NARROW = CameraModel(400, 300, 600.0, 600.0, 199.5, 149.5)
COVERAGE = {WIDE: 1.0, OTHER: 0.99, NARROW: 0.4}


def selection(mode, problem=None, built=None):
    """Return a rule whose coverage comes from the table above (calls logged in ``built``)."""
    def coverage(camera):
        if built is not None:
            built.append(camera)
        return COVERAGE[camera]
    return CameraSelection(mode, '/camera/camera_info', problem, coverage, 0.98)


def test_auto_resizes_until_camera_info_arrives_then_reprojects_with_the_stamped_camera():
    rule = selection('auto')
    before = rule.decide(100, 400, 300)
    assert before.camera is None and before.reject is None and not before.warning
    assert 'no camera_info on /camera/camera_info' in before.status
    rule.offer(200, WIDE)
    rule.offer(300, OTHER)
    # The image takes the camera_info of its stamp, the latest before it, or the latest.
    assert rule.decide(200, 400, 300).camera == WIDE
    assert rule.decide(250, 400, 300).camera == WIDE
    assert rule.decide(300, 400, 300).camera == OTHER
    assert rule.decide(900, 400, 300).camera == OTHER
    assert rule.decide(50, 400, 300).camera == OTHER
    assert 'reprojected' in rule.decide(300, 400, 300).status


def test_require_answers_no_frame_without_camera_info_and_says_why():
    rule = selection('require')
    decision = rule.decide(100, 400, 300)
    assert decision.reject == NO_CAMERA_INFO and decision.camera is None and decision.warning
    assert 'require' in decision.status
    rule.offer(100, WIDE)
    assert rule.decide(100, 400, 300).reject is None


def test_a_camera_that_cannot_cover_the_training_view_is_rejected_under_require_only():
    strict, lenient = selection('require'), selection('auto')
    for rule in (strict, lenient):
        rule.offer(0, NARROW)
    rejected = strict.decide(0, 400, 300)
    assert rejected.reject == CAMERA_COVERAGE and 'cannot cover' in rejected.status
    used = lenient.decide(0, 400, 300)
    assert used.camera == NARROW and used.reject is None and used.warning
    assert '40.0 %' in used.status


def test_a_camera_info_of_another_image_size_is_never_guessed_at():
    rule = selection('auto')
    rule.offer(0, WIDE)
    decision = rule.decide(0, 640, 480)
    assert decision.reject == CAMERA_MISMATCH
    assert '400 x 300' in decision.status and '640 x 480' in decision.status


def test_ignore_never_reads_a_camera_and_an_old_bundle_cannot_be_checked():
    ignore = selection('ignore')
    ignore.offer(0, WIDE)
    assert ignore.decide(0, 400, 300).camera is None
    built = []
    old = selection('auto', problem='the bundle records no training camera', built=built)
    old.offer(0, WIDE)
    decision = old.decide(0, 400, 300)
    assert decision.camera is None and decision.reject is None
    assert 'cannot check the camera' in decision.status and not built
    with pytest.raises(ValueError, match='require.*no training camera'):
        selection('require', problem='the bundle records no training camera')
    with pytest.raises(ValueError, match='camera_model'):
        selection('sometimes')
