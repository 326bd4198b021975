"""Run every benchmark one after the other (``make benchmarks``): quick sizes by default.

Each benchmark runs in its own process (so thread settings and the node processes of one never
touch the next) and writes its JSON under ``benchmarks/results/`` (``<name>.quick.json`` for
quick runs, ``<name>.json`` with ``--full``). Benchmarks run one at a time because they measure
the same CPU cores. The exit status is non-zero when any of them failed. Each results file
records its commit and whether the tree was dirty: run on a committed tree, then ``make
figures`` to render the tables of benchmarks/README.md and README.md from the new files.

Usage: ``python benchmarks/run_all.py [--full | --smoke] [--only latency stream ...]``
"""
import argparse
from dataclasses import dataclass
from pathlib import Path
import subprocess
import sys
import time
from typing import List, Optional, Sequence

BENCHMARKS_DIR = Path(__file__).resolve().parent
# model_speed.py belongs to the model code (forward latency per backbone, QKA step overhead).
NAMES = ('latency', 'throughput', 'stream', 'accuracy', 'model_speed', 'fusion', 'train_speed',
         'onnx_latency', 'gpu_latency', 'feature_views')


@dataclass
class Outcome:
    """How one benchmark ended."""

    name: str
    returncode: int
    seconds: float


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument('--full', action='store_true',
                      help='full sizes (the 10-minute stream, the hour-long accuracy run)')
    mode.add_argument('--smoke', action='store_true', help='tiny sizes: do the scripts work')
    parser.add_argument('--only', nargs='+', choices=NAMES, default=list(NAMES),
                        help='run only these benchmarks')
    parser.add_argument('--threads', type=int, default=2, help='torch threads (default 2)')
    parser.add_argument('--omp-wait-policy', choices=('inherit', 'passive', 'active'),
                        default='inherit', help='passed to every benchmark (see --help there)')
    return parser.parse_args(argv)


def command(name: str, args: argparse.Namespace) -> List[str]:
    """Return the command line of benchmark ``name``."""
    script = [sys.executable, str(BENCHMARKS_DIR / f'{name}.py')]
    mode = ['--smoke'] if args.smoke else [] if args.full else ['--quick']
    return script + mode + ['--threads', str(args.threads),
                            '--omp-wait-policy', args.omp_wait_policy]


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the selected benchmarks; return 1 when any failed."""
    args = parse_args(argv)
    outcomes: List[Outcome] = []
    for name in args.only:
        cmd = command(name, args)
        print(f"== {name}: {' '.join(cmd[1:])}", flush=True)
        started = time.perf_counter()
        returncode = subprocess.run(cmd, check=False).returncode
        outcomes.append(Outcome(name, returncode, time.perf_counter() - started))
    print('\n== summary')
    for outcome in outcomes:
        status = 'ok' if outcome.returncode == 0 else f'FAILED (exit {outcome.returncode})'
        print(f'{outcome.name:<14}{outcome.seconds:>8.0f} s  {status}')
    if not args.smoke:
        print('\nthen: make figures (renders the READMEs\' tables from benchmarks/results/)')
    return 1 if any(outcome.returncode for outcome in outcomes) else 0


if __name__ == '__main__':
    sys.exit(main())
