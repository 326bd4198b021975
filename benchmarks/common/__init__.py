"""Helpers of the benchmark scripts, one module per idea.

- ``machine``: where a figure was measured (CPU, cores, torch, load, commit and dirty tree via
  ``mspr_training.provenance``), threads, contention note;
- ``cli``: the shared command line (``--smoke``/``--quick``, ``--threads``, ``--out``, OpenMP
  wait policy, ``--node-param``) and ``begin``, the first step of every benchmark;
- ``stats``: ``Summary`` / ``summarise`` of measured samples;
- ``results``: the JSON document of a run with its provenance, and where it goes
  (``save_results``), the work folder;
- ``models``: model sizes and configurations, parameter counts, seeded random bundles;
- ``frames``: rendered camera frames of the synthetic world;
- ``node_session``: the node under measurement in its own process on a free ROS domain, and
  this process's client (images out, poses and diagnostics in);
- ``arrivals``: pose arrival times by stamp; ``process_memory``: resident and GPU memory;
- ``markdown``, ``tables_speed``, ``tables_training``, ``tables_uncertainty``,
  ``tables_calibration``, ``tables_camera``: the rendered tables of the READMEs
  (``benchmarks/figures.py``, ``make figures``): markers, captions, one table per results file.

Benchmarks import nothing from ``test/``: what they share with the node tests lives in
``mspr_training.node_process`` and ``mspr_training.ros_client``. The names the flat
``common.py`` had stay importable from ``common`` (resolved on first use, so a script pays only
for the modules it uses).
"""
import importlib
from typing import Any

# Name -> the module that defines it, for scripts written against the flat ``common.py``.
_MOVED = {
    'common.cli': ('add_common_arguments', 'add_node_arguments', 'apply_omp_wait_policy',
                   'begin', 'parse_node_param', 'parse_size', 'run_mode'),
    'common.frames': ('rendered_frames',),
    'common.machine': ('contention_note', 'cpu_model', 'machine_info', 'MachineInfo',
                       'omp_wait_policy', 'print_machine', 'set_threads', 'start_report'),
    'common.models': ('model_config', 'MODEL_SIZES', 'parameter_count', 'save_random_bundle',
                      'SCENE_NAMES'),
    'common.node_session': ('BASE_TO_CAMERA', 'CAMERA_FRAME', 'free_domain', 'NodeSession',
                            'node_parameters', 'stage_means'),
    'common.process_memory': ('gpu_memory_mib',),
    'common.results': ('default_out', 'REPO', 'RESULTS_DIR', 'save_results', 'WORK_DIR',
                       'write_results'),
    'common.stats': ('summarise', 'Summary'),
}
_HOME = {name: module for module, names in _MOVED.items() for name in names}


def __getattr__(name: str) -> Any:
    """Return ``name`` from the module that defines it (``from common import X`` keeps working)."""
    if name not in _HOME:
        raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
    return getattr(importlib.import_module(_HOME[name]), name)
