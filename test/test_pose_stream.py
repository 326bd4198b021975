"""The pose stream the node publishes (mspr_ros.estimation.pose_stream): gate, then fusion."""
import numpy as np

from mspr_ros.estimation.error_correlation import ErrorCorrelation
from mspr_ros.estimation.frame_processor import FrameProcessor, ProcessorSettings
from mspr_ros.estimation.fusion import FusionConfig
from mspr_ros.estimation.gating import GateConfig
from mspr_ros.estimation.pose_stream import PoseStream
from mspr_ros.geometry.transforms import SceneAlignment, Transform

IDENTITY = Transform.identity()
QUATERNION = [0.0, 0.0, 0.0, 1.0]


def stream_of(fusion=FusionConfig(), two_d=False) -> PoseStream:
    """Return a one-scene stream with a 1 m jump gate."""
    processor = FrameProcessor({'s': SceneAlignment.identity()}, {'s': np.eye(6) * 0.01},
                               ProcessorSettings(GateConfig(max_jump_translation=1.0),
                                                 two_d_mode=two_d))
    return PoseStream(processor, fusion)


def test_relocalization_restarts_the_fusion_window():
    """A frame accepted without a jump check empties the window, as in the node."""
    stream = stream_of()
    processor = stream.processor
    sizes = []
    for k in range(4):
        output = stream.step('s', 1.0, [0.01 * k, 0.0, 0.0], QUATERNION, IDENTITY, IDENTITY,
                             k * 200_000_000)
        sizes.append(output.fused.window_size)
    assert sizes == [1, 2, 3, 4]
    assert not stream.step('s', 1.0, [9.0, 0.0, 0.0], QUATERNION, IDENTITY, IDENTITY,
                           900_000_000).published  # a jump: kept out of the window
    processor.request_relocalization()
    moved = stream.step('s', 1.0, [9.0, 0.0, 0.0], QUATERNION, IDENTITY, IDENTITY,
                        1_000_000_000)
    assert moved.published and moved.estimate.relocalized
    assert moved.fused.window_size == 1  # the old place's samples are gone
    np.testing.assert_allclose(moved.T_map_base.translation, [9.0, 0.0, 0.0], atol=1e-9)


def test_without_fusion_an_accepted_frame_is_published_as_it_is():
    stream = stream_of(fusion=None)
    first = stream.step('s', 1.0, [1.0, 2.0, 0.3], QUATERNION, IDENTITY, IDENTITY, 0)
    assert first.published and first.fused is None
    np.testing.assert_allclose(first.T_map_base.translation, [1.0, 2.0, 0.3])
    np.testing.assert_allclose(first.covariance, first.estimate.covariance)
    rejected = stream.step('s', 0.2, [1.0, 2.0, 0.3], QUATERNION, IDENTITY, IDENTITY, 1)
    assert not rejected.published and rejected.estimate.decision.reason == 'low_confidence'


def test_reconfigure_restarts_only_on_a_change_and_two_d_flattens_the_fused_pose():
    stream = stream_of(fusion=FusionConfig(two_d=True), two_d=True)
    odom = Transform.from_xyz_rpy([0.5, 0.0, 0.0], [0.0, 0.0, 0.3])

    def step(k):
        return stream.step('s', 1.0, [1.0, 0.0, 0.4], QUATERNION, IDENTITY, odom,
                           k * 100_000_000)

    for k in range(3):
        output = step(k)
    assert output.fused.window_size == 3
    assert output.T_map_base.translation[2] == 0.0  # flattened as the node publishes it
    assert not stream.reconfigure(FusionConfig(two_d=True))  # unchanged: the window stays
    assert step(3).fused.window_size == 4
    assert stream.reconfigure(FusionConfig(window_s=3.0, two_d=True))
    assert step(4).fused.window_size == 1
    assert stream.reconfigure(None) and stream.fusion is None
    assert step(5).fused is None


def test_the_fusion_correlates_each_frame_by_its_scene_model():
    """Scene 's' errs alike on one view (one frame's covariance), unnamed scenes independently.

    Were the scene not passed on, the frames would take the default model: a quarter of it.
    """
    fusion = FusionConfig(error_correlation={'s': ErrorCorrelation.one_frame()},
                          default_correlation=ErrorCorrelation.independent())
    stream = stream_of(fusion=fusion)
    for k in range(4):
        output = stream.step('s', 1.0, [0.0, 0.0, 0.0], QUATERNION, IDENTITY, IDENTITY,
                             k * 200_000_000)
    assert output.fused.window_size == 4
    np.testing.assert_allclose(output.covariance, output.estimate.covariance, rtol=1e-9)
