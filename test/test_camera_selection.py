"""The node's ``camera_model`` rule (ROS-free): which camera each frame is read with, over time."""
import threading
import time

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


def _offer_later(rule, stamp, camera, delay_s):
    """Offer ``camera`` stamped ``stamp`` from another thread after ``delay_s``."""
    timer = threading.Timer(delay_s, rule.offer, (stamp, camera))
    timer.start()
    return timer


def test_an_image_waits_for_its_own_camera_info_once_the_driver_stamps_them_alike():
    """camera_info is another topic: its message for an image can land after the image.

    The bug guarded: the frame took the previous camera_info (or none, and was resized).
    """
    rule = selection('auto')
    # Nothing yet but a publisher on the topic: the first image waits for its camera_info.
    timer = _offer_later(rule, 100, WIDE, 0.05)
    assert rule.wait_for(100, 5.0, publisher=lambda: True)
    assert rule.decide(100, 400, 300).camera == WIDE
    timer.join()
    # The driver stamps camera_info like its images: a newer image waits for its own.
    for stamp, camera in ((200, OTHER), (300, WIDE), (400, OTHER)):
        timer = _offer_later(rule, stamp, camera, 0.05)
        assert rule.wait_for(stamp, 5.0, publisher=lambda: True)
        assert rule.decide(stamp, 400, 300).camera == camera
        timer.join()
    # One that never comes costs the deadline, then the image takes the latest one.
    started = time.monotonic()
    assert not rule.wait_for(500, 0.2, publisher=lambda: True)
    assert time.monotonic() - started >= 0.19
    assert rule.decide(500, 400, 300).camera == OTHER


def test_images_do_not_wait_when_no_camera_info_is_expected():
    # No publisher on the topic under auto: a camera without camera_info is not slowed down.
    rule = selection('auto')
    started = time.monotonic()
    assert rule.wait_for(100, 5.0, publisher=lambda: False)
    # A driver that publishes camera_info less often than images never matches a stamp.
    rule.offer(50, WIDE)
    assert rule.decide(100, 400, 300).camera == WIDE
    assert rule.wait_for(200, 5.0, publisher=lambda: True)
    assert time.monotonic() - started < 1.0
    # ignore never reads camera_info.
    assert selection('ignore').wait_for(100, 5.0, publisher=lambda: True)


def test_require_waits_for_the_first_camera_info_even_before_a_publisher_is_seen():
    rule = selection('require')
    started = time.monotonic()
    assert not rule.wait_for(100, 0.1, publisher=lambda: False)
    assert time.monotonic() - started >= 0.09
    timer = _offer_later(rule, 200, WIDE, 0.05)
    assert rule.wait_for(200, 5.0, publisher=lambda: False)
    assert rule.decide(200, 400, 300).camera == WIDE
    timer.join()
