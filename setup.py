"""ament_python package mspr_ros: multi-scene absolute pose regression for ROS 2."""
from glob import glob

from setuptools import find_packages, setup

package_name = 'mspr_ros'

setup(
    name=package_name,
    version='0.1.0',
    packages=find_packages(include=['mspr_ros', 'mspr_ros.*']),
    data_files=[
        ('share/ament_index/resource_index/packages', ['resource/' + package_name]),
        ('share/' + package_name, ['package.xml']),
        ('share/' + package_name + '/launch', glob('launch/*.launch.py')),
        ('share/' + package_name + '/config', glob('config/*.yaml') + glob('config/*.xml')),
        ('share/' + package_name + '/rviz', glob('rviz/*.rviz')),
    ],
    install_requires=['setuptools'],
    # Bundles exported with `mspr-export --onnx` (backend onnxruntime); torch otherwise.
    extras_require={'onnx': ['onnxruntime==1.32.0']},
    zip_safe=True,
    maintainer='mspr_ros developers',
    maintainer_email='mspr-ros@users.noreply.github.com',
    description='Multi-scene absolute pose regression (MS-Transformer with activated '
                'self-attention) as a ROS 2 relocalization node.',
    license='Apache-2.0',
    python_requires='>=3.10',
    entry_points={
        'console_scripts': [
            'localizer = mspr_ros.ros.node:main',
        ],
    },
)
