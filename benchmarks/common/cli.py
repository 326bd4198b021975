"""The command line every benchmark shares: run mode, threads, output, OpenMP, node options."""
import argparse
import os
from pathlib import Path
import sys
from typing import List, Tuple

import yaml

from common.machine import MachineInfo, set_threads, start_report
from mspr_training.argument_types import parse_size  # noqa: F401 - the benchmarks' --image-size


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--smoke``, ``--quick``, ``--threads``, ``--out`` and ``--omp-wait-policy``."""
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument('--quick', action='store_true',
                      help='reduced sizes (make benchmarks); default out <name>.quick.json')
    mode.add_argument('--smoke', action='store_true',
                      help='tiny sizes, a few seconds: checks that the script works, the '
                           'figures mean nothing')
    parser.add_argument('--threads', type=int, default=2,
                        help='torch intra-op threads of every measured process (default 2)')
    parser.add_argument('--out', type=Path, default=None, help='JSON file to write')
    parser.add_argument('--omp-wait-policy', choices=('inherit', 'passive', 'active'),
                        default='inherit',
                        help="OpenMP waiting of this process and of the node it starts: "
                             "'passive' (idle threads sleep instead of spinning) keeps figures "
                             "stable on a machine shared with other work (benchmarks/README.md);"
                             " default: whatever the environment says")


def apply_omp_wait_policy(args: argparse.Namespace) -> None:
    """Re-run this script with ``OMP_WAIT_POLICY`` as ``--omp-wait-policy`` asks.

    OpenMP reads the policy once, when torch loads it, so changing it means starting again;
    the node inherits the environment.
    """
    if args.omp_wait_policy == 'inherit':
        return
    wanted = args.omp_wait_policy.upper()
    if os.environ.get('OMP_WAIT_POLICY') != wanted:
        sys.stdout.flush()
        os.execve(sys.executable, [sys.executable] + sys.argv,
                  dict(os.environ, OMP_WAIT_POLICY=wanted))


def run_mode(args: argparse.Namespace) -> str:
    """Return 'smoke', 'quick' or 'full'."""
    return 'smoke' if args.smoke else 'quick' if args.quick else 'full'


def begin(args: argparse.Namespace) -> Tuple[str, MachineInfo, List[str]]:
    """Start a benchmark run: OpenMP policy, threads, machine line; return (mode, machine, notes).

    ``notes`` holds the contention warning, if any; the benchmark adds its own caveats.
    """
    apply_omp_wait_policy(args)
    set_threads(args.threads)
    machine, notes = start_report(args.threads)
    return run_mode(args), machine, notes


def parse_node_param(text: str) -> tuple:
    """Parse ``name:=value`` (value as YAML, like ``--ros-args -p``) for argparse."""
    name, sep, raw = text.partition(':=')
    if not sep or not name:
        raise argparse.ArgumentTypeError(f'expected NAME:=VALUE, got {text!r}')
    try:
        return name, yaml.safe_load(raw)
    except yaml.YAMLError as error:
        raise argparse.ArgumentTypeError(f'{text!r}: value is not YAML: {error}') from None


def add_node_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--node-param NAME:=VALUE`` (repeatable) to a parser of a node benchmark."""
    parser.add_argument('--node-param', dest='node_params', type=parse_node_param,
                        action='append', default=[], metavar='NAME:=VALUE',
                        help='extra node parameter (repeatable), e.g. '
                             'transform_publish_period:=0.0')
