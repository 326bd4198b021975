"""Start mspr_localizer under a Nav2 lifecycle manager (``config/nav2_lifecycle.yaml``).

Example (beside Nav2's AMCL, in the robot's namespace, with your own parameters)::

    ros2 launch mspr_ros nav2_managed.launch.py setup:=amcl weights:=/path/model.safetensors \
        namespace:=robot params_file:=/path/mine.yaml

The localizer comes from ``setup.launch.py`` (its ``setup``, ``params_file`` and
``ekf_params_file`` arguments: a planar set-up, then your files over it) with
``autostart:=false``; the manager (``nav2_lifecycle_manager`` as ``lifecycle_manager_mspr``,
``bond_timeout: 4.0``) configures and activates it, watches its bond, and on shutdown
deactivates, cleans up and shuts it down. ``manager_params_file`` (comma-separated) is loaded
after ``config/nav2_lifecycle.yaml`` and overrides it. Without Nav2 installed the localizer is
started alone and waits, unconfigured, for ``ros2 lifecycle set``.
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
MANAGER_PACKAGE = 'nav2_lifecycle_manager'
MANAGER_NAME = 'lifecycle_manager_mspr'
SETUPS = ('standalone', 'amcl', 'ekf')
FORWARDED = ('setup', 'params_file', 'ekf_params_file', 'weights', 'device', 'use_sim_time',
             'namespace', 'image_topic', 'log_level')


def _share(*parts):
    return os.path.join(get_package_share_directory(PACKAGE), *parts)


def _manager(context):
    """Start Nav2's lifecycle manager when it is installed."""
    try:
        get_package_share_directory(MANAGER_PACKAGE)
    except PackageNotFoundError:
        return [LogInfo(msg=f'{MANAGER_PACKAGE} is not installed: mspr_localizer waits, '
                            'unconfigured, for ros2 lifecycle set')]
    # The shipped file first, then the user's: later files override earlier ones.
    files = [_share('config', 'nav2_lifecycle.yaml')] + params_files(
        LaunchConfiguration('manager_params_file').perform(context), 'manager_params_file')
    use_sim_time = LaunchConfiguration('use_sim_time').perform(context)
    # Same namespace as the localizer: node_names and the bond topic resolve in it.
    return [Node(package=MANAGER_PACKAGE, executable='lifecycle_manager', name=MANAGER_NAME,
                 output='screen', namespace=LaunchConfiguration('namespace').perform(context),
                 parameters=files + [{'use_sim_time': use_sim_time.lower() in ('true', '1')}])]


def generate_launch_description():
    """Declare the arguments; include the set-up's localizer unstarted and add the manager."""
    arguments = [
        DeclareLaunchArgument('setup', default_value='standalone',
                              description='standalone, amcl or ekf (setup.launch.py)',
                              choices=list(SETUPS)),
        DeclareLaunchArgument('params_file', default_value='',
                              description="your mspr_localizer parameter file(s), comma-"
                                          "separated, loaded after the set-up's file"),
        DeclareLaunchArgument('ekf_params_file', default_value='',
                              description='your EKF parameter file(s), comma-separated, loaded '
                                          'after config/ekf_map.yaml (setup:=ekf)'),
        DeclareLaunchArgument('manager_params_file', default_value='',
                              description='your lifecycle manager parameter file(s), comma-'
                                          'separated, loaded after config/nav2_lifecycle.yaml'),
        DeclareLaunchArgument('weights', default_value='',
                              description='weights bundle (.safetensors); empty: params file'),
        DeclareLaunchArgument('device', default_value='',
                              description='auto, cpu, cuda or cuda:N; empty: from params file'),
        DeclareLaunchArgument('use_sim_time', default_value='false', description='use /clock'),
        DeclareLaunchArgument('namespace', default_value='', description='node namespace'),
        DeclareLaunchArgument('image_topic', default_value='image',
                              description='camera image topic (remap of image)'),
        DeclareLaunchArgument('log_level', default_value='info',
                              description='debug, info, warn, error or fatal'),
    ]
    localizer = IncludeLaunchDescription(
        PythonLaunchDescriptionSource(_share('launch', 'setup.launch.py')),
        launch_arguments=[(name, LaunchConfiguration(name)) for name in FORWARDED]
        + [('autostart', 'false'), ('rviz', 'false')])
    return LaunchDescription(arguments + [localizer, OpaqueFunction(function=_manager)])
