"""Test what the README tells users, typed as they would.

``ros2 launch``, ``topic``, ``service``, ``lifecycle`` and ``param`` against a node launched
in a namespace.

Needs ROS 2's real command line in the venv (``.venv/bin/ros2``, installed by the set-up from
``../shared/vendor/ros2_launch``); skipped with the reason otherwise. The bundle is the tiny test
model with its scene classifier sharpened, so that the shipped ``min_scene_confidence`` (0.5) of
``config/mspr_ros.yaml`` lets its poses through.
"""
import subprocess
import time

from geometry_msgs.msg import PoseWithCovarianceStamped, TransformStamped
import pytest
from sensor_msgs.msg import Image
from tf2_msgs.msg import TFMessage
import torch

from mspr_ros.bundle import build_model_from_bundle, load_bundle, save_bundle
from mspr_ros.ros.conversions import ns_to_stamp, rgb_to_image_msg, stamp_to_ns
from ros2_cli_support import cli_missing, ros2_executable, skip_reason
from ros_harness import domain_id, RELIABLE_LATCHED, ros_env, RosClient, small_photos
from ros_harness import stop_process_group, TF_QOS, TF_STATIC_QOS, wait_until

ROS2 = ros2_executable()
NODE = '/robot/mspr_localizer'
CLI_MISSING = skip_reason(cli_missing())
pytestmark = [
    pytest.mark.ros,
    pytest.mark.skipif(CLI_MISSING is not None, reason=str(CLI_MISSING)),
]


@pytest.fixture(scope='module')
def confident_bundle(tiny_bundle_path, tmp_path_factory):
    """Return the tiny model with scene logits scaled up: one scene wins with probability ~1."""
    bundle = load_bundle(tiny_bundle_path)
    model = build_model_from_bundle(bundle)
    with torch.no_grad():
        model.scene_embed.weight.mul_(1000.0)
    path = tmp_path_factory.mktemp('cli') / 'confident.safetensors'
    return save_bundle(path, model, bundle.config, bundle.scene_names)


@pytest.fixture(scope='module')
def launched(confident_bundle, tmp_path_factory):
    """``ros2 launch mspr_ros localize.launch.py weights:=W namespace:=robot`` and a client."""
    workdir = tmp_path_factory.mktemp('cli_run')
    env = ros_env(domain_id(10))
    log_path = workdir / 'launch.log'
    with open(log_path, 'w') as log:
        process = subprocess.Popen(
            [str(ROS2), 'launch', 'mspr_ros', 'localize.launch.py',
             f'weights:={confident_bundle}', 'namespace:=robot'],
            cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    client = RosClient(domain_id(10))
    try:
        def active():
            text = log_path.read_text(errors='replace')
            if process.poll() is not None:
                raise AssertionError(f'ros2 launch exited ({process.returncode}):\n{text}')
            return 'active: waiting for images on /robot/image' in text
        wait_until(active, 90.0, f'the launched node to become active ({log_path})')
        yield env, client, log_path
    finally:
        client.close()
        subprocess.run([str(ROS2), 'daemon', 'stop'], env=env, capture_output=True, timeout=30)
        stop_process_group(process, 15.0)


def ros2(env, *args, timeout=60.0, discovery_s=150.0):
    """Run a ``ros2`` command; return its stdout (fail with its output on a non-zero exit).

    A command started without the daemon discovers the graph itself; on a loaded machine that
    can take longer than the command waits ('Node not found', a topic whose type is not known
    yet, or ``echo --once`` still waiting for the publisher), so those are retried until a
    deadline.
    """
    deadline = time.monotonic() + discovery_s
    while True:
        try:
            result = subprocess.run([str(ROS2), *args], env=env, capture_output=True, text=True,
                                    timeout=timeout)
        except subprocess.TimeoutExpired:
            if time.monotonic() > deadline:
                raise
            continue
        output = result.stderr + result.stdout
        undiscovered = 'Node not found' in output or 'Could not determine the type' in output
        if result.returncode == 0 or not undiscovered or time.monotonic() > deadline:
            break
    assert result.returncode == 0, f'ros2 {" ".join(args)} failed:\n{result.stdout}\n' \
                                   f'{result.stderr}'
    return result.stdout


def test_launch_brings_the_node_up_active_with_the_given_weights(launched, confident_bundle):
    env, _, _ = launched
    assert ros2(env, 'lifecycle', 'get', NODE, '--no-daemon').startswith('active')
    value = ros2(env, 'param', 'get', NODE, 'weights', '--no-daemon')
    assert value.strip() == f'String value is: {confident_bundle}'


def test_topic_echo_shows_the_pose_of_a_published_image(launched):
    env, client, _ = launched
    poses = client.subscribe(PoseWithCovarianceStamped, f'{NODE}/pose', RELIABLE_LATCHED)
    images = client.publisher(Image, '/robot/image', 5)
    tf = client.publisher(TFMessage, '/tf', TF_QOS)
    # The camera's mounting, as a robot's URDF publishes it: the node has no default extrinsic.
    static_tf = client.publisher(TFMessage, '/tf_static', TF_STATIC_QOS)
    mount = TransformStamped()
    mount.header.stamp = ns_to_stamp(client.now_ns())
    mount.header.frame_id, mount.child_frame_id = 'base_link', 'camera'
    mount.transform.rotation.w = 1.0
    static_tf.publish(TFMessage(transforms=[mount]))
    client.wait_for_subscribers(images)
    for _ in range(3):
        stamp = client.now_ns()
        odom = TransformStamped()
        odom.header.stamp = ns_to_stamp(stamp)
        odom.header.frame_id, odom.child_frame_id = 'odom', 'base_link'
        odom.transform.rotation.w = 1.0
        tf.publish(TFMessage(transforms=[odom]))
        images.publish(rgb_to_image_msg(small_photos()['astronaut'], 'rgb8', stamp, 'camera'))
        try:
            pose = poses.wait_for(lambda m, s=stamp: stamp_to_ns(m.header.stamp) == s, 15.0,
                                  'the pose')
            break
        except AssertionError:
            continue
    else:
        raise AssertionError('no pose for three images')
    # The pose is latched, so echo started afterwards still receives it. Asked for explicitly:
    # echo matches the QoS of the publishers it has discovered when it subscribes, and on a
    # loaded machine (two CI runs) it had discovered none, subscribed volatile and waited.
    echoed = ros2(env, 'topic', 'echo', '--once', '--no-daemon', '--qos-durability',
                  'transient_local', '--qos-reliability', 'reliable', f'{NODE}/pose')
    assert 'frame_id: map' in echoed
    assert f'x: {pose.pose.pose.position.x}' in echoed


def test_service_call_relocalize(launched):
    env, _, _ = launched
    out = ros2(env, 'service', 'call', f'{NODE}/relocalize', 'std_srvs/srv/Trigger')
    assert 'success=True' in out and 'relocalization armed' in out


def test_lifecycle_set_deactivate(launched):
    env, client, log_path = launched
    assert 'Transitioning successful' in ros2(env, 'lifecycle', 'set', NODE, 'deactivate',
                                              '--no-daemon')
    assert client.get_state(NODE) == 'inactive'
    assert 'deactivated: not processing images' in log_path.read_text()
