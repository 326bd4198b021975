r"""``mspr-bag-eval``: measure the localizer on a rosbag2 recording, offline or live.

Users judge a localizer by replaying their own recordings, so there are two ways to run it:

- offline (default): the bag is read with ``rosbags`` and every image goes through the core
  ``mspr_ros.localizer.Localizer`` (``bag_offline``): no ROS runtime, exact per-frame numbers;
- ``--live``: the real node is started and the bag replayed to it over DDS with ``/clock``
  (``bag_live``): what a robot sees, including end-to-end latency and the frames the node drops.

Both write the same report (``bag_report``): ``report.json``, ``report.md`` and PNG plots, with the
accuracy metrics of ``mspr_training.metrics`` (shared with ``mspr-evaluate``) and, when the node
fuses, per-frame vs fused (``bags.fusion_compare``: offline the node's stream replayed, live its
own ``~/pose_raw``, ``~/pose`` and ``~/pose_update``). ``--write-bag``
also stores the estimates in a new rosbag2 recording for RViz or Foxglove.

Why this tool lives in ``mspr_training`` and not in ``mspr_ros.tools``: it needs the dataset and
bag readers, the metrics and the plotting stack (matplotlib) that the deployed node does not.
The node package stays lean, and the dependency runs one way: ``mspr_training`` depends on
``mspr_ros``, never the reverse.

Examples::

    mspr-bag-eval run.mcap_folder --weights model.safetensors --out eval_offline
    mspr-bag-eval run --weights model.safetensors --live --rate 1.0 --out eval_live \
        --param min_scene_confidence:=0.3
    mspr-bag-eval run --weights W --gt-frames map base_link   # base pose from TF ground truth
"""
import argparse
import logging
from pathlib import Path
import sys

from mspr_training.bags.offline import (alignment_overrides, DEFAULT_IMAGE_TOPIC,
                                        default_params_file, evaluate_offline, GroundTruthSpec,
                                        NODE_NAME, read_node_parameters)
from mspr_training.bags.report import build_report
from mspr_training.bags.report_files import write_output_bag, write_report
from mspr_training.data.samples import DatasetError

LOGGER = logging.getLogger('mspr-bag-eval')
NS_PER_S = 1_000_000_000
_BAG_SUFFIXES = {'.mcap': 'mcap', '.db3': 'sqlite3'}


def _parameter(text: str) -> tuple[str, str]:
    """Parse ``name:=value`` (value as YAML text, as ``ros2 run ... -p``)."""
    name, separator, value = text.partition(':=')
    if not separator or not name:
        raise argparse.ArgumentTypeError(f'expected NAME:=VALUE, got {text!r}')
    return name, value


def build_parser() -> argparse.ArgumentParser:
    """Return the command-line parser of ``mspr-bag-eval``."""
    parser = argparse.ArgumentParser(
        prog='mspr-bag-eval',
        description='Measure the localizer on a rosbag2 recording: offline through the core '
                    'Localizer, or --live by replaying the bag through the node over DDS.',
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog='Without --gt-topic/--gt-frames, /ground_truth/camera_pose is used when the bag '
               'has it; a bag without ground truth still gives the trajectory and the timing.')
    parser.add_argument('bag', type=Path, help='rosbag2 folder (mcap or sqlite3)')
    parser.add_argument('--weights', required=True, type=Path, help='.safetensors bundle')
    parser.add_argument('--image-topic', default=DEFAULT_IMAGE_TOPIC,
                        help='sensor_msgs/Image or CompressedImage topic (default %(default)s)')
    truth = parser.add_mutually_exclusive_group()
    truth.add_argument('--gt-topic', help='ground-truth camera pose topic (PoseStamped, '
                       'PoseWithCovarianceStamped or Odometry)')
    truth.add_argument('--gt-frames', nargs=2, metavar=('FIXED', 'MOVING'),
                       help='ground truth from TF: MOVING frame in FIXED frame (camera frame: '
                            'compare camera poses; e.g. base_link: compare base poses)')
    truth.add_argument('--no-ground-truth', action='store_true',
                       help='ignore any ground truth in the bag')
    parser.add_argument('--gt-static-tf-topic', action='append', default=None,
                        help='static TF topic for --gt-frames (repeatable; default /tf_static '
                             'plus /ground_truth/tf_static when present)')
    parser.add_argument('--scene-topic', default=None,
                        help='std_msgs/String scene topic (default /ground_truth/scene if any)')
    parser.add_argument('--max-gap', type=float, default=0.2,
                        help='largest ground-truth gap (s) to interpolate across')
    parser.add_argument('--live', action='store_true',
                        help='replay the bag through the real node over DDS')
    parser.add_argument('--out', type=Path, default=None,
                        help='report folder (default ./<bag>_<mode>_eval)')
    parser.add_argument('--device', default='auto', help='auto, cpu, cuda or cuda:N')
    parser.add_argument('--rate', type=float, default=1.0,
                        help='live playback speed relative to the recording')
    parser.add_argument('--write-bag', type=Path, default=None,
                        help='also write the estimates to this new bag (.db3: sqlite3, '
                             'otherwise mcap)')
    parser.add_argument('--params', type=Path, default=None,
                        help='node parameter file (default: the shipped config/mspr_ros.yaml)')
    parser.add_argument('--param', type=_parameter, action='append', default=[],
                        metavar='NAME:=VALUE', help='node parameter override (repeatable)')
    parser.add_argument('--domain-id', type=int, default=None,
                        help='ROS domain of the live run (default: ROS_DOMAIN_ID)')
    parser.add_argument('--startup-timeout', type=float, default=120.0,
                        help='seconds for the node to become active (live)')
    parser.add_argument('--node-name', default=NODE_NAME, help='name given to the node (live)')
    parser.add_argument('--quiet', action='store_true', help='no progress bars')
    return parser


def _ground_truth_spec(args) -> GroundTruthSpec:
    static_topics = tuple(args.gt_static_tf_topic) if args.gt_static_tf_topic else None
    return GroundTruthSpec(
        topic=args.gt_topic, frames=tuple(args.gt_frames) if args.gt_frames else None,
        scene_topic=args.scene_topic, max_gap_ns=int(round(args.max_gap * NS_PER_S)),
        static_tf_topics=static_topics, enabled=not args.no_ground_truth)


def output_bag_location(path: Path) -> tuple[Path, str]:
    """Return (bag folder, storage) for ``--write-bag``: ``x.db3`` -> (``x``, sqlite3)."""
    storage = _BAG_SUFFIXES.get(path.suffix, 'mcap')
    return (path.with_suffix('') if path.suffix in _BAG_SUFFIXES else path), storage


def run(args) -> int:
    """Evaluate as the parsed arguments say; return the exit status."""
    if not args.rate > 0:
        raise ValueError(f'--rate must be positive, got {args.rate}')
    params_file = args.params if args.params is not None else default_params_file()
    overrides = dict(args.param)
    parameters = read_node_parameters(params_file, args.node_name, overrides)
    spec = _ground_truth_spec(args)
    if args.write_bag is not None and output_bag_location(args.write_bag)[0].exists():
        raise FileExistsError(f'{output_bag_location(args.write_bag)[0]}: already exists '
                              '(--write-bag never overwrites)')
    mode = 'live' if args.live else 'offline'
    out_dir = args.out or Path(f'{args.bag.name}_{mode}_eval')
    out_dir.mkdir(parents=True, exist_ok=True)
    if args.live:
        from mspr_ros.bundle import load_bundle
        from mspr_training.bags.live import evaluate_live, LiveOptions
        # Fail in a second on a bad bundle rather than after the node's start-up.
        load_bundle(args.weights)
        options = LiveOptions(
            weights=args.weights, params_file=params_file, parameters=overrides,
            device=args.device, domain_id=args.domain_id,
            startup_timeout_s=args.startup_timeout, node_log=out_dir / 'node.log')
        evaluation = evaluate_live(args.bag, options, args.image_topic, spec, args.rate,
                                   progress=not args.quiet)
    else:
        from mspr_ros.localizer import Localizer
        localizer = Localizer.from_file(args.weights, device=args.device)
        evaluation = evaluate_offline(
            args.bag, localizer, args.image_topic, spec, alignment_overrides(parameters),
            str(parameters['global_frame_id']), progress=not args.quiet, weights=args.weights,
            parameters=parameters)
    report = build_report(evaluation)
    files = write_report(report, out_dir)
    counts = report.counts
    print(f'{mode}: {counts.answered}/{counts.images} frames answered, {counts.dropped} dropped, '
          f'{counts.bad_images} bad images')
    if report.latency is not None:
        print(f'{evaluation.latency_kind} latency: median {report.latency.median_ms:.1f} ms, '
              f'p95 {report.latency.p95_ms:.1f} ms')
    if report.metrics is not None:
        print(f'median error (average over scenes): '
              f'{report.metrics.average_median_position_m:.3f} m, '
              f'{report.metrics.average_median_orientation_deg:.2f} deg')
    if evaluation.fusion is not None:
        rows = [evaluation.fusion[name] for name in ('per_frame', 'fused')]
        print('p95 position error per-frame / fused: ' + ' / '.join(
            f"{row['position_m']['p95']:.3f}" for row in rows) + ' m; position jitter: '
            + ' / '.join(f"{row['jitter']['position_m']:.3f}" for row in rows) + ' m')
        print('inside 2 sigma per-frame / fused: ' + '; '.join(
            f'{key} ' + ' / '.join(f"{100 * row['coverage_2sigma'][key]:.1f}" for row in rows)
            + ' %' for key in ('position', 'rotation')) + ' (nominal 73.9 %)')
    print(f'report: {files.markdown} and {files.json}')
    if args.write_bag is not None:
        folder, storage = output_bag_location(args.write_bag)
        print(f'estimates bag: {write_output_bag(evaluation, folder, storage)}')
    return 0


def main(argv=None) -> int:
    """Run ``mspr-bag-eval``; bad input ends with a one-line error and status 1."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format='%(levelname)s %(name)s: %(message)s')
    from mspr_ros.bundle import BundleError
    errors = (DatasetError, BundleError, ValueError, FileExistsError)
    if args.live:
        from mspr_training.bags.live import LiveEvaluationError
        errors += (LiveEvaluationError,)
    try:
        return run(args)
    except errors as error:
        print(f'mspr-bag-eval: error: {error}', file=sys.stderr)
        return 1


if __name__ == '__main__':
    sys.exit(main())
