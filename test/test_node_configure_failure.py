"""A configure that fails late leaves the node clean: logged with its traceback, nothing kept.

The failure is planted after configure has built the pipeline, TF, publishers, timers and
services (the per-scene static frames are sent last), so every resource configure creates
exists when it fails. The node runs in this process, on its own context and ROS domain, so the
test can list the node's endpoints; the log is read from the process's stderr, where rcutils
writes it, as a user reads it.
"""
import pytest
import rclpy
from rclpy.lifecycle import TransitionCallbackReturn

from mspr_ros.ros import node as node_module
from mspr_ros.ros.node import LocalizerNode
from ros_harness import domain_id

pytestmark = pytest.mark.ros


class PlantedFailure(RuntimeError):
    """The error planted in configure."""


def _endpoints(node):
    """Return the names of what the node owns, by kind (parameter services included)."""
    return {
        'publishers': sorted(p.topic_name for p in node.publishers),
        'subscriptions': sorted(s.topic_name for s in node.subscriptions),
        'services': sorted(s.srv_name for s in node.services),
        'timers': len(list(node.timers)),
    }


@pytest.fixture
def node(tiny_bundle_path):
    """Yield an unconfigured LocalizerNode in this process, on a private context."""
    context = rclpy.Context()
    rclpy.init(context=context, domain_id=domain_id(40))
    localizer = LocalizerNode(context=context, parameter_overrides=[
        rclpy.parameter.Parameter('weights', value=str(tiny_bundle_path)),
        rclpy.parameter.Parameter('autostart', value=False)])
    try:
        yield localizer
    finally:
        localizer._stop_processing()
        localizer._release()
        localizer.destroy_node()
        rclpy.shutdown(context=context)


def test_a_late_configure_failure_is_logged_releases_everything_and_a_retry_works(
        node, monkeypatch, capfd):
    before = _endpoints(node)

    def fail(*args, **kwargs):
        raise PlantedFailure('planted: the scene frames could not be sent')
    monkeypatch.setattr(node_module, 'scene_frame_messages', fail)
    assert node.trigger_configure() == TransitionCallbackReturn.FAILURE
    assert node.lifecycle_state() == 'unconfigured'
    log = capfd.readouterr().err
    assert 'configure failed: PlantedFailure: planted: the scene frames could not be sent' in log
    assert 'Traceback (most recent call last)' in log and 'in _configure' in log
    # Publishers, TF endpoints, timers and services made by configure are all gone.
    assert _endpoints(node) == before
    assert node._configured is None

    monkeypatch.undo()
    assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS
    configured = _endpoints(node)
    assert '/tf' in configured['publishers'] and configured['timers'] > before['timers']
    assert node.trigger_cleanup() == TransitionCallbackReturn.SUCCESS
    assert _endpoints(node) == before


def test_require_with_a_bundle_that_records_no_training_camera_fails_configure_saying_why(
        tiny_bundle_path, capfd):
    context = rclpy.Context()
    rclpy.init(context=context, domain_id=domain_id(13))
    node = LocalizerNode(context=context, parameter_overrides=[
        rclpy.parameter.Parameter('weights', value=str(tiny_bundle_path)),
        rclpy.parameter.Parameter('camera_model', value='require'),
        rclpy.parameter.Parameter('autostart', value=False)])
    try:
        before = _endpoints(node)
        assert node.trigger_configure() == TransitionCallbackReturn.FAILURE
        assert node.lifecycle_state() == 'unconfigured'
        assert _endpoints(node) == before
        log = capfd.readouterr().err
        assert "camera_model is 'require' but the bundle records no training camera" in log
    finally:
        node._release()
        node.destroy_node()
        rclpy.shutdown(context=context)
