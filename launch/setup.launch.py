"""Start mspr_localizer in one of the worked set-ups of the README.

Example::

    ros2 launch mspr_ros setup.launch.py setup:=ekf weights:=/path/model.safetensors

- ``standalone``: ``config/setup_standalone.yaml``, the node owns map -> odom;
- ``amcl``: ``config/setup_amcl.yaml``, no TF from the node, its pose seeds AMCL through
  ``initialpose`` (AMCL itself comes from your Nav2 bring-up);
- ``ekf``: ``config/setup_ekf.yaml``, no TF from the node, and robot_localization's map-frame
  EKF (``config/ekf_map.yaml``, ``pose0`` = the node's pose) when it is installed.

The node comes from ``localize.launch.py`` (same arguments, its ``params_file`` chosen here).
"""
import os

from ament_index_python.packages import get_package_share_directory, PackageNotFoundError
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, IncludeLaunchDescription, LogInfo
from launch.actions import OpaqueFunction
from launch.launch_description_sources import PythonLaunchDescriptionSource
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

PACKAGE = 'mspr_ros'
SETUPS = ('standalone', 'amcl', 'ekf')
FORWARDED = ('weights', 'device', 'use_sim_time', 'namespace', 'image_topic', 'autostart',
             'rviz', 'log_level')
EKF_PACKAGE = 'robot_localization'


def _share(*parts):
    return os.path.join(get_package_share_directory(PACKAGE), *parts)


def setup_params_file(setup):
    """Return the parameter file of a set-up; ValueError names the known ones."""
    if setup not in SETUPS:
        raise ValueError(f"setup '{setup}' is not one of {', '.join(SETUPS)}")
    return _share('config', f'setup_{setup}.yaml')


def _launch_setup(context):
    """Include the localizer with the set-up's parameters; add the EKF for setup:=ekf."""
    setup = LaunchConfiguration('setup').perform(context)
    actions = [IncludeLaunchDescription(
        PythonLaunchDescriptionSource(_share('launch', 'localize.launch.py')),
        launch_arguments=[('params_file', setup_params_file(setup))]
        + [(name, LaunchConfiguration(name).perform(context)) for name in FORWARDED])]
    if setup == 'ekf':
        try:
            get_package_share_directory(EKF_PACKAGE)
        except PackageNotFoundError:
            actions.append(LogInfo(msg=f'{EKF_PACKAGE} is not installed: start its ekf_node '
                                       f"with {_share('config', 'ekf_map.yaml')}"))
        else:
            use_sim_time = LaunchConfiguration('use_sim_time').perform(context)
            actions.append(Node(
                package=EKF_PACKAGE, executable='ekf_node', name='ekf_filter_node_map',
                namespace=LaunchConfiguration('namespace').perform(context), output='screen',
                parameters=[_share('config', 'ekf_map.yaml'),
                            {'use_sim_time': use_sim_time.lower() in ('true', '1')}],
                remappings=[('odometry/filtered', 'odometry/global')]))
    return actions


def generate_launch_description():
    """Declare the arguments (those of localize.launch.py plus ``setup``)."""
    return LaunchDescription([
        DeclareLaunchArgument('setup', default_value='standalone',
                              description='standalone, amcl or ekf', choices=list(SETUPS)),
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
