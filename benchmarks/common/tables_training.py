"""Tables of the training benchmarks (accuracy, train speed, feature views) and of make demo.

Each function takes the loaded results file (``common.markdown.Source``) and returns Markdown
starting with its caption; ``benchmarks/figures.py`` places it between the markers. Every
statistic is labelled as what it is: the accuracy's ``mean ± std`` are over training seeds of
per-scene medians; train speed gives the median step (per-step figure) beside images/s over all
measured steps (the batch over the mean step).
"""
from typing import Any, Dict, List

from common.markdown import caption, DASH, get, num, pct, rate, settings_table, Source, table
from common.markdown import verdict

NOMINAL_2SIGMA = '73.9 %'


def _pm(stat: Dict[str, float], digits: int) -> str:
    text = num(stat['mean'], digits)
    return text + (f" ± {num(stat['std'], digits)}" if stat.get('n', 1) > 1 else '')


def _worlds(source: Source) -> List[Dict[str, Any]]:
    return source.results.get('worlds', [])


def accuracy_settings(source: Source) -> str:
    """Return what the accuracy comparison trained and tested on."""
    s = source.settings
    budget, ours = s.get('budget', {}), get(s, 'resolved_configs.ours', {})
    model = ours.get('model', {})
    seconds = sum(run.get('train_seconds', 0.0) for run in source.results.get('runs', []))
    return '\n'.join([caption(source), '', settings_table([
        ['worlds (rendered seeds)', ', '.join(map(str, s.get('world_seeds', [])))],
        ['training seeds', ', '.join(map(str, budget.get('seeds', [])))],
        ['frames per scene, training / test',
         f"{budget.get('train_frames')} / {budget.get('test_frames')} at "
         f"{'x'.join(map(str, budget.get('image_size', [])))}"],
        ['epochs (learning-rate step)', f"{budget.get('epochs')} ({budget.get('step_size')})"],
        ['configs, baseline / ours', ' / '.join(f'`{c}`' for c in s.get('configs', {}).values())],
        ['model', f"{model.get('backbone')} "
                  f"({'frozen' if model.get('freeze_backbone') else 'trained'}), "
                  f"d = {model.get('hidden_dim')}, {model.get('enc_layers_t')}+"
                  f"{model.get('dec_layers_t')} / {model.get('enc_layers_rot')}+"
                  f"{model.get('dec_layers_rot')} layers"],
        ['augmented views per image in the feature cache',
         get(ours, 'feature_cache.augmented_views', DASH)],
        ['covariance shrinkage toward isotropic', s.get('covariance_shrinkage', 'not recorded')],
        ['overrides of both configs', ', '.join(f'`{o}`' for o in s.get('overrides', [])) or DASH],
        ['training time, all runs', num(seconds / 3600, 1, ' h')]])])


def accuracy_errors(source: Source) -> str:
    """Median errors per scene: baseline vs ours (mean ± std over seeds), naive error."""
    rows = []
    for world in _worlds(source):
        for scene, e in world['per_scene'].items():
            base, ours = e['baseline'], e['ours']
            naive = e['naive_median_position_m']
            ours_m = ours['median_position_m']['mean']
            rows.append([world['world_seed'], scene,
                         f"{_pm(base['median_position_m'], 2)} m / "
                         f"{_pm(base['median_orientation_deg'], 1)}°",
                         f"{_pm(ours['median_position_m'], 2)} m / "
                         f"{_pm(ours['median_orientation_deg'], 1)}°",
                         num(ours_m - base['median_position_m']['mean'], 2, ' m'),
                         num(naive, 2, ' m'), num(ours_m / naive, 2),
                         num(ours_m - naive / 3, 2, ' m')])
    return '\n'.join([caption(source), '', table(
        ['world', 'scene', 'baseline: median position / orientation',
         'ours: median position / orientation', 'ours - baseline, position',
         'naive (scene mean position)', 'ours / naive', 'ours - naive / 3'], rows)])


def accuracy_coverage(source: Source) -> str:
    """Share of test errors of ours inside 1/2/3 sigma, and mean NEES, per scene."""
    rows = []
    for world in _worlds(source):
        for scene, e in world['per_scene'].items():
            cover, nees = e['ours']['coverage'], e['ours'].get('mean_nees', {})
            rows.append([world['world_seed'], scene] + [
                ' / '.join(f"{100 * cover[block][level]['mean']:.0f}" for level in '123') + ' %'
                for block in ('position', 'rotation')] + [
                f"{num(get(nees, 'position.mean'), 2)} / {num(get(nees, 'rotation.mean'), 2)}"])
    return '\n'.join([caption(source), '', table(
        ['world', 'scene', 'position inside 1σ / 2σ / 3σ', 'rotation inside 1σ / 2σ / 3σ',
         'mean NEES position / rotation (nominal 3)'], rows)])


def accuracy_goals(source: Source) -> str:
    """Issue 15's goals per world, with the measured values."""
    rows = []
    for world in _worlds(source):
        g = world['goals']
        cover = g['ours_2sigma_coverage_percent']
        rows.append([world['world_seed'],
                     f"{g['ours_below_baseline_scenes']} of 3 "
                     f"({verdict(g['ours_below_baseline_met'])})",
                     f"{g['scenes_within_a_third_of_naive']} of 3 "
                     f"({verdict(g['within_a_third_of_naive_met'])})",
                     f"{num(cover['position'], 1)} % / {num(cover['rotation'], 1)} % "
                     f"({verdict(g['coverage_met'])})"])
    return '\n'.join([caption(source), '', table(
        ['world', 'ours below the baseline in position (goal: 2 of 3 scenes)',
         'scenes with ours at most 1/3 of naive (goal: 3 of 3)',
         f'ours 2σ coverage position / rotation (goal: within 10 points of {NOMINAL_2SIGMA})'],
        rows)])


def accuracy_attention(source: Source) -> str:
    """First-layer attention statistics of each model, first training seed of each world."""
    rows, seeds = [], {}
    for run in source.results.get('runs', []):
        seeds.setdefault(run['world_seed'], run['seed'])
        if run['seed'] != seeds[run['world_seed']]:
            continue
        first = {branch: run['attention'][branch][0] for branch in ('position', 'orientation')}
        rows.append([run['world_seed'], run['seed'], run['label']] + [
            ' / '.join(num(first[b][key], 2) for b in ('position', 'orientation'))
            for key in ('entropy', 'centroid_distance', 'purity_mean')])
    return '\n'.join([caption(source), '', table(
        ['world', 'training seed', 'model', 'entropy position / orientation (layer 1)',
         'query-key centroid distance (layer 1)', 'query-region purity (layer 1)'], rows)])


def train_speed(source: Source, size: str) -> str:
    """One size's variants: median step and images/s over all steps, split, faults, memory."""
    figures = get(source.results, f'sizes.{size}')
    if figures is None:
        return caption(source) + f'\n\n_No {size}-size run in this file._'
    variants = figures['variants']
    base = variants.get('baseline')
    stand_in = variants.get('ms_depth_4x4')
    rows = []
    for name, v in variants.items():
        step = v['step_s']
        phases = ' / '.join(num(v['phase_s'][p], 2) for p in ('forward', 'backward', 'optimizer'))
        rows.append([name, num(step['p50'], 3, ' s'), rate(figures['batch_size'] / step['p50']),
                     rate(v['images_per_s']), phases, num(v['minflt_per_step'], 0),
                     f"{num(v['stime_s_per_step'], 2)} s ({pct(v['system_share'], 1)})",
                     num(v['peak_rss_mib'], 0, ' MiB'),
                     num(base['step_s']['p50'] / step['p50'], 2) if base else DASH,
                     num(stand_in['step_s']['p50'] / step['p50'], 2) if stand_in else DASH])
    return '\n'.join([caption(source), '', f"_`{figures['config']}`, batch "
                      f"{figures['batch_size']}: {figures['steps']} measured steps per variant "
                      f"over {figures['rounds']} round(s) of fresh processes, "
                      f"{figures['warmup']} warm-up step(s) per process._", '', table(
                          ['variant', 'median step', 'img/s at the median step',
                           'img/s over all steps (batch / mean step)',
                           'forward / backward / optimizer, mean s', 'minor faults / step, mean',
                           'system time / step, mean (% of CPU time)', 'peak RSS',
                           'speed-up vs baseline (median steps)',
                           'speed-up vs 4+4 (median steps)'], rows)])


def train_speed_goals(source: Source) -> str:
    """Issue 18's goals at paper size, by median step and by images/s over all steps."""
    figures = get(source.results, 'sizes.paper')
    if not figures or not figures.get('goals'):
        return caption(source) + '\n\n_No paper-size goals in this file._'
    goals, variants = figures['goals'], figures['variants']
    today = goals['variant']
    median = {name: v['step_s']['p50'] for name, v in variants.items()}
    rows = [[f"`{today}` at least {goals['speedup_goal']}x the baseline",
             f"{num(median['baseline'] / median[today], 2)}x "
             f"({verdict(median['baseline'] / median[today] >= goals['speedup_goal'])})",
             f"{num(goals['speedup_vs_baseline'], 2)}x ({verdict(goals['speedup_met'])})"]]
    if 'vs_ms_depth_4x4' in goals:
        rows.append([f"`{today}` no slower than the 4+4 stand-in before the changes",
                     f"{num(median['ms_depth_4x4'] / median[today], 2)}x "
                     f"({verdict(median['ms_depth_4x4'] / median[today] >= 1.0)})",
                     f"{num(goals['vs_ms_depth_4x4'], 2)}x "
                     f"({verdict(goals['vs_ms_depth_4x4_met'])})"])
    rows.append([f"`{today}`'s system time under {pct(goals['system_share_goal'])} of its CPU "
                 'time', DASH,
                 f"{pct(goals['system_share'], 1)} ({verdict(goals['system_share_met'])})"])
    return '\n'.join([caption(source), '', table(
        ['goal (paper size)', 'by median step', 'by images/s over all steps'], rows)])


def feature_views(source: Source) -> str:
    """K augmented views per image in the feature cache: cost and test errors."""
    rows = []
    for row in source.results.get('views', []):
        scenes = row['scenes'].values()
        coverage = row.get('coverage') or {}
        rows.append([row['views'], num(row['cache_mb'], 1), num(row['cache_set_up_s'], 0, ' s'),
                     num(row['epoch_s'], 1, ' s'),
                     ' / '.join(num(s['median_position_m'], 2) for s in scenes) + ' m',
                     f"{num(row['average_median_position_m'], 2)} m / "
                     f"{num(row['average_median_orientation_deg'], 1)}°",
                     ' / '.join(num(s['naive_median_position_m'], 2) for s in scenes) + ' m',
                     f"{pct(get(coverage, 'position.inside.2'))} / "
                     f"{pct(get(coverage, 'rotation.inside.2'))}"])
    s = source.settings
    scene_names = ' / '.join(next(iter(source.results.get('views', [])), {}).get('scenes', {}))
    return '\n'.join([caption(source), '', f"_`{s.get('config')}`, world seed "
                      f"{s.get('world_seed')}, {s.get('epochs')} epochs, one training seed, "
                      f"covariance shrinkage {s.get('covariance_shrinkage')}; "
                      f'scenes {scene_names}._', '', table(
                          ['K', 'cache MB', 'cache set-up', 'median epoch',
                           'median position per scene', 'average of the scene medians, '
                           'position / orientation', 'naive per scene',
                           f'2σ inside, position / rotation (nominal {NOMINAL_2SIGMA})'], rows)])


def demo(source: Source) -> str:
    """Return make demo's per-scene errors, covariance honesty, live replay, run length."""
    r, s = source.results, source.settings
    rows = [[e['scene'], num(e['median_position_m'], 2, ' m'),
             num(e['median_orientation_deg'], 1, '°'), pct(e.get('scene_accuracy')),
             num(e.get('naive_median_position_m'), 2, ' m')] for e in r.get('scenes', [])]
    ratio = (r['average_median_position_m'] / r['naive_average_median_position_m']
             if r.get('naive_average_median_position_m') else None)
    rows.append(['average of the scene medians', num(r.get('average_median_position_m'), 2, ' m'),
                 num(r.get('average_median_orientation_deg'), 1, '°'),
                 pct(r.get('scene_accuracy')),
                 f"{num(r.get('naive_average_median_position_m'), 2, ' m')} "
                 f"(ours / naive {num(ratio, 2)})"])
    coverage, live = r.get('coverage') or {}, r.get('live') or {}
    facts = [[f'covariance: 2σ inside, position / rotation (nominal {NOMINAL_2SIGMA})',
              f"{pct(get(coverage, 'position.inside.2'))} / "
              f"{pct(get(coverage, 'rotation.inside.2'))}"],
             ['covariance: mean NEES position / rotation (nominal 3)',
              f"{num(get(coverage, 'position.mean_nees'), 1)} / "
              f"{num(get(coverage, 'rotation.mean_nees'), 1)}"]]
    if live:
        facts += [['live replay over DDS: frames answered / in the recording, dropped',
                   f"{num(live.get('answered'), 0)} / {num(live.get('images'), 0)}, "
                   f"{num(live.get('dropped'), 0)}"],
                  ['live replay: image stamp -> pose, median / p95',
                   f"{num(live.get('latency_median_ms'), 1)} / "
                   f"{num(live.get('latency_p95_ms'), 1)} ms"]]
    else:
        facts.append(['live replay over DDS', 'skipped (`--skip-live`)'])
    reused = [step for step, made in (r.get('made_fresh') or {}).items() if not made]
    facts.append(['whole `make demo`', num((r.get('seconds') or 0) / 60, 1, ' min') + (
        f" (reused: {', '.join(reused)})" if reused else ' (every step made fresh)')])
    return '\n'.join([caption(source), '', settings_table([
        ['world', f"{s.get('scenes')} rendered scenes (seed {s.get('world_seed')}), "
                  f"{s.get('train_frames')} training frames in {s.get('train_sequences')} loops "
                  f"and {s.get('test_frames')} test frames per scene at {s.get('size')}"],
        ['training', f"`{s.get('config')}`: {s.get('backbone')}, "
                     f"{s.get('augmented_views')} augmented views per image, "
                     f"{s.get('epochs')} epochs on {s.get('device')}"],
        ['covariance', f"calibrated on a held-out training loop per scene, shrinkage "
                       f"{s.get('covariance_shrinkage', 'not recorded')}"],
        ['recording', f"{num(s.get('bag_rate_hz'), 0)} Hz camera"]]), '',
        table(['scene', 'median position', 'median orientation', 'scene accuracy',
               'naive baseline (scene mean position)'], rows), '',
        table(['figure', 'value'], facts)])


def int8_accuracy(source: Source) -> str:
    """Float vs int8 bundles of the same trained model, per world: errors and coverage."""
    rows = []
    for world in source.results.get('worlds', []):
        for variant in ('float', 'int8'):
            figures = world['variants'][variant]
            metrics, coverage = figures['metrics'], figures['coverage']
            rows.append([str(world['world_seed']), variant,
                         num(metrics['average_median_position_m'], 2, ' m'),
                         num(metrics['average_median_orientation_deg'], 1, '°'),
                         pct(metrics['scene_accuracy'], 1),
                         pct(get(coverage, 'position.inside.2'), 1),
                         pct(get(coverage, 'rotation.inside.2'), 1)])
        goal = world['goal']
        change = goal['relative_change']
        points = goal['coverage_change_points']
        rows.append([str(world['world_seed']), 'int8 / float',
                     pct(change['average_median_position_m'], 1),
                     pct(change['average_median_orientation_deg'], 1), DASH,
                     f"{points['position']:+.1f} pts", f"{points['rotation']:+.1f} pts"])
    verdicts = [f"world {w['world_seed']}: {verdict(w['goal']['met'])}"
                for w in source.results.get('worlds', [])]
    goal_text = (f"Goal: int8 average medians within {100 * source.settings['error_goal']:.0f} % "
                 f"of float and 2σ coverage within {source.settings['coverage_goal_points']:.0f} "
                 'points; ' + '; '.join(verdicts) + '.')
    ranges = sorted({str(get(w, 'variants.int8.inference.quantization.activations'))
                     for w in source.results.get('worlds', [])})
    made = [f"_int8 activations: {'; '.join(ranges)}._"]
    earlier = source.settings.get('models_from')
    if earlier:
        made.append(f"_Models trained by the run of `{earlier['file']}` (commit "
                    f"`{str(earlier['commit'])[:7]}`), exported and evaluated again._")
    return '\n'.join([caption(source), '', *made, '', table(
        ['world', 'bundle', 'average median position', 'average median orientation',
         'scene accuracy', 'position inside 2σ', 'rotation inside 2σ'], rows), '', goal_text])
