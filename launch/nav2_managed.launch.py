"""Start mspr_localizer under a Nav2 lifecycle manager (``config/nav2_lifecycle.yaml``).

Example::

    ros2 launch mspr_ros nav2_managed.launch.py weights:=/path/model.safetensors \
        params_file:=$(ros2 pkg prefix mspr_ros)/share/mspr_ros/config/setup_amcl.yaml

The localizer comes from ``localize.launch.py`` with ``autostart:=false``; the manager
(``nav2_lifecycle_manager``, ``bond_timeout: 0.0``) configures and activates it, and on shutdown
deactivates, cleans up and shuts it down. Without Nav2 installed the localizer is started alone
and waits, unconfigured, for ``ros2 lifecycle set``.
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
MANAGER_PACKAGE = 'nav2_lifecycle_manager'
FORWARDED = ('params_file', 'weights', 'device', 'use_sim_time', 'namespace', 'image_topic',
             'log_level')


def _share(*parts):
    return os.path.join(get_package_share_directory(PACKAGE), *parts)


def _manager(context):
    """Start Nav2's lifecycle manager when it is installed."""
    try:
        get_package_share_directory(MANAGER_PACKAGE)
    except PackageNotFoundError:
        return [LogInfo(msg=f'{MANAGER_PACKAGE} is not installed: mspr_localizer waits, '
                            'unconfigured, for ros2 lifecycle set')]
    return [Node(package=MANAGER_PACKAGE, executable='lifecycle_manager',
                 name='lifecycle_manager_mspr', output='screen',
                 namespace=LaunchConfiguration('namespace').perform(context),
                 parameters=[LaunchConfiguration('manager_params_file').perform(context),
                             {'use_sim_time': LaunchConfiguration('use_sim_time')
                              .perform(context).lower() in ('true', '1')}])]


def generate_launch_description():
    """Declare the arguments; include the localizer unstarted and add the manager."""
    arguments = [
        DeclareLaunchArgument('params_file', default_value=_share('config', 'mspr_ros.yaml'),
                              description='YAML file with the mspr_localizer parameters'),
        DeclareLaunchArgument('manager_params_file',
                              default_value=_share('config', 'nav2_lifecycle.yaml'),
                              description='YAML file with the lifecycle manager parameters'),
        DeclareLaunchArgument('weights', default_value='',
                              description='weights bundle (.safetensors); empty: params_file'),
        DeclareLaunchArgument('device', default_value='',
                              description='auto, cpu, cuda or cuda:N; empty: from params_file'),
        DeclareLaunchArgument('use_sim_time', default_value='false', description='use /clock'),
        DeclareLaunchArgument('namespace', default_value='', description='node namespace'),
        DeclareLaunchArgument('image_topic', default_value='image',
                              description='camera image topic (remap of image)'),
        DeclareLaunchArgument('log_level', default_value='info',
                              description='debug, info, warn, error or fatal'),
    ]
    localizer = IncludeLaunchDescription(
        PythonLaunchDescriptionSource(_share('launch', 'localize.launch.py')),
        launch_arguments=[(name, LaunchConfiguration(name)) for name in FORWARDED]
        + [('autostart', 'false'), ('rviz', 'false')])
    return LaunchDescription(arguments + [localizer, OpaqueFunction(function=_manager)])
