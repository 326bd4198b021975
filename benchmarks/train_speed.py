"""Speed of ``mspr-train``'s step before and after issue 18's changes, one process per variant.

The step is the trainer's own: ``build_model`` of a bundled config with ``freeze_parameters``,
``build_criterion`` (pose, scene and QKA terms), ``engine.TrainStep``, Adam as configured,
``set_train_mode`` and the loop body of ``engine.train_one_epoch`` (zero_grad, forward + losses,
finite check, backward, optimizer step), on a random batch of the shape the trainer feeds:
images at the crop, or the frozen backbone's maps where it caches them. Sizes: ``paper``
(``7scenes_ours``: B0 trained, d=256, 6+6 / 6+6, QKA, batch 8, 224x224; random backbone weights,
denormals flushed as in ``throughput.py``) and ``demo`` (``synth_demo``: cached Lite0 maps, d=64,
2+2 / 2+2, batch 32). Variants, each in a fresh process whose environment has no ``MALLOC_*`` or
``GLIBC_TUNABLES`` (so allocator settings and peak RSS cannot leak between them):

- ``baseline``: the step before the issue: glibc's defaults, plain ``nn.MultiheadAttention``;
- ``allocator``: plus ``allocator.configure_for_training()`` first (what mspr-train calls);
- ``chunked``: plus the encoders' chunked attention (today's ``mspr-train``);
- ``ms_depth_4x4``: the baseline with the orientation branch at 4+4 layers (MS-Transformer's
  depth stand-in);
- ``tcmalloc`` (only when named in ``--variants``; needs ``libtcmalloc-minimal4``): chunked
  attention with tcmalloc preloaded, as ``mspr-train`` runs where it is installed.

Per variant: the median step and images/s at it (the per-step figure), images/s over all measured
steps (the batch over the mean step), forward / backward / optimizer split (means), peak RSS
(``ru_maxrss``), minor faults, user and system time per step (``getrusage`` deltas, all threads,
means), and what was active (the tuning's answer, the attention modules' switch, chunked calls
counted in a warm-up step).
Goals (issue 18), paper size: today's step (``tcmalloc`` where it ran, else ``chunked``) at
least 2.2x ``baseline``'s images/s and no slower than ``ms_depth_4x4``; its system time under
10 % of its CPU time. The ratios are given both ways: ``ratios`` of images/s over all steps and
``ratios_median_step`` of median steps (``goals`` holds both).

Usage: ``python benchmarks/train_speed.py [--quick | --smoke] [--size paper|demo|both]
[--variants baseline,chunked]``
"""
import argparse
from dataclasses import dataclass
import json
import os
from pathlib import Path
import resource
import subprocess
import sys
import tempfile
import time
from typing import Any, Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F

from common.cli import add_common_arguments, begin, run_mode
from common.machine import set_threads
from common.process_memory import resident_bytes
from common.results import save_results
from common.stats import summarise
from mspr_ros.model import chunked_attention
from mspr_ros.model.chunked_attention import MemoryEfficientAttention
from mspr_ros.model.ms_transformer import build_model
from mspr_ros.runtime import allocator
from mspr_training.config import load_config
from mspr_training.engine import TrainStep
from mspr_training.train import (backbone_is_static, build_criterion, configure_determinism,
                                 freeze_parameters, set_train_mode)

NAME = 'train_speed'
SIZES = {'paper': '7scenes_ours', 'demo': 'synth_demo'}
PHASES = ('forward', 'backward', 'optimizer')
GOAL_SPEEDUP = 2.2
GOAL_SYSTEM_SHARE = 0.10
# (warm-up, measured steps, rounds) per mode and size. Rounds run the variants interleaved,
# each round in fresh processes, so a load change on a shared machine hits every variant.
COUNTS = {'full': {'paper': (2, 6, 2), 'demo': (3, 24, 3)},
          'quick': {'paper': (1, 3, 1), 'demo': (2, 8, 1)},
          'smoke': {'paper': (1, 2, 1), 'demo': (1, 2, 1)}}
# A smoke run only proves the script works: tiny widths and 64x64 inputs (layer counts kept,
# so the per-variant depth and the chunked-call count are those of the real sizes).
SMOKE_OVERRIDES = ('model.hidden_dim=32', 'model.nheads=4', 'model.dim_feedforward=32',
                   'model.head_hidden=32', 'augmentation.resize=64', 'augmentation.crop=64',
                   'optim.batch_size=2')
# Leaving one of these set would make "glibc's defaults" something else, and the tuning
# refuses to act where the user set one (allocator.USER_VARIABLES).
STRIPPED_ENV = ('MALLOC_', 'GLIBC_TUNABLES', 'LD_PRELOAD', 'MSPR_ALLOCATOR')


@dataclass(frozen=True)
class Variant:
    """One way of running the step: allocator tuning, attention, config overrides."""

    allocator: bool
    memory_efficient: bool
    overrides: tuple
    description: str
    preload_tcmalloc: bool = False


VARIANTS = {
    'baseline': Variant(False, False, (), 'glibc defaults, plain attention (before issue 18)'),
    'allocator': Variant(True, False, (), 'configure_for_training(), plain attention'),
    'chunked': Variant(True, True, (), 'configure_for_training(), chunked attention (today)'),
    'ms_depth_4x4': Variant(False, False, ('model.enc_layers_rot=4', 'model.dec_layers_rot=4'),
                            'orientation branch 4+4, glibc defaults, plain attention'),
    'tcmalloc': Variant(False, True, (), 'tcmalloc preloaded, chunked attention (mspr-train '
                        'where libtcmalloc-minimal4 is installed)', preload_tcmalloc=True),
}
DEFAULT_VARIANTS = ('baseline', 'allocator', 'chunked', 'ms_depth_4x4')


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Parse the command line (the parent's, or a variant process's with ``--variant``)."""
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    add_common_arguments(parser)
    parser.add_argument('--size', choices=('paper', 'demo', 'both'), default=None,
                        help='model size (default: both; --quick and --smoke: paper)')
    parser.add_argument('--variants', default=','.join(DEFAULT_VARIANTS),
                        help=f'comma-separated subset of {",".join(VARIANTS)}')
    parser.add_argument('--warmup', type=int, default=None, help='warm-up steps per process')
    parser.add_argument('--steps', type=int, default=None, help='measured steps per variant')
    parser.add_argument('--rounds', type=int, default=None,
                        help='interleaved rounds (processes) the steps are split over')
    parser.add_argument('--variant', choices=tuple(VARIANTS), help=argparse.SUPPRESS)
    parser.add_argument('--result-file', type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.variants = [name.strip() for name in args.variants.split(',') if name.strip()]
    unknown = sorted(set(args.variants) - set(VARIANTS))
    if unknown or not args.variants:
        parser.error(f'--variants: unknown {unknown}; choose from {",".join(VARIANTS)}')
    if 'tcmalloc' in args.variants and allocator.find_tcmalloc() is None:
        parser.error(f'--variants tcmalloc: {allocator.TCMALLOC_MISSING}')
    size = args.size or ('both' if run_mode(args) == 'full' else 'paper')
    args.sizes = list(SIZES) if size == 'both' else [size]
    # The warm-up step is where chunked calls are counted, so there is always one.
    for name in ('warmup', 'steps', 'rounds'):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            parser.error(f'--{name} must be >= 1')
    return args


def random_batch(model: torch.nn.Module, cfg: Any, cached: bool) -> Dict[str, torch.Tensor]:
    """Return a seeded random batch of the shape the trainer would feed ``model``."""
    generator = torch.Generator().manual_seed(0)
    size, crop = cfg.optim.batch_size, cfg.augmentation.crop
    batch = {'position': torch.randn(size, 3, generator=generator),
             'orientation': F.normalize(torch.randn(size, 4, generator=generator), dim=1),
             'scene': torch.randint(0, cfg.model.num_scenes, (size,), generator=generator),
             'index': torch.arange(size)}
    if not cached:
        batch['image'] = torch.randn(size, 3, crop, crop, generator=generator)
        return batch
    with torch.no_grad():  # one image gives the cached maps' shapes
        maps = model.forward_features(torch.zeros(1, 3, crop, crop))
    for key, value in zip(('feat_t', 'feat_rot'), maps):
        batch[key] = torch.randn(size, *value.shape[1:], generator=generator)
    return batch


def usage() -> Dict[str, float]:
    """Return wall time and this process's CPU times and page faults (all threads)."""
    now = resource.getrusage(resource.RUSAGE_SELF)
    return {'wall': time.perf_counter(), 'utime': now.ru_utime, 'stime': now.ru_stime,
            'minflt': now.ru_minflt, 'majflt': now.ru_majflt}


def timed_step(step: TrainStep, optimizer: torch.optim.Optimizer,
               batch: Dict[str, torch.Tensor]) -> Dict[str, Dict[str, float]]:
    """Run one step as ``engine.train_one_epoch`` does; return each phase's usage deltas."""
    marks = [usage()]
    optimizer.zero_grad(set_to_none=True)
    losses = step(batch)
    loss = losses['loss']
    if not torch.isfinite(loss):
        raise FloatingPointError(f'loss is {float(loss)}')
    marks.append(usage())
    loss.backward()
    marks.append(usage())
    optimizer.step()
    marks.append(usage())
    return {phase: {key: after[key] - before[key] for key in before}
            for phase, before, after in zip(PHASES, marks, marks[1:])}


def attention_state(model: torch.nn.Module, dropout: float) -> Dict[str, Any]:
    """Return which attention the encoders run, read back from the modules themselves."""
    modules = [m for m in model.modules() if isinstance(m, MemoryEfficientAttention)]
    efficient = sum(bool(m.memory_efficient) for m in modules)
    # MemoryEfficientAttention's rule: chunked when training with dropout on the CPU.
    kind = ('plain' if efficient == 0 else 'mixed' if efficient < len(modules)
            else 'chunked' if dropout > 0 and model.training else 'sdpa')
    return {'implementation': kind, 'modules': len(modules), 'memory_efficient': efficient,
            'block_rows': sorted({str(m.block_rows) for m in modules})}


def measure_variant(args: argparse.Namespace) -> Dict[str, Any]:
    """Build the step of ``args.variant`` at ``args.size``, time it; return the raw figures."""
    variant = VARIANTS[args.variant]
    # First, as mspr-train does before building anything.
    tuned = allocator.configure_for_training() if variant.allocator else None
    set_threads(args.threads)
    torch.set_flush_denormal(True)  # random B0 weights: see throughput.py
    overrides = ['model.backbone_weights=none', 'device=cpu', *variant.overrides]
    overrides += SMOKE_OVERRIDES if run_mode(args) == 'smoke' else ()
    cfg = load_config(SIZES[args.size], overrides)
    configure_determinism(cfg, 0)
    model = build_model(cfg.model)
    if not freeze_parameters(model, cfg.freeze.trainable):
        raise RuntimeError(f'{cfg.source}: no trainable parameter')
    criterion = build_criterion(cfg)
    step = TrainStep(model, criterion, need_qka=cfg.loss.lambda_aux > 0)
    parameters = [p for p in (*model.parameters(), *criterion.parameters()) if p.requires_grad]
    optimizer = torch.optim.Adam(parameters, lr=cfg.optim.lr, betas=cfg.optim.betas,
                                 eps=cfg.optim.eps, weight_decay=cfg.optim.weight_decay)
    for module in model.modules():
        if isinstance(module, MemoryEfficientAttention):
            module.memory_efficient = variant.memory_efficient
    # The trainer's rule (Trainer._feature_datasets): cached maps when the backbone is static.
    cached = cfg.feature_cache.mode != 'off' and backbone_is_static(model, cfg)
    batch = random_batch(model, cfg, cached)
    set_train_mode(model, cfg.freeze.frozen_eval)
    criterion.train()
    rss_before = resident_bytes(os.getpid())
    # Count the chunked kernel's calls in the first warm-up step only (no wrapper when timed).
    original, calls = chunked_attention.chunked_attention, []

    def counting(*positional: Any, **named: Any) -> torch.Tensor:
        calls.append(1)
        return original(*positional, **named)

    chunked_attention.chunked_attention = counting
    try:
        warmup = [timed_step(step, optimizer, batch)]
    finally:
        chunked_attention.chunked_attention = original
    warmup += [timed_step(step, optimizer, batch) for _ in range(args.warmup - 1)]
    steps = [timed_step(step, optimizer, batch) for _ in range(args.steps)]
    active = attention_state(model, cfg.model.dropout)
    active.update(chunked_calls_per_step=len(calls), allocator=tuned,
                  preloaded=allocator.preloaded_allocator(),
                  malloc_environment=sorted(k for k in os.environ if k.startswith(STRIPPED_ENV)))
    return {'variant': args.variant, 'size': args.size, 'config': cfg.model.to_dict(),
            'batch_size': cfg.optim.batch_size,
            'input': {key: list(value.shape) for key, value in batch.items()
                      if key in ('image', 'feat_t', 'feat_rot')},
            'parameters': sum(p.numel() for p in model.parameters()),
            'warmup_wall_s': [sum(p['wall'] for p in s.values()) for s in warmup],
            'steps': steps, 'rss_before_steps_mib': rss_before / 2 ** 20,
            # ru_maxrss is in KiB on Linux: the whole life of this fresh process.
            'peak_rss_mib': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            'active': active}


def run_variant(args: argparse.Namespace, mode: str, size: str, variant: str, warmup: int,
                steps: int, work: Path) -> Dict[str, Any]:
    """Run ``variant`` at ``size`` in a fresh process; return its raw figures."""
    out = work / f'{size}_{variant}_{time.monotonic_ns()}.json'
    command = [sys.executable, str(Path(__file__).resolve()), '--variant', variant,
               '--size', size, '--warmup', str(warmup), '--steps', str(steps),
               '--threads', str(args.threads), '--result-file', str(out)]
    command += {'smoke': ['--smoke'], 'quick': ['--quick'], 'full': []}[mode]
    environment = {key: value for key, value in os.environ.items()
                   if not key.startswith(STRIPPED_ENV)}
    if VARIANTS[variant].preload_tcmalloc:
        environment['LD_PRELOAD'] = allocator.find_tcmalloc()
    result = subprocess.run(command, env=environment, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f'{variant} at {size} exited {result.returncode}:\n'
                           f'{result.stdout[-2000:]}\n{result.stderr[-3000:]}')
    return json.loads(out.read_text())


def run_images_per_s(run: Dict[str, Any]) -> float:
    """Return the images/s of one process's measured steps."""
    wall = sum(sum(step[phase]['wall'] for phase in PHASES) for step in run['steps'])
    return run['batch_size'] * len(run['steps']) / wall


def summarise_variant(name: str, runs: List[Dict[str, Any]]) -> Dict[str, Any]:
    """Pool the measured steps of a variant's rounds into its figures."""
    if any(run['active'] != runs[0]['active'] for run in runs):
        raise RuntimeError(f'{name}: rounds ran with different settings: '
                           f'{[run["active"] for run in runs]}')
    steps = [step for run in runs for step in run['steps']]

    def per_step(key: str, phase: Optional[str] = None) -> List[float]:
        phases = [phase] if phase else PHASES
        return [sum(step[p][key] for p in phases) for step in steps]

    wall, utime, stime = per_step('wall'), per_step('utime'), per_step('stime')
    count = len(steps)
    step_s = summarise(wall)
    return {
        'variant': name, 'description': VARIANTS[name].description, 'steps': len(steps),
        # Over all measured steps: the batch over the mean step.
        'images_per_s': runs[0]['batch_size'] * len(steps) / sum(wall),
        'images_per_s_median_step': runs[0]['batch_size'] / step_s.p50,
        'step_s': step_s,
        'phase_s': {p: sum(per_step('wall', p)) / count for p in PHASES},
        'phase_share': {p: sum(per_step('wall', p)) / sum(wall) for p in PHASES},
        'minflt_per_step': sum(per_step('minflt')) / count,
        'minflt_per_phase': {p: sum(per_step('minflt', p)) / count for p in PHASES},
        'majflt_per_step': sum(per_step('majflt')) / count,
        'utime_s_per_step': sum(utime) / count, 'stime_s_per_step': sum(stime) / count,
        # Share of the step's CPU time (all threads) spent in the kernel.
        'system_share': sum(stime) / max(sum(utime) + sum(stime), 1e-9),
        'system_share_of_wall': sum(stime) / sum(wall),
        'peak_rss_mib': max(run['peak_rss_mib'] for run in runs),
        'rss_before_steps_mib': max(run['rss_before_steps_mib'] for run in runs),
        'parameters': runs[0]['parameters'], 'model': runs[0]['config'],
        'input': runs[0]['input'], 'active': runs[0]['active'],
        'rounds': [{'images_per_s': run_images_per_s(run), 'peak_rss_mib': run['peak_rss_mib'],
                    'warmup_wall_s': run['warmup_wall_s']} for run in runs]}


def ratios(variants: Dict[str, Dict[str, Any]], key: str = 'images_per_s'
           ) -> Dict[str, Dict[str, float]]:
    """Return each variant's ``key`` over baseline's and over ms_depth_4x4's (where run).

    ``key`` 'images_per_s': images/s over all steps; 'images_per_s_median_step': the inverse
    ratio of median steps.
    """
    table: Dict[str, Dict[str, float]] = {name: {} for name in variants}
    for reference in [name for name in ('baseline', 'ms_depth_4x4') if name in variants]:
        for name, figures in variants.items():
            table[name][f'vs_{reference}'] = figures[key] / variants[reference][key]
    return table


def goals(variants: Dict[str, Dict[str, Any]], table: Dict[str, Dict[str, float]],
          median_table: Optional[Dict[str, Dict[str, float]]] = None
          ) -> Optional[Dict[str, Any]]:
    """Return issue 18's goals for today's step (None without it and the baseline).

    Today's step is ``tcmalloc`` where that variant ran (mspr-train preloads it where it is
    installed), else ``chunked``. The verdicts use images/s over all steps (``table``); with
    ``median_table`` the same ratios of median steps are added (``*_median_step``).
    """
    today = 'tcmalloc' if 'tcmalloc' in variants else 'chunked'
    if today not in variants or 'baseline' not in variants:
        return None
    changed, share = table[today], variants[today]['system_share']
    met = {'variant': today,
           'speedup_vs_baseline': changed['vs_baseline'], 'speedup_goal': GOAL_SPEEDUP,
           'speedup_met': changed['vs_baseline'] >= GOAL_SPEEDUP, 'system_share': share,
           'system_share_goal': GOAL_SYSTEM_SHARE, 'system_share_met': share < GOAL_SYSTEM_SHARE}
    if 'vs_ms_depth_4x4' in changed:
        met.update(vs_ms_depth_4x4=changed['vs_ms_depth_4x4'],
                   vs_ms_depth_4x4_met=changed['vs_ms_depth_4x4'] >= 1.0)
    if median_table is not None:
        median = median_table[today]
        met.update(speedup_vs_baseline_median_step=median['vs_baseline'],
                   speedup_median_step_met=median['vs_baseline'] >= GOAL_SPEEDUP)
        if 'vs_ms_depth_4x4' in median:
            met.update(vs_ms_depth_4x4_median_step=median['vs_ms_depth_4x4'],
                       vs_ms_depth_4x4_median_step_met=median['vs_ms_depth_4x4'] >= 1.0)
    return met


def print_size(size: str, figures: Dict[str, Any]) -> None:
    """Print one size's table, ratios and goals."""
    print(f'\n{size} size ({SIZES[size]}), batch {figures["batch_size"]}, {figures["steps"]} '
          f'steps per variant over {figures["rounds"]} round(s), {figures["warmup"]} warm-up '
          'per process; img/s over all steps (batch / mean step) and at the median step; '
          'fwd/bwd/opt, faults and sys: means per step; +steps: peak RSS over the RSS before '
          'the first step')
    print(f"{'variant':<14}{'img/s':>8}{'med img/s':>10}{'med step':>9}{'fwd':>7}{'bwd':>7}"
          f"{'opt':>7}"
          f"{'minflt/step':>13}{'sys s':>7}{'sys %':>7}{'peak MiB':>10}{'+steps':>8}"
          f"{'vs base':>9}{'vs 4x4':>8}  attention / allocator  (sys %: of the step's CPU time)")
    for name, v in figures['variants'].items():
        ratio = figures['ratios'][name]
        tuning = v['active'].get('preloaded') or (
            'tuned' if v['active']['allocator'] else 'glibc defaults')
        print(f"{name:<14}{v['images_per_s']:>8.3f}{v['images_per_s_median_step']:>10.3f}"
              f"{v['step_s'].p50:>9.2f}"
              + ''.join(f"{v['phase_s'][p]:>7.2f}" for p in PHASES)
              + f"{v['minflt_per_step']:>13,.0f}{v['stime_s_per_step']:>7.2f}"
              f"{100 * v['system_share']:>6.1f}%{v['peak_rss_mib']:>10.0f}"
              f"{v['peak_rss_mib'] - v['rss_before_steps_mib']:>8.0f}"
              f"{ratio.get('vs_baseline', float('nan')):>9.2f}"
              f"{ratio.get('vs_ms_depth_4x4', float('nan')):>8.2f}  "
              f"{v['active']['implementation']} / {tuning}")
    met = figures['goals'] or {}
    today = met.get('variant', 'chunked')
    lines = ((f'{today} >= {GOAL_SPEEDUP}x baseline', 'speedup_vs_baseline', 'speedup_met', 'x'),
             (f'{today} >= ms_depth_4x4 before the changes', 'vs_ms_depth_4x4',
              'vs_ms_depth_4x4_met', 'x'),
             (f"{today}'s system time < {100 * GOAL_SYSTEM_SHARE:.0f} % of its CPU time",
              'system_share', 'system_share_met', '%'))
    for label, key, flag, unit in lines:
        if key in met:
            value = f'{met[key]:.2f}x' if unit == 'x' else f'{100 * met[key]:.1f} %'
            median = met.get(f'{key}_median_step')
            value += '' if median is None else f' over all steps, {median:.2f}x by median step'
            print(f"goal {label}: {value} ({'met' if met[flag] else 'NOT met'})")


def measure_size(args: argparse.Namespace, mode: str, size: str, work: Path) -> Dict[str, Any]:
    """Run every variant at ``size`` over the rounds, interleaved; return the size's figures."""
    warmup, steps, rounds = (given or default for given, default in
                             zip((args.warmup, args.steps, args.rounds), COUNTS[mode][size]))
    rounds = min(rounds, steps)  # every round measures at least one step
    runs: Dict[str, List[Dict[str, Any]]] = {name: [] for name in args.variants}
    for index in range(rounds):
        # Rotated order: no variant is always the first (or last) process of a round.
        shift = index % len(args.variants)
        for name in args.variants[shift:] + args.variants[:shift]:
            count = steps // rounds + (index < steps % rounds)
            run = run_variant(args, mode, size, name, warmup, count, work)
            runs[name].append(run)
            print(f'{size} {name} round {index + 1}/{rounds}: {run_images_per_s(run):.3f} '
                  f'img/s, peak RSS {run["peak_rss_mib"]:.0f} MiB', flush=True)
    variants = {name: summarise_variant(name, runs[name]) for name in args.variants}
    table = ratios(variants)
    median_table = ratios(variants, 'images_per_s_median_step')
    return {'config': SIZES[size], 'batch_size': runs[args.variants[0]][0]['batch_size'],
            'warmup': warmup, 'steps': steps, 'rounds': rounds, 'variants': variants,
            'ratios': table, 'ratios_median_step': median_table,
            'goals': goals(variants, table, median_table)}


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the benchmark (or, with ``--variant``, one variant's process); return the status."""
    args = parse_args(argv)
    if args.variant is not None:
        args.result_file.write_text(json.dumps(measure_variant(args)))
        return 0
    mode, machine, notes = begin(args)
    if mode == 'smoke':
        notes.append('smoke run: d=32, 64x64 inputs, batch 2; the figures mean nothing')
    else:
        notes.append('backbone from random weights with denormals flushed (no offline B0 '
                     'weights); inputs are random tensors, so no data loading is timed')
    for note in notes:
        print(f'note: {note}')
    sizes = {}
    with tempfile.TemporaryDirectory(prefix='mspr_train_speed_') as work:
        for size in args.sizes:
            sizes[size] = measure_size(args, mode, size, Path(work))
            print_size(size, sizes[size])
    return save_results(
        args.out, NAME, mode, machine,
        settings={'threads': args.threads, 'sizes': args.sizes, 'variants': args.variants,
                  'variant_definitions': {name: VARIANTS[name] for name in args.variants},
                  'smoke_overrides': list(SMOKE_OVERRIDES) if mode == 'smoke' else [],
                  'environment_removed_in_variants': [f'{prefix}*' for prefix in STRIPPED_ENV]},
        results={'sizes': sizes}, notes=notes)


if __name__ == '__main__':
    sys.exit(main())
