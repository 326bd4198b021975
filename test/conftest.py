"""Shared fixtures: a tiny model and its bundle, one rendered world, isolated torch state.

Other packages' tests (node, training) rely on ``tiny_bundle_path``: keep names and semantics.
"""
import logging
from pathlib import Path
import random
import sys
from typing import Dict, Iterator, Tuple

import numpy as np
import pytest
import torch

from mspr_ros.bundle import save_bundle
from mspr_ros.model.config import ModelConfig
from mspr_ros.model.ms_transformer import build_model
from mspr_training.synth import generate

TINY_SCENE_NAMES = ['atrium', 'corridor', 'lab']


@pytest.fixture(scope='session')
def tiny_model_config() -> ModelConfig:
    """Return a small, fast config: Lite0 ImageNet backbone, d=32, 1/1 layers, 3 scenes."""
    return ModelConfig(num_scenes=3, backbone='efficientnet_lite0', backbone_weights='imagenet',
                       hidden_dim=32, nheads=4, dim_feedforward=32, enc_layers_t=1,
                       dec_layers_t=1, enc_layers_rot=1, dec_layers_rot=1, feature_pool=2)


@pytest.fixture(scope='session')
def tiny_bundle_path(tiny_model_config: ModelConfig, tmp_path_factory) -> Path:
    """Save a seeded tiny model with scenes atrium, corridor, lab; return the bundle path."""
    torch.manual_seed(0)
    model = build_model(tiny_model_config)
    path = tmp_path_factory.mktemp('bundle') / 'tiny.safetensors'
    return save_bundle(path, model, tiny_model_config, TINY_SCENE_NAMES,
                       provenance={'source': 'test/conftest.py tiny random heads'})


def tree_state(root: Path) -> Dict[str, Tuple[int, int]]:
    """Return relative path -> (size, modification time in ns) of every file below ``root``."""
    return {str(path.relative_to(root)): (path.stat().st_size, path.stat().st_mtime_ns)
            for path in sorted(root.rglob('*')) if path.is_file()}


@pytest.fixture(scope='session')
def tiny_world(tmp_path_factory) -> Iterator[Path]:
    """Render 3 tiny scenes (12 train / 6 test frames each, 96 x 72) in Cambridge format.

    Rendered once per test run and shared by the training tests, so it is read-only: a test that
    must change it works on a copy (``shutil.copytree``). The run fails at the end if a file
    below it was added, removed or rewritten (permissions would not stop root).
    """
    out = tmp_path_factory.mktemp('world')
    generate(out, formats=('cambridge',), num_scenes=3, train_frames=12, test_frames=6,
             size=(96, 72))
    rendered = tree_state(out)
    yield out / 'cambridge'
    changed = sorted(set(rendered.items()) ^ set(tree_state(out).items()))
    if changed:
        pytest.fail(f'a test changed the shared rendered world {out}: '
                    f'{sorted({path for path, _ in changed})[:10]}')


@pytest.fixture(autouse=True)
def project_loggers_propagate():
    """Keep the project's loggers propagating to the root, where caplog listens.

    Importing ROS 2's ``launch`` (the launch-file tests do, in this process) sets the logger
    class to one whose new loggers do not propagate. A module of ours imported after that, such
    as ``mspr_ros.localizer`` in a later test, would log to nowhere that caplog sees.
    """
    saved_class = logging.getLoggerClass()
    logging.setLoggerClass(logging.Logger)  # loggers first made during the test propagate
    for name, logger in list(logging.Logger.manager.loggerDict.items()):
        if name.split('.')[0] in ('mspr_ros', 'mspr_training') and isinstance(
                logger, logging.Logger):
            logger.propagate = True
    yield
    logging.setLoggerClass(saved_class)


@pytest.fixture(scope='module')
def isolated_torch():
    """Train in this process with one thread; restore the global torch/RNG state after the module.

    One thread, as the subprocesses of the training tests run (``OMP_NUM_THREADS=1``); training
    also seeds the generators and picks deterministic kernels, which later modules must not see.
    """
    saved = (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled(),
             torch.is_deterministic_algorithms_warn_only_enabled(),
             torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic,
             torch.get_rng_state(), np.random.get_state(), random.getstate())
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved[0])
    torch.use_deterministic_algorithms(saved[1], warn_only=saved[2])
    torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = saved[3:5]
    torch.set_rng_state(saved[5])
    np.random.set_state(saved[6])
    random.setstate(saved[7])


@pytest.fixture(scope='module')
def benchmarks_on_path() -> Iterator[Path]:
    """Put benchmarks/ on ``sys.path`` for one test module; yield the folder.

    The benchmarks import ``common`` by path, as ``python benchmarks/x.py`` runs them.
    """
    folder = Path(__file__).resolve().parents[1] / 'benchmarks'
    sys.path.insert(0, str(folder))
    try:
        yield folder
    finally:
        sys.path.remove(str(folder))
