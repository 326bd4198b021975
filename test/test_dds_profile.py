"""The Fast DDS image profile: where it is found, who keeps their own, and that it works.

The functional test is the reason the profile exists: without it a best-effort subscriber in
another process receives about one 640x480 frame in ten at 30 Hz (config/fastdds_images.xml).
"""
from pathlib import Path
import subprocess
import sys
import threading
import time
import xml.etree.ElementTree as ElementTree

import numpy as np
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import Image

from mspr_ros.runtime.dds_profile import image_profile_path, PROFILE_VARIABLES, with_image_profile
from ros_harness import domain_id, REPO, ros_env, RosClient, stop_process_group, wait_until

FRAMES = 60
RATE_HZ = 30.0
# A best-effort subscriber may miss the odd frame on a loaded machine; without the profile it
# missed nine in ten.
MIN_DELIVERED = 50

COUNTER = """
import sys, rclpy
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import Image
rclpy.init()
node = rclpy.create_node('image_counter')
count = 0
def on_image(msg):
    global count
    count += 1
    print(count, msg.width * msg.height, flush=True)
node.create_subscription(Image, 'image', on_image, qos_profile_sensor_data)
print('ready', flush=True)
try:
    rclpy.spin(node)
except BaseException:
    pass
"""


def test_the_profile_is_the_checkout_file_and_a_valid_fast_dds_profile():
    path = image_profile_path()
    assert path == REPO / 'config' / 'fastdds_images.xml'
    root = ElementTree.parse(path).getroot()
    ns = {'dds': 'http://www.eprosima.com'}
    segment = root.find('.//dds:transport_descriptor[dds:type="SHM"]/dds:segment_size', ns)
    # Room for a 1080p rgb8 image, the point of the profile; not so much that a container's
    # default 64 MiB /dev/shm cannot hold a camera driver, the node and a few ros2 commands.
    assert 1920 * 1080 * 3 < int(segment.text) <= 8 << 20
    participant = root.find('.//dds:participant', ns)
    assert participant.get('is_default_profile') == 'true'


def test_a_process_gets_the_profile_unless_a_profile_is_chosen():
    assert with_image_profile({})[PROFILE_VARIABLES[0]] == str(image_profile_path())
    for name in PROFILE_VARIABLES:
        env = {name: '/robot/dds.xml'}
        assert with_image_profile(env) == {name: '/robot/dds.xml'}
    assert with_image_profile({'FASTDDS_DEFAULT_PROFILES_FILE': ''})[PROFILE_VARIABLES[0]] == str(
        image_profile_path())


def test_best_effort_640x480_at_30_hz_crosses_processes_with_the_profile(tmp_path):
    domain = domain_id(11)
    env = ros_env(domain)
    assert Path(env[PROFILE_VARIABLES[0]]) == image_profile_path()
    counter = subprocess.Popen([sys.executable, '-c', COUNTER], env=env, stdout=subprocess.PIPE,
                               text=True, start_new_session=True)
    counts = []  # the counter's running total, one entry per frame it received
    reader = threading.Thread(target=lambda: counts.extend(
        int(line.split()[0]) for line in counter.stdout if line.split()[0].isdigit()),
        daemon=True)
    client = RosClient(domain, name='image_profile_test')
    try:
        assert counter.stdout.readline().strip() == 'ready'
        reader.start()
        publisher = client.publisher(Image, 'image', qos_profile_sensor_data)
        client.wait_for_subscribers(publisher)
        data = np.random.default_rng(0).integers(0, 255, 640 * 480 * 3, np.uint8).tobytes()
        msg = Image(height=480, width=640, encoding='rgb8', step=640 * 3, data=data)

        def delivered_one():
            publisher.publish(msg)
            return bool(counts)
        # Best effort: the shared-memory ports connect after matching; a camera just goes on.
        wait_until(delivered_one, 20.0, 'a first 640x480 frame through the profile', 0.1)
        before = len(counts)
        for _ in range(FRAMES):
            publisher.publish(msg)
            time.sleep(1.0 / RATE_HZ)  # the camera's rate is what is tested
        try:
            wait_until(lambda: len(counts) - before >= FRAMES, 5.0, 'every frame')
        except AssertionError:
            pass  # lost frames are counted below
        received = len(counts) - before
    finally:
        client.close()
        stop_process_group(counter)
    assert received >= MIN_DELIVERED, (
        f'{received} of {FRAMES} best-effort 640x480 frames arrived with the image profile')
