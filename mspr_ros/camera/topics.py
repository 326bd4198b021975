"""Where a camera's ``camera_info`` is published, by the image_transport convention.

A camera driver publishes ``<ns>/image_raw`` (or any image name) and ``<ns>/camera_info`` with
the same stamps; a compressed transport adds its name after the image topic
(``<ns>/image_raw/compressed``). ``camera_info`` therefore sits beside the base image topic.
Plain strings, so the node, the bag readers and the tools agree without ROS.
"""

#: Transport suffixes image_transport plug-ins append to the base image topic.
TRANSPORT_SUFFIXES = ('compressed', 'compressedDepth', 'theora', 'zstd', 'ffmpeg')


def camera_info_topic(image_topic: str) -> str:
    """Return the ``camera_info`` topic beside ``image_topic`` (a resolved or relative name).

    ``/camera/image_raw`` and ``/camera/image_raw/compressed`` give ``/camera/camera_info``;
    ``image`` gives ``camera_info``.
    """
    parts = image_topic.rstrip('/').split('/')
    if len(parts) > 1 and parts[-1] in TRANSPORT_SUFFIXES:
        parts = parts[:-1]
    return '/'.join(parts[:-1] + ['camera_info'])
