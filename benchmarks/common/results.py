"""Where a benchmark writes: its JSON document of figures, and its intermediate files.

Every benchmark writes one JSON document (``--out``; default ``benchmarks/results/<name>.json``,
``<name>.quick.json`` with ``--quick``, the work folder with ``--smoke``) holding the figures
together with the machine they were measured on, the settings used and the run's provenance
(commit, dirty tree, command line, package versions, threads, load at start and end:
``mspr_training.provenance``), which ``benchmarks/figures.py`` puts in every table's caption.
Intermediate files (rendered worlds, bundles, training runs, node logs) go under
``artifacts/benchmarks/`` (ignored by git) or ``$MSPR_BENCHMARK_WORK``.
"""
from dataclasses import asdict
import json
import os
from pathlib import Path
import shutil
from typing import Any, Dict, Optional, Sequence

from common.machine import load_average, MachineInfo, omp_wait_policy
from mspr_training import provenance
from mspr_training.plain_json import jsonable

REPO = Path(__file__).resolve().parents[2]
RESULTS_DIR = REPO / 'benchmarks' / 'results'
# Rendered worlds, bundles, training runs and node logs; the smoke test points it at a tmp dir.
WORK_DIR = Path(os.environ.get('MSPR_BENCHMARK_WORK', REPO / 'artifacts' / 'benchmarks'))


def default_out(name: str, mode: str) -> Path:
    """Return the default JSON path of benchmark ``name`` in ``mode``.

    Smoke runs never overwrite the recorded results: they go to the work folder.
    """
    if mode == 'smoke':
        return WORK_DIR / 'smoke' / f'{name}.json'
    return RESULTS_DIR / (f'{name}.json' if mode == 'full' else f'{name}.quick.json')


def write_results(path: Path, name: str, mode: str, machine: MachineInfo,
                  settings: Dict[str, Any], results: Dict[str, Any],
                  notes: Sequence[str] = ()) -> Path:
    """Write one benchmark's JSON document and return its path.

    Layout: ``benchmark``, ``mode``, ``machine``, ``load_average_end``, ``provenance``
    (``mspr_training.provenance.run_record``: git commit and dirty state, command line,
    package versions, threads, start and end dates and loads), ``settings`` (with the OpenMP
    wait policy in force), ``results`` (benchmark-specific) and ``notes`` (caveats printed
    during the run).
    """
    document = {
        'benchmark': name, 'mode': mode, 'machine': machine,
        'load_average_end': load_average(),
        'provenance': provenance.run_record(asdict(machine)),
        'settings': {**settings, 'omp_wait_policy': omp_wait_policy()},
        'results': results, 'notes': list(notes),
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(jsonable(document), indent=2, allow_nan=False) + '\n')
    return path


def save_results(out: Optional[Path], name: str, mode: str, machine: MachineInfo,
                 settings: Dict[str, Any], results: Dict[str, Any],
                 notes: Sequence[str] = ()) -> int:
    """Write the document to ``out`` (None: :func:`default_out`), say where; return 0.

    The last step of a benchmark's ``main``: its return value is the exit status.
    """
    path = write_results(out or default_out(name, mode), name, mode, machine, settings,
                         results, notes)
    print(f'\nwrote {path}')
    return 0


def fresh_run_dir(run_dir: Path, shared_cache: Path) -> None:
    """Empty ``run_dir`` for a new training run whose feature cache is ``shared_cache``.

    Every run on one world reads the same frozen-backbone maps: they are computed once, in
    ``shared_cache``, which the run sees as its ``feature_cache`` folder.
    """
    if run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    shared_cache.mkdir(parents=True, exist_ok=True)
    os.symlink(shared_cache, run_dir / 'feature_cache', target_is_directory=True)
