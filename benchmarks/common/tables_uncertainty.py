"""Tables of the uncertainty benchmarks: the simulated robot's fusion and trained models' coverage.

``fusion`` renders ``benchmarks/fusion.py`` (a simulated robot whose regression errors follow
the view), ``uncertainty`` renders ``benchmarks/uncertainty.py`` (cross-fitted and held-out
recipes trained on the rendered worlds, replayed per frame and fused). Same conventions as
``common.tables_speed``: each function returns Markdown starting with its caption.
"""
import math
import statistics
from typing import Any, Dict, List, Optional, Sequence

from common.markdown import caption, DASH, get, num, pct, settings_table, Source, table
from common.markdown import verdict

ESTIMATES = (('per_frame', 'per frame'), ('fused', 'fused (learned correlation)'),
             ('fused_independent', 'fused, frames counted as independent'))


def model_text(model: Optional[Dict[str, Any]]) -> str:
    """Return an error-correlation model as 'L 1.09 m, A 23.6°, floor 0.02'."""
    if not model:
        return DASH
    angle = model.get('angle_rad')
    parts = [f"L {num(model.get('length_m'), 2, ' m')}" if model.get('length_m') else None,
             f"A {num(math.degrees(angle), 1, '°')}" if angle and angle < 100 else None,
             f"T {num(model.get('time_s'), 2, ' s')}" if model.get('time_s') else None,
             f"floor {num(model.get('floor'), 2)}"]
    text = ', '.join(p for p in parts if p) + f" ({model.get('source', '?')})"
    if model.get('rotation'):
        return f"position {text}; rotation {model_text(model['rotation'])}"
    return text


def _gap(value: Optional[float]) -> str:
    """Return a coverage gap in points with its sign."""
    return DASH if value is None else f'{value:+.1f}'


def fusion(source: Source) -> str:
    """Per-frame vs fused on the simulated robot: settings, errors, coverage, goals, GTSAM."""
    s, seeds = source.settings, source.results.get('seeds', [])
    odo, reg, cfg = s.get('odometry', {}), s.get('regression', {}), s.get('fusion', {})
    rows, goal_rows = [], []
    for r in seeds:
        for name, label in ESTIMATES:
            e = r.get(name)
            if e is None:
                continue
            cover = e['coverage_2sigma']
            rows.append([r['seed'], label,
                         f"{num(e['position_m']['median'], 3)} / "
                         f"{num(e['position_m']['p95'], 3)} m",
                         f"{num(e['orientation_deg']['median'], 2)} / "
                         f"{num(e['orientation_deg']['p95'], 2)}°",
                         f"{num(e['jitter']['position_m'], 3)} m / "
                         f"{num(e['jitter']['orientation_deg'], 2)}°",
                         f"{pct(cover['position'], 1)} / {pct(cover.get('orientation'), 1)}",
                         num(get(e, 'standstill_covariance_ratio.min'), 3)])
        g = r['goals']
        gaps = g.get('coverage_gaps_points', {})
        goal_rows.append([
            r['seed'],
            ' / '.join(_gap(gaps.get(k)) for k in ('per_frame_position', 'per_frame_orientation',
                                                   'fused_position', 'fused_orientation'))
            + f" ({verdict(g.get('coverage_met'))})",
            f"{num(get(g, 'jitter_ratios.position'), 3)} / "
            f"{num(get(g, 'jitter_ratios.orientation'), 3)} ({verdict(g.get('jitter_met'))})",
            f"{num(get(g, 'p95_ratios.position'), 3)} / "
            f"{num(get(g, 'p95_ratios.orientation'), 3)} ({verdict(g.get('p95_met'))})",
            f"{num(g.get('standstill_min_ratio'), 3)} ({verdict(g.get('standstill_met'))})",
            model_text(get(r, 'calibration.model_used') or get(r, 'calibration.fit.model')),
            f"{num(get(r, 'add_ms.median'), 2)} / {num(get(r, 'add_ms.p95'), 2)} ms"])
    nominal = get(seeds[0], 'fused.coverage_2sigma.nominal_position') if seeds else None
    parts = [caption(source), '', settings_table([
        ['run', f"{num(s.get('duration_s'), 0)} s at {num(s.get('frame_rate_hz'), 0)} Hz, "
                f"then {num(s.get('standstill_s'), 0)} s standing still"],
        ['odometry', f"scale error {pct(odo.get('scale_error'), 1)}, heading drift "
                     f"{odo.get('heading_drift_deg_per_m')}°/m, random walks "
                     f"{odo.get('distance_noise')} m/√m and {odo.get('heading_noise_deg')}°/√m"],
        ['per-frame regression', f"{reg.get('position_stddev')} m and "
                                 f"{reg.get('orientation_stddev_deg')}° per axis: "
                                 f"{pct(reg.get('bias_share'))} a bias per walk, "
                                 f"{pct(reg.get('view_share'))} a function of the view "
                                 f"(correlation length {reg.get('view_length_m')} m and "
                                 f"{reg.get('view_angle_deg')}°), the rest Student-t "
                                 f"({num(reg.get('dof'), 0)} dof) noise; "
                                 f"{pct(reg.get('outlier_fraction'))} gross outliers"],
        ['calibration', str(s.get('calibration', DASH))],
        ['fusion', ', '.join(f'`{k}: {v if not isinstance(v, float) else round(v, 3)}`'
                             for k, v in cfg.items())
                   + f"; error correlation: {s.get('correlation', DASH)}"]]), '',
        table(['seed', 'estimate', 'position median / p95', 'orientation median / p95',
               'jitter position / rotation',
               f"2σ coverage position / rotation (nominal {pct(nominal, 1)})",
               'standing still: covariance / per frame (min)'], rows), '',
        table(['seed', 'coverage - nominal, points: per frame pos / rot, fused pos / rot '
               '(goal within 10)', 'fused / per-frame jitter pos / rot (goal <= 0.2)',
               'fused / per-frame p95 pos / rot (goal <= 1)',
               'standing still (goal >= 1)', 'correlation fitted on the calibration walk',
               '`add()` median / p95'], goal_rows)]
    gtsam = source.results.get('gtsam_difference')
    if gtsam:
        parts += ['', table(['GTSAM vs the published covariance, worst of '
                             f"{gtsam.get('windows', '?')} windows", 'position', 'orientation',
                             'covariance (relative Frobenius)',
                             'published / joint GLS, smallest eigenvalue ratio (bound >= 1)'],
                            [['difference', num(gtsam['position_m'] * 1e3, 1, ' mm'),
                              num(math.degrees(gtsam['orientation_rad']), 2, '°'),
                              f"{pct(gtsam['covariance_rel'], 2)} "
                              f"({verdict(gtsam.get('covariance_met'))})",
                              f"{num(gtsam.get('joint_ratio_min'), 3)} "
                              f"({verdict(gtsam.get('joint_bound_met'))})"]])]
    return '\n'.join(parts)


def spread(values: Sequence[float], digits: int, unit: str = '') -> str:
    """Return 'mean ± std' over seeds (just the value for one seed)."""
    values = [v for v in values if v is not None]
    if not values:
        return DASH
    if len(values) == 1:
        return num(values[0], digits, unit)
    mean, std = statistics.mean(values), statistics.stdev(values)
    return f'{num(mean, digits)} ± {num(std, digits, unit)}'


def inside_2sigma(coverage: Dict[str, Any], block: str) -> Optional[float]:
    """Return a CovarianceCoverage dict's share inside 2 sigma for one block."""
    return get(coverage, f'{block}.inside.2')


#: How the tables name each covariance scale of ``uncertainty.py --covariance-scales``.
SCALE_LABELS = {'conformal': 'conformal scale', 'moment': 'second-moment scale'}


def _scales(got: Dict[str, Any]) -> List[Any]:
    """Return ``[(label suffix, figures)]`` of a recipe's bundles (one per covariance scale)."""
    scales = got.get('scales') or {}
    if len(scales) < 2:
        return [('', got)]
    return [(f', {SCALE_LABELS.get(name, name)}', figures) for name, figures in scales.items()]


def uncertainty(source: Source) -> str:
    """Cross-fitted vs held-out recipes on both worlds, then per frame vs fused on their bags."""
    s, res = source.settings, source.results
    runs: List[Dict[str, Any]] = res.get('runs', [])
    budget = s.get('budget', {})
    worlds = sorted({r['world_seed'] for r in runs})
    accuracy_rows, coverage_rows, replay_rows, goal_rows, correlation_rows = [], [], [], [], []
    nominal = None
    for world in worlds:
        mine = [r for r in runs if r['world_seed'] == world]
        folds = next((x.split('=')[1] for x in s.get('recipes', {}).get('crossfit', [])
                      if x.startswith('data.calibration_folds=')), None)
        crossfit_label = ('cross-fitted (every walk trained)' if folds is None else
                          f'cross-fitted, {folds} folds (every walk trained)')
        for recipe, label in (('crossfit', crossfit_label), ('held_out', 'held-out walk')):
            got = [r[recipe] for r in mine if recipe in r]
            if not got:
                continue
            timing = [g.get('timing') or {} for g in got]
            scenes = [sc['scene'] for sc in got[0]['metrics']['scenes']]
            per_scene = ', '.join(
                f"{sc} {spread([next(x['median_position_m'] for x in g['metrics']['scenes'] if x['scene'] == sc) for g in got], 2)}"  # noqa: E501 - one cell
                for sc in scenes)
            accuracy_rows.append([
                world, label, len(got),
                spread([g['metrics']['average_median_position_m'] for g in got], 2, ' m'),
                spread([g['metrics']['average_median_orientation_deg'] for g in got], 2, '°'),
                per_scene,
                spread([g['train_seconds'] / 60 for g in got], 1, ' min'),
                spread([t.get('extra_ratio') for t in timing], 2) if recipe == 'crossfit'
                else DASH])
            for index, (suffix, _) in enumerate(_scales(got[0])):
                bundles = [_scales(g)[index][1] for g in got]
                coverage_rows.append([
                    world, label + suffix,
                    spread([100 * inside_2sigma(b['coverage'], 'position') for b in bundles],
                           1, ' %'),
                    spread([100 * inside_2sigma(b['coverage'], 'rotation') for b in bundles],
                           1, ' %')])
        for r in mine:
            replays = r.get('replays') or {'': r.get('replay')}
            for scale, mode, label in [
                    (scale, mode, label + (f', {SCALE_LABELS.get(scale, scale)}'
                                           if len(replays) > 1 else ''))
                    for scale in replays
                    for mode, label in (('bundle', 'learned (bundle)'),
                                        ('independent', 'independent'))]:
                block = get(replays[scale] or {}, f'{mode}.fusion')
                if not block:
                    notes = '; '.join(get(replays[scale] or {}, f'{mode}.notes', []))
                    replay_rows.append([world, r['seed'], label, notes or DASH] + [DASH] * 4)
                    continue
                nominal = block.get('nominal_coverage_2sigma_3d', nominal)
                pf, fu = block['per_frame'], block['fused']
                ratios = block['ratios_fused_over_per_frame']
                replay_rows.append([
                    world, r['seed'], label,
                    f"{num(pf['position_m']['median'], 2)} / {num(pf['position_m']['p95'], 2)} m"
                    f" -> {num(fu['position_m']['median'], 2)} / "
                    f"{num(fu['position_m']['p95'], 2)} m",
                    f"{num(pf['orientation_deg']['median'], 1)} / "
                    f"{num(pf['orientation_deg']['p95'], 1)}° -> "
                    f"{num(fu['orientation_deg']['median'], 1)} / "
                    f"{num(fu['orientation_deg']['p95'], 1)}°",
                    f"{num(ratios['jitter_position_m'], 3)} / "
                    f"{num(ratios['jitter_orientation_deg'], 3)}",
                    f"{pct(pf['coverage_2sigma']['position'], 1)} / "
                    f"{pct(pf['coverage_2sigma']['rotation'], 1)}",
                    f"{pct(fu['coverage_2sigma']['position'], 1)} / "
                    f"{pct(fu['coverage_2sigma']['rotation'], 1)}"])
            for scene, model in sorted(get(r, 'crossfit.error_correlation', {}).items()):
                correlation_rows.append([world, r['seed'], scene, model_text(model)])
        g = get(res, f'goals.{world}', {})
        acc = g.get('accuracy', {})
        position = acc.get('average_median_position_m', {})
        goal_rows.append([
            world,
            f"{spread(position.get('crossfit', []), 2, ' m')} vs "
            f"{spread(position.get('held_out', []), 2, ' m')}",
            f"{num(g.get('coverage_worst_gap_points'), 1)} ({verdict(g.get('coverage_met'))})",
            f"{num(g.get('jitter_worst_ratio'), 3)} ({verdict(g.get('jitter_met'))})",
            f"{num(g.get('p95_worst_ratio'), 3)} ({verdict(g.get('p95_met'))})"])
    parts = [caption(source), '', settings_table([
        ['recipe', f"`{s.get('config', '?')}` at {budget.get('epochs')} epochs "
                   f"(step size {budget.get('step_size')}), training seeds "
                   f"{', '.join(str(x) for x in budget.get('seeds', []))}"],
        ['worlds', f"seeds {', '.join(str(w) for w in s.get('world_seeds', []))} (0: the world "
                   'the recipes were tuned on; others generated at benchmark time), 3 scenes, '
                   f"{budget.get('train_frames')} training frames per scene over "
                   f"{budget.get('train_sequences')} walks, {budget.get('test_frames')} test "
                   f"frames over {budget.get('test_sequences')} walks under other light, "
                   f"{'x'.join(str(x) for x in budget.get('image_size', []))} px"],
        ['recipes compared', '; '.join(f'{k}: `{" ".join(v)}`'
                                       for k, v in s.get('recipes', {}).items())],
        ['replay', f"the cross-fitted bundle on a rosbag2 recording of the test walks at "
                   f"{budget.get('bag_rate_hz')} Hz with drifting wheel odometry, through "
                   "`mspr-bag-eval`'s offline replay of the node's pose stream"]]
        + ([['replayed', f"replays run again at this commit; training, export and per-frame "
                         f"evaluation are those of `{s['replayed_from']['file']}` at "
                         f"`{str(s['replayed_from']['commit'])[:7]}`"]]
           if s.get('replayed_from') else [])), '',
        'Accuracy on the test walks (mean ± standard deviation over training seeds) and '
        'training time:', '',
        table(['world', 'recipe', 'seeds', 'median position', 'median orientation',
               'median position per scene (m)', 'mspr-train wall time (fold runs included)',
               'fold runs / deployed run time'], accuracy_rows), '',
        'Per-frame covariance on the test walks (the Localizer, every image):', '',
        table(['world', 'recipe', '2σ inside, position', '2σ inside, rotation'],
              coverage_rows), '',
        f'Per frame vs fused on the recordings (nominal 2σ coverage {pct(nominal, 1)}):', '',
        table(['world', 'seed', 'fusion error correlation',
               'position median / p95, per frame -> fused',
               'orientation median / p95, per frame -> fused',
               'fused / per-frame jitter pos / rot', 'per-frame 2σ pos / rot',
               'fused 2σ pos / rot'], replay_rows), '',
        'Goals of issue 25 per world (coverage over per-frame and fused, position and rotation, '
        'learned correlation'
        + (f", {SCALE_LABELS.get(s['covariance_scales'][0], s['covariance_scales'][0])}"
           if len(s.get('covariance_scales', [])) > 1 else '')
        + '; ratios the worst over seeds):', '',
        table(['world', 'average median position, cross-fitted vs held-out walk',
               'worst 2σ coverage gap, points (goal <= 10)',
               'worst fused / per-frame jitter (goal <= 0.2)',
               'worst fused / per-frame p95 (goal <= 1)'], goal_rows)]
    if correlation_rows:
        parts += ['', 'The error correlation each cross-fitted bundle learned:', '',
                  table(['world', 'seed', 'scene', 'model'], correlation_rows)]
    return '\n'.join(parts)
