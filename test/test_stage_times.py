"""The node's stage times: recorded for whole frames only, and subtracted exactly by benchmarks.

A frame rejected part-way (no TF yet, a camera it cannot read) counts as processed, but has no
'total'. When its decode and inference times were still recorded, and the latency benchmark
subtracted the warm-up report using the processed count, the measured frames' stage means came
out wrong: 63.75 ms for frames of 45 ms after three warm-up frames without TF (the case below).
"""
import pytest

from mspr_ros.ros.diagnostics import (build_status, LATENCY_WINDOW, LocalizationStats, NodeInfo,
                                      STAGES)


@pytest.fixture(scope='module')
def node_session(benchmarks_on_path):
    """Return benchmarks/common/node_session.py."""
    from common import node_session as module
    return module


def stage_times(total: float):
    """Return stage times of one frame that add up to ``total`` (ms)."""
    parts = dict.fromkeys(STAGES[:-1], total / (len(STAGES) - 1))
    return {**parts, 'total': total}


def report(stats: LocalizationStats):
    """Return the node's diagnostics key-values, as a benchmark reads them."""
    info = NodeInfo(node_name='localizer', lifecycle_state='active')
    return {kv.key: kv.value for kv in build_status(info, stats.snapshot()).values}


def test_a_frame_rejected_part_way_is_processed_but_not_timed():
    stats = LocalizationStats()
    stats.frame_processed()
    stats.rejected('tf_unavailable', 'no transform yet')
    stats.frame_processed()
    stats.frame_timed(stage_times(30.0))
    snapshot = stats.snapshot()
    assert (snapshot.processed, snapshot.timed) == (2, 1)
    assert {stage: summary.count for stage, summary in snapshot.latency.items()} == dict.fromkeys(
        STAGES, 1)
    values = report(stats)
    assert (values['frames processed'], values['frames timed']) == ('2', '1')
    assert values['total latency mean (ms)'] == '30.00'


def test_a_frame_is_timed_with_every_stage_or_not_at_all():
    stats = LocalizationStats()
    with pytest.raises(ValueError, match='expected'):
        stats.frame_timed({'decode': 1.0, 'total': 1.0})
    assert stats.snapshot().timed == 0
    assert all(summary.count == 0 for summary in stats.snapshot().latency.values())


def test_the_benchmark_recovers_the_measured_frames_after_rejected_warm_up(node_session):
    stats = LocalizationStats()
    # Warm-up: three frames without TF, then one slow first inference.
    for _ in range(3):
        stats.frame_processed()
        stats.rejected('tf_unavailable', 'no transform yet')
    stats.frame_processed()
    stats.frame_timed(stage_times(20.0))
    before = report(stats)
    measured = [45.0, 44.0, 46.0]
    for total in measured:
        stats.frame_processed()
        stats.frame_timed(stage_times(total))
    after = report(stats)
    means, covered = node_session.stage_means_of_measured(before, after, len(measured))
    assert covered == len(measured)
    # The node prints 2 decimals; the subtraction of two rounded means stays within 0.01 ms.
    assert means['total'] == pytest.approx(45.0, abs=0.01)
    assert sum(means[stage] for stage in STAGES[:-1]) == pytest.approx(means['total'], abs=0.05)


def test_the_benchmark_refuses_frames_it_did_not_send(node_session):
    stats = LocalizationStats()
    stats.frame_processed()
    stats.frame_timed(stage_times(10.0))
    before = report(stats)
    stats.frame_processed()
    stats.rejected('tf_unavailable', 'no transform yet')
    stats.frame_processed()
    stats.frame_timed(stage_times(10.0))
    with pytest.raises(RuntimeError, match='timed 1 while 2 were measured'):
        node_session.stage_means_of_measured(before, report(stats), 2)


def test_past_the_window_the_last_window_is_reported(node_session):
    stats = LocalizationStats()
    for _ in range(LATENCY_WINDOW):
        stats.frame_processed()
        stats.frame_timed(stage_times(10.0))
    before = report(stats)
    for _ in range(5):
        stats.frame_processed()
        stats.frame_timed(stage_times(20.0))
    means, covered = node_session.stage_means_of_measured(before, report(stats), 5)
    assert covered == LATENCY_WINDOW
    assert means['total'] == pytest.approx((95 * 10.0 + 5 * 20.0) / LATENCY_WINDOW, abs=0.01)
