"""Start mspr_localizer in one of the worked set-ups of the README.

Example::

    ros2 launch mspr_ros setup.launch.py setup:=ekf weights:=/path/model.safetensors \
        namespace:=robot params_file:=/path/mine.yaml

- ``standalone``: ``config/setup_standalone.yaml``, the node owns map -> odom;
- ``amcl``: ``config/setup_amcl.yaml``, no TF from the node, its pose seeds AMCL through
  ``initialpose`` (AMCL itself comes from your Nav2 bring-up);
- ``ekf``: ``config/setup_ekf.yaml``, no TF from the node, and robot_localization's map-frame
  EKF (``config/ekf_map.yaml``, ``pose0`` = the node's ``~/pose_update``) when it is installed.

Every set-up is planar (``two_d_mode: true``). Your own parameter files go in ``params_file``
(the node) and ``ekf_params_file`` (the EKF), one or several comma-separated; each node loads
them after the set-up's file, so they override it (as Nav2's bring-up merges a user's
``params_file``): ``base_frame_id``, ``allowed_scenes``, the ``scenes.<name>.map_from_scene``
lines ``mspr-align`` writes, ``two_d_mode: false`` for 6-DoF, without editing installed files.
Write their keys as ``/**/mspr_localizer:`` and ``/**/ekf_filter_node_map:`` so that they match
under any ``namespace``.

The node comes from ``localize.launch.py`` (same arguments; its ``params_file`` is the set-up's
file followed by yours).
"""
import os

from ament_index_python.packages import get_package_share_directory, PackageNotFoundError
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, IncludeLaunchDescription, LogInfo
from launch.actions import OpaqueFunction
from launch.launch_description_sources import PythonLaunchDescriptionSource
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from mspr_ros.ros.launch_arguments import params_files

PACKAGE = 'mspr_ros'
SETUPS = ('standalone', 'amcl', 'ekf')
FORWARDED = ('weights', 'device', 'use_sim_time', 'namespace', 'image_topic', 'autostart',
             'rviz', 'log_level')
EKF_PACKAGE = 'robot_localization'
EKF_NODE_NAME = 'ekf_filter_node_map'


def _share(*parts):
    return os.path.join(get_package_share_directory(PACKAGE), *parts)


def setup_params_file(setup):
    """Return the parameter file of a set-up; ValueError names the known ones."""
    if setup not in SETUPS:
        raise ValueError(f"setup '{setup}' is not one of {', '.join(SETUPS)}")
    return _share('config', f'setup_{setup}.yaml')


def _launch_setup(context):
    """Include the localizer with the set-up's parameters; add the EKF for setup:=ekf."""
    value = {name: LaunchConfiguration(name).perform(context)
             for name in ('setup', 'params_file', 'ekf_params_file') + FORWARDED}
    # The set-up's file first, then the user's: later files override earlier ones.
    node_files = ([setup_params_file(value['setup'])]
                  + params_files(value['params_file']))
    actions = [IncludeLaunchDescription(
        PythonLaunchDescriptionSource(_share('launch', 'localize.launch.py')),
        launch_arguments=[('params_file', ','.join(node_files))]
        + [(name, value[name]) for name in FORWARDED])]
    if value['setup'] == 'ekf':
        ekf_files = ([_share('config', 'ekf_map.yaml')]
                     + params_files(value['ekf_params_file'], 'ekf_params_file'))
        try:
            get_package_share_directory(EKF_PACKAGE)
        except PackageNotFoundError:
            actions.append(LogInfo(msg=f'{EKF_PACKAGE} is not installed: start its ekf_node '
                                       f"as {EKF_NODE_NAME} with {' '.join(ekf_files)}"))
        else:
            actions.append(Node(
                package=EKF_PACKAGE, executable='ekf_node', name=EKF_NODE_NAME,
                namespace=value['namespace'], output='screen',
                parameters=ekf_files + [
                    {'use_sim_time': value['use_sim_time'].lower() in ('true', '1')}],
                remappings=[('odometry/filtered', 'odometry/global')]))
    return actions


def generate_launch_description():
    """Declare the arguments (those of localize.launch.py, ``setup`` and the user's files)."""
    return LaunchDescription([
        DeclareLaunchArgument('setup', default_value='standalone',
                              description='standalone, amcl or ekf', choices=list(SETUPS)),
        DeclareLaunchArgument('params_file', default_value='',
                              description="your mspr_localizer parameter file(s), comma-"
                                          "separated, loaded after the set-up's file"),
        DeclareLaunchArgument('ekf_params_file', default_value='',
                              description='your EKF parameter file(s), comma-separated, loaded '
                                          'after config/ekf_map.yaml (setup:=ekf)'),
        DeclareLaunchArgument('weights', default_value='',
                              description='weights bundle (.safetensors); empty: params file'),
        DeclareLaunchArgument('device', default_value='',
                              description='auto, cpu, cuda or cuda:N; empty: from params file'),
        DeclareLaunchArgument('use_sim_time', default_value='false', description='use /clock'),
        DeclareLaunchArgument('namespace', default_value='', description='node namespace'),
        DeclareLaunchArgument('image_topic', default_value='image',
                              description='camera image topic (remap of image)'),
        DeclareLaunchArgument('autostart', default_value='true',
                              description='configure and activate at start-up (false when a '
                                          'lifecycle manager does it)'),
        DeclareLaunchArgument('rviz', default_value='false', description='start RViz'),
        DeclareLaunchArgument('log_level', default_value='info',
                              description='debug, info, warn, error or fatal'),
        OpaqueFunction(function=_launch_setup),
    ])
