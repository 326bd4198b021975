"""Launch the mspr_ros localizer (and optionally RViz).

Example::

    ros2 launch mspr_ros localize.launch.py weights:=/path/model.safetensors namespace:=robot \
        image_topic:=/camera/color/image_raw rviz:=true

``params_file`` takes one file or several, comma-separated (``params_file:=a.yaml,b.yaml``):
they are loaded in order, so a later file overrides an earlier one (``setup.launch.py`` puts the
set-up's file first and yours after it). Write the node's key as ``/**/mspr_localizer:`` so that
it matches under any ``namespace``. Arguments left empty (``weights``, ``device``) keep the
value of the parameter files; the others override them.

``FASTDDS_DEFAULT_PROFILES_FILE`` is set to ``config/fastdds_images.xml`` unless a profile is
already set: with Fast DDS's default 512 KiB shared-memory segment, 640x480 images go over UDP
and a best-effort subscription loses most frames. The camera driver needs it too (README).
"""
import os

from ament_index_python.packages import get_package_share_directory, PackageNotFoundError
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, LogInfo, OpaqueFunction, SetEnvironmentVariable
from launch.substitutions import EnvironmentVariable, LaunchConfiguration
from launch_ros.actions import Node

from mspr_ros.ros.launch_arguments import params_files

PACKAGE = 'mspr_ros'
# Fast DDS reads the first; a user who set the older name keeps that profile.
PROFILE_VARIABLE = 'FASTDDS_DEFAULT_PROFILES_FILE'
LEGACY_PROFILE_VARIABLE = 'FASTRTPS_DEFAULT_PROFILES_FILE'
TRUE_WORDS = ('true', '1', 'yes', 'on')


def _share(*parts):
    return os.path.join(get_package_share_directory(PACKAGE), *parts)


def _as_bool(text):
    return text.strip().lower() in TRUE_WORDS


def parameter_overrides(value):
    """Typed parameters the launch arguments set on top of ``params_file``.

    Empty ``weights``/``device`` are left out so that the parameter file decides.
    """
    overrides = {'use_sim_time': _as_bool(value['use_sim_time']),
                 'autostart': _as_bool(value['autostart'])}
    for name in ('weights', 'device'):
        if value[name]:
            overrides[name] = value[name]
    return overrides


def image_remappings(image_topic):
    """Remap the raw input and its image_transport-style compressed sibling."""
    return [('image', image_topic), ('image/compressed', image_topic + '/compressed')]


def _launch_setup(context):
    """Build the nodes from the evaluated arguments."""
    value = {name: LaunchConfiguration(name).perform(context)
             for name in ('params_file', 'weights', 'device', 'use_sim_time', 'namespace',
                          'image_topic', 'autostart', 'rviz', 'log_level')}
    overrides = parameter_overrides(value)
    image_topic = value['image_topic']
    actions = [Node(
        package=PACKAGE, executable='localizer', name='mspr_localizer',
        namespace=value['namespace'], output='screen',
        parameters=params_files(value['params_file']) + [overrides],
        remappings=image_remappings(image_topic),
        arguments=['--ros-args', '--log-level', value['log_level']])]
    if _as_bool(value['rviz']):
        try:
            get_package_share_directory('rviz2')
        except PackageNotFoundError:
            actions.append(LogInfo(msg='rviz:=true but rviz2 is not installed; not starting it'))
        else:
            # Same namespace and image remap as the localizer: the config's topics are relative.
            actions.append(Node(
                package='rviz2', executable='rviz2', name='rviz2', output='screen',
                namespace=value['namespace'], remappings=[('image', image_topic)],
                arguments=['-d', _share('rviz', 'mspr_ros.rviz')],
                parameters=[{'use_sim_time': overrides['use_sim_time']}]))
    return actions


def generate_launch_description():
    """Declare the arguments, the transport setting and the nodes."""
    arguments = [
        DeclareLaunchArgument('params_file', default_value=_share('config', 'mspr_ros.yaml'),
                              description='mspr_localizer parameter file(s), comma-separated; '
                                          'later files override earlier ones'),
        DeclareLaunchArgument('weights', default_value='',
                              description='weights bundle (.safetensors); empty: params_file'),
        DeclareLaunchArgument('device', default_value='',
                              description='auto, cpu, cuda or cuda:N; empty: from params_file'),
        DeclareLaunchArgument('use_sim_time', default_value='false',
                              description='use /clock (bag replay with --clock)'),
        DeclareLaunchArgument('namespace', default_value='', description='node namespace'),
        DeclareLaunchArgument('image_topic', default_value='image',
                              description='camera image topic (remap of image)'),
        DeclareLaunchArgument('autostart', default_value='true',
                              description='configure and activate at start-up'),
        DeclareLaunchArgument('rviz', default_value='false',
                              description='start RViz with rviz/mspr_ros.rviz'),
        DeclareLaunchArgument('log_level', default_value='info',
                              description='debug, info, warn, error or fatal'),
    ]
    return LaunchDescription(arguments + [
        SetEnvironmentVariable(PROFILE_VARIABLE, EnvironmentVariable(
            PROFILE_VARIABLE, default_value=EnvironmentVariable(
                LEGACY_PROFILE_VARIABLE, default_value=_share('config', 'fastdds_images.xml')))),
        OpaqueFunction(function=_launch_setup),
    ])
