"""Any camera (issue 26): a wide, distorted robot camera reprojected into the training camera.

A pose regressor reads the pose from where things appear in the image, so a camera that is not
the training camera (wider, distorted, another resolution) feeds it a geometry it never saw;
the node now reprojects every image into the bundle's ``training_camera`` with the camera's
``camera_info``. For each rendered world (``--world-seeds``: 0, the world the recipes were tuned
on, and others generated at benchmark time that nothing was tuned on) this script renders the
world (``mspr_training.synth.generate``, Cambridge layout), trains the shipped ``synth_demo``
recipe with the real trainer and exports it, then re-plans the world's test walks with the
parameters ``manifest.json`` records and renders every test pose, with its walk's light, twice:
through the dataset camera (checked equal to the written test images and poses) and through
``synth.camera.wide_camera()`` (400 x 300, 90 deg, ``plumb_bob`` barrel distortion). Through
the ``Localizer``, per scene (median position and orientation error, predicted scene as
deployed, and scene accuracy):

- ``training``: the dataset camera's images, ``localize(rgb)``, as today;
- ``wide_reprojected``: the wide images, ``localize(rgb, camera=wide)`` (the reprojection);
- ``wide_resized``: the same wide images, ``localize(rgb)`` (resize and centre crop: the
  behaviour before issue 26), for contrast.

Goal: ``wide_reprojected`` within 15 % of ``training`` per scene, position and orientation
(ratio <= 1.15). Then the remap's cost per 640 x 480 frame of ``wide_camera(640, 480)`` into the
training camera (goal: median at most 2 ms; maps built once): ``Reprojection.apply`` beside
``preprocess_image`` with and without the reprojection, interleaved in one run, and the one-time
``Reprojection.build``. OpenCV runs ``--threads`` threads, as torch.

Training: the recipe as shipped (``data.calibration_split: crossfit``, so the deployed model
trains on every walk), but ``train(..., crossfit_folds=False)`` trains no fold runs and the
bundle is exported without calibration (``calibration_split=None``: default covariance, no
error correlation). The config has no 'none' split; the held-out 'calibration' split would
train a model without one walk per scene, which is not the shipped model. Nothing here reads
the covariance. One training seed (``--seed``).

Sizes: ``--smoke`` seconds (figures mean nothing), ``--quick`` 20 epochs (~10 min per world on
2 idle CPU cores; 33 min on 2 cores loaded by other work), default the recipe's 30 epochs. The
results file is rewritten after every world.

Usage: ``python benchmarks/camera.py [--quick | --smoke] [--world-seeds 0 1] [--seed 0]``
"""
import argparse
from dataclasses import asdict, dataclass
from pathlib import Path
import sys
import time
from typing import Any, Callable, Dict, List, Optional, Sequence

import cv2
import numpy as np
from scipy.spatial.transform import Rotation

from common import add_common_arguments, begin, default_out, run_mode, summarise, WORK_DIR
from common import write_results
from common.results import fresh_run_dir
from mspr_ros.bundle import load_bundle
from mspr_ros.camera.model import CameraModel
from mspr_ros.camera.reprojection import Reprojection
from mspr_ros.geometry.quaternions import quaternion_from_rotation
from mspr_ros.localizer import Localizer
from mspr_ros.preprocess import preprocess_image
from mspr_training.config import load_config
from mspr_training.datasets import read_split
from mspr_training.export import export_bundle
from mspr_training.metrics import compute_metrics, orientation_errors_deg, position_errors
from mspr_training.synth import build_world, generate, Manifest, plan_sequences, render
from mspr_training.synth import wide_camera
from mspr_training.train import train

NAME = 'camera'
INPUTS = ('training', 'wide_reprojected', 'wide_resized')
RATIO_GOAL = 1.15
REMAP_GOAL_MS = 2.0
REMAP_SIZE = (640, 480)


@dataclass(frozen=True)
class Budget:
    """World size, schedule, the wide camera's size and the remap timing's calls."""

    train_frames: int
    test_frames: int
    image_size: tuple
    train_sequences: int
    test_sequences: int
    epochs: int
    step_size: int
    wide_size: tuple
    remap_calls: int
    remap_warmup: int
    builds: int


BUDGETS = {
    'full': Budget(300, 100, (320, 240), 6, 2, 30, 24, (400, 300), 300, 30, 5),
    'quick': Budget(300, 100, (320, 240), 6, 2, 20, 16, (400, 300), 300, 30, 5),
    'smoke': Budget(8, 6, (96, 72), 2, 1, 1, 1, (120, 90), 10, 2, 2),
}


def parse_args(argv: Optional[Sequence[str]] = None,
               description: str = __doc__.split('\n')[0],
               more: Optional[Callable[[argparse.ArgumentParser], None]] = None
               ) -> argparse.Namespace:
    """Parse the command line (also ``int8_accuracy.py``'s: one recipe, both worlds, a seed).

    ``more`` adds a caller's own arguments to the parser.
    """
    parser = argparse.ArgumentParser(description=description)
    add_common_arguments(parser)
    parser.add_argument('--config', default='synth_demo', help='recipe (default synth_demo)')
    parser.add_argument('--world-seeds', type=int, nargs='+', default=[0, 1])
    parser.add_argument('--seed', type=int, default=0, help='training seed (default 0)')
    parser.add_argument('--device', default='cpu')
    if more is not None:
        more(parser)
    args = parser.parse_args(argv)
    args.budget = BUDGETS[run_mode(args)]
    return args


def rendered_world(budget: Budget, seed: int) -> Path:
    """Render (or reuse) the world of ``seed`` in the Cambridge layout; return its folder."""
    folder = WORK_DIR / (f'camera_world_seed{seed}_{budget.train_frames}_{budget.test_frames}_'
                         f'{budget.image_size[0]}x{budget.image_size[1]}')
    started = time.perf_counter()
    manifest = generate(folder, formats=('cambridge',), num_scenes=3,
                        train_frames=budget.train_frames, test_frames=budget.test_frames,
                        size=budget.image_size, seed=seed,
                        train_sequences=budget.train_sequences,
                        test_sequences=budget.test_sequences)
    print(f"{'reused' if manifest.cached else 'rendered'} world in {folder} "
          f'({time.perf_counter() - started:.0f} s): {manifest.counts}', flush=True)
    return folder


def overrides(budget: Budget, seed: int, device: str) -> List[str]:
    """Return the config overrides of the run: schedule, seeds, bookkeeping, data."""
    return [f'schedule.epochs={budget.epochs}', f'schedule.step_size={budget.step_size}',
            f'seed.torch={seed}', f'seed.numpy={seed + 2}', f'seed.python={seed}',
            f'seed.sampler={seed}', 'checkpoint.every_epochs=0', 'checkpoint.every_iters=0',
            'validation.every_epochs=0', 'validation.at_end=false', 'logging.progress=false',
            'logging.tensorboard=false', f'device={device}', 'data.format=cambridge',
            'data.scenes=null']


def train_bundle(cfg: Any, world: Path, run_dir: Path, shared_cache: Path, device: str
                 ) -> Dict[str, Any]:
    """Train the deployed model only (no fold runs), export it uncalibrated; return its record."""
    fresh_run_dir(run_dir, shared_cache)
    root = world / 'cambridge'
    started = time.perf_counter()
    train(cfg, run_dir, str(root), crossfit_folds=False)
    seconds = time.perf_counter() - started
    bundle_path, _ = export_bundle(run_dir, run_dir / 'model.safetensors', data_root=root,
                                   device=device, calibration_split=None)
    return {'bundle': str(bundle_path), 'train_seconds': seconds}


def test_walks(world_dir: Path) -> tuple:
    """Return the world, its test plans and dataset camera, re-planned from ``manifest.json``."""
    manifest = Manifest.read(world_dir / 'manifest.json')
    if manifest is None:
        raise RuntimeError(f'{world_dir}: no readable manifest.json')
    p = manifest.parameters
    world = build_world(p['seed'], p['num_scenes'])
    plans = plan_sequences(world, p['train_frames'], p['test_frames'], p['train_sequences'],
                           p['test_sequences'], p['test_conditions'])
    camera = CameraModel.from_fov(p['size'][0], p['size'][1], p['horizontal_fov_deg'])
    return world, [plan for plan in plans if plan.split == 'test'], camera


def horizontal_fov_deg(camera: CameraModel) -> float:
    """Return the horizontal field of view between the image's borders, distortion counted."""
    left, right = camera.normalized_coordinates(
        [[-0.5, camera.cy], [camera.width - 0.5, camera.cy]])[:, 0]
    return float(np.degrees(np.arctan(-left) + np.arctan(right)))


def truth(pose: np.ndarray) -> tuple:
    """Return (position, xyzw orientation of R_scene_cam) of a ``T_scene_cam``."""
    return pose[:3, 3], quaternion_from_rotation(Rotation.from_matrix(pose[:3, :3]))


def check_poses(cfg: Any, world_dir: Path, world: Any, plans: List[Any],
                camera: CameraModel) -> Dict[str, Any]:
    """Check the re-planned test walks against the written test split; return the figures.

    Every pose against its listing row, and the first and last frame of every walk rendered
    through the dataset camera against the written image (PNG: lossless, so equal).

    Raises:
        RuntimeError: a count, a pose or an image differs.
    """
    samples = read_split(cfg.data, cfg.data.test_split, world_dir / 'cambridge')
    worst_position = worst_angle = 0.0
    images = 0
    for scene in sorted({plan.scene for plan in plans}):
        mine = [plan for plan in plans if plan.scene == scene]
        poses = [(plan, index) for plan in mine for index in range(len(plan.poses))]
        written = samples.get(scene, [])
        if len(written) != len(poses):
            raise RuntimeError(f'{scene}: {len(poses)} planned test frames, '
                               f'{len(written)} written')
        positions, orientations = zip(*(truth(plan.poses[i]) for plan, i in poses))
        worst_position = max(worst_position, float(position_errors(
            positions, [s.position for s in written]).max()))
        worst_angle = max(worst_angle, float(orientation_errors_deg(
            orientations, [s.orientation for s in written]).max()))
        for sample, (plan, index) in zip(written, poses):
            if index not in (0, len(plan.poses) - 1):
                continue
            rgb = render(world.scene(scene), plan.poses[index], camera, plan.lighting).rgb
            stored = cv2.cvtColor(cv2.imread(str(sample.image_path)), cv2.COLOR_BGR2RGB)
            if not np.array_equal(rgb, stored):
                raise RuntimeError(f'{sample.image_path}: the re-rendered frame differs')
            images += 1
    if worst_position > 1e-6 or worst_angle > 1e-3:
        raise RuntimeError(f're-planned test poses differ from the written ones by up to '
                           f'{worst_position} m, {worst_angle} deg')
    return {'frames': sum(len(plan.poses) for plan in plans), 'images_compared': images,
            'max_position_m': worst_position, 'max_orientation_deg': worst_angle}


def localize_walks(localizer: Localizer, world: Any, plans: List[Any], camera: CameraModel,
                   wide: CameraModel) -> Dict[str, Any]:
    """Localise every test frame as each input; return per-input per-scene figures."""
    names = localizer.scene_names
    gt_scene, gt_position, gt_orientation = [], [], []
    predicted: Dict[str, List[Any]] = {name: [] for name in INPUTS}
    for plan in plans:
        scene = world.scene(plan.scene)
        plain = [render(scene, pose, camera, plan.lighting).rgb for pose in plan.poses]
        distorted = [render(scene, pose, wide, plan.lighting).rgb for pose in plan.poses]
        # Batched: the same preprocessing and model per image as localize(), fewer calls.
        predicted['training'].extend(localizer.localize_batch(plain))
        predicted['wide_reprojected'].extend(localizer.localize_batch(distorted, camera=wide))
        predicted['wide_resized'].extend(localizer.localize_batch(distorted))
        for pose in plan.poses:
            position, orientation = truth(pose)
            gt_scene.append(names.index(plan.scene))
            gt_position.append(position)
            gt_orientation.append(orientation)
    figures = {}
    for name, results in predicted.items():
        report = compute_metrics(names, gt_scene, gt_position, gt_orientation,
                                 [r.scene_index for r in results],
                                 [r.position for r in results],
                                 [r.orientation for r in results])
        figures[name] = {
            'average_median_position_m': report.average_median_position_m,
            'average_median_orientation_deg': report.average_median_orientation_deg,
            'scene_accuracy': report.scene_accuracy,
            'scenes': {s.scene: {'images': s.images, 'median_position_m': s.median_position_m,
                                 'median_orientation_deg': s.median_orientation_deg,
                                 'scene_accuracy': s.scene_accuracy} for s in report.scenes}}
    return figures


def goal(inputs: Dict[str, Any]) -> Dict[str, Any]:
    """Return the per-scene ratios to ``training`` and the verdict of the 15 % goal."""
    base = inputs['training']['scenes']
    per_scene = {}
    for scene, reference in base.items():
        ratios = {}
        for name in ('wide_reprojected', 'wide_resized'):
            other = inputs[name]['scenes'][scene]
            ratios[name] = {key: other[f'median_{key}'] / reference[f'median_{key}']
                            if reference[f'median_{key}'] > 0 else None
                            for key in ('position_m', 'orientation_deg')}
        worst = max(v if v is not None else float('inf')
                    for v in ratios['wide_reprojected'].values())
        per_scene[scene] = {'ratios': ratios, 'worst_ratio': worst,
                            'met': worst <= RATIO_GOAL}
    return {'ratio_goal': RATIO_GOAL, 'per_scene': per_scene,
            'met': all(s['met'] for s in per_scene.values())}


def timed(call: Callable[[], Any]) -> float:
    """Return the milliseconds one call of ``call`` takes."""
    started = time.perf_counter()
    call()
    return (time.perf_counter() - started) * 1e3


def summary(values: List[float]) -> Dict[str, Any]:
    """Return ``common.summarise``'s figures with the 90th percentile."""
    return {**asdict(summarise(values)), 'p90': float(np.percentile(values, 90))}


def remap_cost(localizer: Localizer, budget: Budget, world: Any, plan: Any) -> Dict[str, Any]:
    """Time the remap of a 640 x 480 wide frame, the build, and preprocessing with and without."""
    camera = wide_camera(*REMAP_SIZE)
    rgb = render(world.scene(plan.scene), plan.poses[0], camera, plan.lighting).rgb
    target = localizer.training_camera
    builds = [timed(lambda: Reprojection.build(camera, target)) for _ in range(budget.builds)]
    reprojection = localizer.reprojection(camera)
    cfg = localizer.bundle.preprocessing
    paths = {'remap': lambda: reprojection.apply(rgb),
             'preprocess_resize_crop': lambda: preprocess_image(rgb, cfg),
             'preprocess_reprojected': lambda: preprocess_image(rgb, cfg, reprojection)}
    samples: Dict[str, List[float]] = {name: [] for name in paths}
    # Interleaved: each round calls every path once, so a load change touches all alike.
    for call in range(budget.remap_warmup + budget.remap_calls):
        for name, path in paths.items():
            elapsed = timed(path)
            if call >= budget.remap_warmup:
                samples[name].append(elapsed)
    timings = {name: summary(values) for name, values in samples.items()}
    return {'camera': camera.to_dict(), 'target': target.to_dict(),
            'prescale': reprojection.prescale, 'coverage': reprojection.coverage,
            'calls': budget.remap_calls, 'warmup': budget.remap_warmup,
            'build_ms': summary(builds), 'ms': timings, 'goal_ms': REMAP_GOAL_MS,
            'goal_met': timings['remap']['p50'] <= REMAP_GOAL_MS}


def measure_world(args: argparse.Namespace, mode: str, world_seed: int,
                  wide: CameraModel) -> tuple:
    """Render, train, export and localise on one world; return (record, localizer, world)."""
    budget = args.budget
    world_dir = rendered_world(budget, world_seed)
    cfg = load_config(args.config, overrides(budget, args.seed, args.device))
    work = WORK_DIR / f'camera_runs_{mode}'
    print(f'world {world_seed}: training {args.config} ({budget.epochs} epochs, seed '
          f'{args.seed}, no fold runs)', flush=True)
    trained = train_bundle(cfg, world_dir, work / f'world{world_seed}_seed{args.seed}',
                           work / f'feature_cache_world{world_seed}', args.device)
    record: Dict[str, Any] = {'world_seed': world_seed, 'seed': args.seed, **trained}
    localizer = Localizer(load_bundle(record['bundle']), device=args.device)
    training_camera = localizer.training_camera
    if training_camera is None:
        raise RuntimeError(f"the bundle records no training camera: "
                           f"{localizer.training_camera_problem}")
    world, plans, camera = test_walks(world_dir)
    record['pose_check'] = check_poses(cfg, world_dir, world, plans, camera)
    reprojection = localizer.reprojection(wide)
    record['cameras'] = {
        name: {**cam.to_dict(), 'horizontal_fov_deg': horizontal_fov_deg(cam)}
        for name, cam in (('dataset', camera), ('training', training_camera), ('wide', wide))}
    record['cameras']['wide_reprojection'] = {
        'coverage': reprojection.coverage, 'covers': reprojection.covers,
        'prescale': reprojection.prescale}
    started = time.perf_counter()
    record['inputs'] = localize_walks(localizer, world, plans, camera, wide)
    record['localize_seconds'] = time.perf_counter() - started
    record['goal'] = goal(record['inputs'])
    return record, localizer, (world, plans)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the benchmark; return the exit status."""
    args = parse_args(argv)
    mode, machine, notes = begin(args)
    cv2.setNumThreads(args.threads)
    budget = args.budget
    if mode == 'smoke':
        notes.append('smoke run: a handful of images and one epoch; the figures mean nothing')
    wide = wide_camera(*budget.wide_size)
    out_path = args.out or default_out(NAME, mode)
    settings = {'threads': args.threads, 'opencv_threads': cv2.getNumThreads(),
                'budget': budget, 'config': args.config, 'world_seeds': args.world_seeds,
                'seed': args.seed, 'device': args.device,
                'overrides': overrides(budget, args.seed, args.device),
                'training': 'deployed run only (train(crossfit_folds=False)), exported with '
                            'calibration_split=None', 'wide_camera': wide.to_dict(),
                'ratio_goal': RATIO_GOAL, 'remap_goal_ms': REMAP_GOAL_MS,
                'remap_size': list(REMAP_SIZE)}
    worlds: List[Dict[str, Any]] = []
    remap = None
    for world_seed in args.world_seeds:
        record, localizer, (world, plans) = measure_world(args, mode, world_seed, wide)
        worlds.append(record)
        if not record['cameras']['wide_reprojection']['covers']:
            notes.append(f'world {world_seed}: the wide camera sees only '
                         f"{record['cameras']['wide_reprojection']['coverage']:.1%} of the "
                         'training camera (the rest of the network input is black)')
        for scene, verdict in record['goal']['per_scene'].items():
            r = verdict['ratios']
            print(f"  {scene}: reprojected / training position "
                  f"{r['wide_reprojected']['position_m']:.2f}, orientation "
                  f"{r['wide_reprojected']['orientation_deg']:.2f}; resized "
                  f"{r['wide_resized']['position_m']:.2f} / "
                  f"{r['wide_resized']['orientation_deg']:.2f}", flush=True)
        if remap is None:
            remap = {'world_seed': world_seed, **remap_cost(localizer, budget, world, plans[0])}
            print(f"remap {REMAP_SIZE[0]}x{REMAP_SIZE[1]}: median "
                  f"{remap['ms']['remap']['p50']:.2f} ms, p90 {remap['ms']['remap']['p90']:.2f}"
                  f" ms; build {remap['build_ms']['p50']:.1f} ms", flush=True)
        partial = ([] if len(worlds) == len(args.world_seeds) else
                   [f'partial: {len(worlds)} of {len(args.world_seeds)} worlds done when this '
                    'file was written'])
        out = write_results(out_path, NAME, mode, machine, settings=settings,
                            results={'worlds': worlds, 'remap': remap,
                                     'worlds_planned': len(args.world_seeds)},
                            notes=notes + partial)
    print(f'\nwrote {out}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
