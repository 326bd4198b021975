"""Posed-image dataset readers and the multi-scene torch dataset.

Every reader returns ``PoseSample`` objects in our pose convention (``T_scene_cam``, see
docs/architecture.md) and raises ``DatasetError`` naming the file and line of bad input.
"""
from mspr_training.data.cambridge import read_cambridge
from mspr_training.data.label_csv import read_label_csv
from mspr_training.data.multiscene import MultiSceneDataset
from mspr_training.data.rosbag import (BagImage, BagReadResult, BagReadStats, iter_bag_images,
                                       read_bag_trajectory, read_rosbag, read_rosbag_with_stats)
from mspr_training.data.samples import DatasetError, load_rgb, PoseSample
from mspr_training.data.seven_scenes import read_7scenes
from mspr_training.data.trajectory import Trajectory

__all__ = [
    'BagImage', 'BagReadResult', 'BagReadStats', 'DatasetError', 'iter_bag_images', 'load_rgb',
    'MultiSceneDataset', 'PoseSample', 'read_7scenes', 'read_bag_trajectory', 'read_cambridge',
    'read_label_csv', 'read_rosbag', 'read_rosbag_with_stats', 'Trajectory',
]
