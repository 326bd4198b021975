"""Tables of the studies on an ``uncertainty.py`` run's cross-fitted models, for ``figures.py``.

``fusion_window`` renders ``benchmarks/fusion_window.py`` (the bundles replayed per fusion
window distance), ``correlation_blocks`` ``benchmarks/correlation_blocks.py`` (the out-of-fold
errors' correlation per block) and ``site_calibration`` ``benchmarks/site_calibration.py``
(the deployed models calibrated on site walks, one model of the error correlation or one per
block). Same conventions as ``common.tables_uncertainty``, whose helpers they share.
"""
from typing import Any, Dict, List

from common.markdown import caption, get, num, pct, settings_table, Source, table, verdict
from common.tables_uncertainty import inside_2sigma, model_text, spread


def fusion_window(source: Source) -> str:
    """Per frame vs fused on the trained models' recordings, per fusion window distance."""
    s, res = source.settings, source.results
    default, origin = s.get('default_distance_m'), s.get('source', {})
    rows = []
    for world, by_distance in sorted(res.get('worst', {}).items(), key=lambda w: int(w[0])):
        runs = [r for r in res.get('runs', []) if str(r['world_seed']) == world]
        for distance, worst in sorted(by_distance.items(), key=lambda d: float(d[0])):
            mine = [r['by_distance'][distance] for r in runs]
            ratios = [r['ratios'] for r in mine]
            coverage = [r['fused_coverage_2sigma'] for r in mine]
            marker = ' (default)' if default is not None and float(distance) == default else ''
            rows.append([
                world + (' (chosen on)' if int(world) == s.get('chosen_on_world') else ''),
                f'{distance} m{marker}',
                ', '.join(f"{num(r['jitter_position_m'], 2)} / "
                          f"{num(r['jitter_orientation_deg'], 2)}" for r in ratios),
                f"{num(worst['jitter_worst_ratio'], 3)} ({verdict(worst['jitter_met'])})",
                ', '.join(f"{num(r['p95_position'], 2)} / {num(r['p95_orientation'], 2)}"
                          for r in ratios),
                f"{num(worst['p95_worst_ratio'], 3)} ({verdict(worst['p95_met'])})",
                ', '.join(num(r['fused_median_position_m'], 2) for r in mine),
                ', '.join(f"{pct(c['position'])} / {pct(c['rotation'])}" for c in coverage)])
    settings = settings_table([
        ['bundles', f"the cross-fitted bundles (first covariance scale) of "
                    f"`{origin.get('file', '?')}` at `{str(origin.get('commit', '?'))[:7]}`, "
                    'training seeds ' + ', '.join(str(r['seed']) for r in res.get('runs', [])
                                                  if r['world_seed'] == 0)],
        ['replay', 'learned error correlation, the node\'s other defaults; the localizer once '
                   'per bundle, the pose stream once per distance'],
        ['default', f"{num(default, 0, ' m')}, chosen on world {s.get('chosen_on_world')}"]])
    header = ['world', 'window distance', 'fused / per-frame jitter pos / rot, per seed',
              f"worst jitter (goal <= {num(s.get('jitter_goal'), 1)})",
              'fused / per-frame p95 pos / rot, per seed', 'worst p95 (goal <= 1)',
              'fused median position per seed (m)', 'fused 2σ pos / rot per seed']
    return '\n\n'.join([caption(source), settings, table(header, rows)])


def correlation_blocks(source: Source) -> str:
    """Joint, model and per-block empirical error correlation per distance bin, per world."""
    s, res = source.settings, source.results
    origin = s.get('source', {})
    rows = []
    for world, bins in sorted(res.get('pooled', {}).items(), key=lambda w: int(w[0])):
        for row in bins:
            to = row.get('to')
            span = f"{num(row['from'], 2)}-{num(to, 2)} m" if to is not None else \
                f"{num(row['from'], 2)} m and more"
            rows.append([world, span, str(row['pairs']), num(row['joint'], 2),
                         num(row['model'], 2), num(row['position'], 2),
                         num(row['rotation'], 2)])
    seeds = sorted({r['seed'] for r in res.get('runs', [])})
    settings = settings_table([
        ['bundles', f"the cross-fitted runs of `{origin.get('file', '?')}` at "
                    f"`{str(origin.get('commit', '?'))[:7]}` exported again (first covariance "
                    f"scale), training seeds {', '.join(map(str, seeds))}"],
        ['errors', 'out of fold, along the training walks (the calibration errors)'],
        ['pooled', 'over training seeds and scenes, weighted by pairs']])
    header = ['world', 'distance between the pair', 'pairs', 'joint 6-D, empirical',
              'joint, the fitted model', 'position alone, empirical',
              'rotation alone, empirical']
    return '\n\n'.join([caption(source), settings, table(header, rows)])


#: How the site-calibration table names each calibration.
CALIBRATIONS = (('crossfit', 'out-of-fold training walks (cross-fitting)'),
                ('crossfit_per_block', 'out-of-fold training walks, a model per block'),
                ('site', 'site walks (--calibration-split site)'),
                ('site_per_block', 'site walks, a model per block'))


def site_calibration(source: Source) -> str:
    """Render the deployed models calibrated on out-of-fold training walks vs on site walks."""
    s, res = source.settings, source.results
    origin = s.get('source', {})
    runs: List[Dict[str, Any]] = res.get('runs', [])
    rows, goal_rows, correlation_rows = [], [], []
    nominal = None
    for world in sorted({r['world_seed'] for r in runs}):
        mine = [r for r in runs if r['world_seed'] == world]
        for key, label in CALIBRATIONS:
            got = [r[key] for r in mine if key in r]
            if not got:
                continue
            fused = [get(g, 'replay.bundle.fusion') or {} for g in got]
            nominal = next((f.get('nominal_coverage_2sigma_3d') for f in fused if f), nominal)

            def share(estimate: str, block: str) -> str:
                return spread([100 * get(f, f'{estimate}.coverage_2sigma.{block}')
                               for f in fused if f], 1, ' %')
            rows.append([
                world, label, len(got),
                spread([g['metrics']['average_median_position_m'] for g in got], 2, ' m'),
                ' / '.join(spread([100 * inside_2sigma(g['coverage'], block) for g in got], 1,
                                  ' %') for block in ('position', 'rotation')),
                f"{share('per_frame', 'position')} / {share('per_frame', 'rotation')}",
                f"{share('fused', 'position')} / {share('fused', 'rotation')}"])
            g = get(res, f'goals.{world}.{key}', {})
            goal_rows.append([
                world, label,
                f"{num(g.get('coverage_worst_gap_points'), 1)} ({verdict(g.get('coverage_met'))})",
                f"{num(g.get('jitter_worst_ratio'), 3)} ({verdict(g.get('jitter_met'))})",
                f"{num(g.get('p95_worst_ratio'), 3)} ({verdict(g.get('p95_met'))})"])
        for r in mine:
            for key in ('site', 'site_per_block'):
                for scene, model in sorted(get(r, f'{key}.error_correlation', {}).items()):
                    correlation_rows.append([world, r['seed'], scene, model_text(model)])
    seeds = sorted({r['seed'] for r in runs})
    settings = settings_table([
        ['models', f"the deployed cross-fitted models of `{origin.get('file', '?')}` at "
                   f"`{str(origin.get('commit', '?'))[:7]}` (trained on every training walk), "
                   f"training seeds {', '.join(map(str, seeds))}; no training here"],
        ['site walks', f"{s.get('site_frames')} frames per scene over {s.get('site_walks')} "
                       f"walk{'' if s.get('site_walks') == 1 else 's'} drawn as the test "
                       'walks are (other light, exposure and camera carriage than training), '
                       'each on a path and under light of its own: no test frame is calibrated '
                       'on'],
        ['covariance scale', f"`{s.get('covariance_scale')}`"],
        ['figures', 'cross-fitting with one model: the source file\'s; the others exported, '
                    'evaluated and replayed here, as `uncertainty.py` does, from the same '
                    'checkpoint (a model per block: `mspr-export --error-correlation-blocks '
                    'per_block`)']])
    return '\n\n'.join([
        caption(source), settings,
        f'Coverage on the test walks (nominal 2σ coverage {pct(nominal, 1)}; mean ± standard '
        'deviation over training seeds):',
        table(['world', 'calibrated on', 'seeds', 'median position',
               '2σ inside per frame, Localizer, pos / rot',
               'per frame on the recording, pos / rot',
               'fused on the recording, pos / rot'], rows),
        'Goals of issue 25 per world and calibration (learned correlation; worst over seeds):',
        table(['world', 'calibrated on', 'worst 2σ coverage gap, points (goal <= 10)',
               'worst fused / per-frame jitter (goal <= 0.2)',
               'worst fused / per-frame p95 (goal <= 1)'], goal_rows),
        'The error correlation fitted on the site walks:',
        table(['world', 'seed', 'scene', 'model'], correlation_rows) if correlation_rows
        else 'none: too few correctly localised frames along the site walks in every scene'])
