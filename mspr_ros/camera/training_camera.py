"""The one camera every scene of a bundle was trained with (ROS-free).

The network sees an image before it knows the scene, so an image can be brought to one training
camera only (:mod:`mspr_ros.camera.reprojection`): the scenes' cameras, as the bundle records them
at the network's input, must agree.
"""
from mspr_ros.camera.model import CameraModel

#: Largest relative difference of two scenes' training cameras (focal lengths; principal points
#: relative to the crop) for them to count as one camera, as mspr_training.training_camera's
#: mixed-camera spread.
TRAINING_CAMERA_TOLERANCE = 0.02


def bundle_training_camera(bundle) -> tuple[CameraModel | None, str | None]:
    """Return the one camera every scene of ``bundle`` was trained with, or None and why.

    ``bundle``: a ``mspr_ros.bundle.Bundle`` (its ``training_camera`` and ``scene_names``). The
    scenes' cameras must agree within :data:`TRAINING_CAMERA_TOLERANCE`.
    """
    cameras = bundle.training_camera
    missing = [name for name in bundle.scene_names if name not in cameras]
    if len(missing) == len(bundle.scene_names):
        return None, ('the bundle records no training camera (exported before cameras were '
                      'recorded, or trained on images that state none)')
    if missing:
        return None, f'the bundle records no training camera for scenes {missing}'
    first = bundle.scene_names[0]
    reference = cameras[first]
    crop = reference.width
    for name in bundle.scene_names[1:]:
        camera = cameras[name]
        focal = max(abs(camera.fx - reference.fx) / reference.fx,
                    abs(camera.fy - reference.fy) / reference.fy)
        centre = max(abs(camera.cx - reference.cx), abs(camera.cy - reference.cy)) / crop
        if max(focal, centre) > TRAINING_CAMERA_TOLERANCE:
            return None, (f'scenes {first!r} and {name!r} were trained with different cameras '
                          f'(fx {reference.fx:.1f} vs {camera.fx:.1f} px at the network input); '
                          'one image cannot be brought to both')
    return reference, None
