"""Tables of ``benchmarks/camera.py`` (issue 26): a wide distorted camera, reprojected or resized.

``camera`` renders the settings, the per-scene errors of the three inputs (the training camera,
the wide camera reprojected into it, the wide camera resized and cropped) with the ratio to the
training camera and the 15 % goal, the goals not met and by how much, and the remap's cost per
640 x 480 frame beside the resize-and-crop path. Same conventions as ``common.tables_speed``:
the function returns Markdown starting with its caption.
"""
from typing import Any, Dict, List, Optional

from common.markdown import caption, DASH, get, num, pct, settings_table, Source, table
from common.markdown import verdict

INPUTS = (('training', 'training camera'), ('wide_reprojected', 'wide, reprojected'),
          ('wide_resized', 'wide, resized + cropped'))


def _camera(camera: Optional[Dict[str, Any]]) -> str:
    """Return a camera as '400x300 plumb_bob (-0.28, 0.07), f 253.2 px, 90.0° wide'."""
    if not camera:
        return DASH
    lens = {'none': 'pinhole'}.get(camera.get('distortion_model'), camera.get('distortion_model'))
    coefficients = [c for c in camera.get('distortion', []) if c]
    if coefficients:
        lens += ' (' + ', '.join(f'{c:g}' for c in coefficients) + ')'
    focal = num(camera.get('fx'), 1, ' px')
    if camera.get('fy') is not None and abs(camera['fy'] - camera['fx']) > 0.05:
        focal = f"{num(camera.get('fx'), 1)} / {num(camera.get('fy'), 1, ' px')}"
    return (f"{camera.get('width')}x{camera.get('height')} {lens}, focal {focal}, "
            f"{num(camera.get('horizontal_fov_deg'), 1, '°')} across")


def _errors(scene: Optional[Dict[str, Any]]) -> str:
    """Return 'median position / median orientation' of one scene."""
    if not scene:
        return DASH
    return (f"{num(scene.get('median_position_m'), 2, ' m')} / "
            f"{num(scene.get('median_orientation_deg'), 1, '°')}")


def _ratios(ratios: Optional[Dict[str, Any]]) -> str:
    """Return 'position ratio / orientation ratio'."""
    if not ratios:
        return DASH
    return f"{num(ratios.get('position_m'), 2)} / {num(ratios.get('orientation_deg'), 2)}"


def _shortfalls(world: Dict[str, Any]) -> List[str]:
    """Return one phrase per (scene, quantity) above the ratio goal, with its margin."""
    goal = world.get('goal', {})
    limit = goal.get('ratio_goal')
    phrases = []
    for scene, verdicts in goal.get('per_scene', {}).items():
        for key, label in (('position_m', 'position'), ('orientation_deg', 'orientation')):
            ratio = get(verdicts, f'ratios.wide_reprojected.{key}')
            if ratio is not None and limit is not None and ratio > limit:
                phrases.append(f"world {world['world_seed']} {scene} {label}: "
                               f"{num(ratio, 2)} ({pct(ratio - limit, 0)} over {limit})")
    return phrases


def _remap(remap: Dict[str, Any], threads: Any) -> List[str]:
    """Return the remap cost table and its goal line."""
    ms, build = remap.get('ms', {}), remap.get('build_ms', {})
    goal = remap.get('goal_ms')

    def row(label: str, stat: Dict[str, Any], verdict_text: str = DASH) -> List[str]:
        return [label, num(stat.get('p50'), 2, ' ms'), num(stat.get('p90'), 2, ' ms'),
                num(stat.get('p99'), 2, ' ms'), num(stat.get('count'), 0), verdict_text]

    remap_ms = ms.get('remap', {})
    met = remap.get('goal_met')
    rows = [row('`Reprojection.apply` (the remap)', remap_ms,
                f'{verdict(met)} (goal <= {num(goal, 0)} ms)'),
            row('`preprocess_image`, resize + centre crop (before issue 26)',
                ms.get('preprocess_resize_crop', {})),
            row('`preprocess_image` with the reprojection', ms.get('preprocess_reprojected', {})),
            row('`Reprojection.build` (once per camera)', build)]
    source, target = remap.get('camera', {}), remap.get('target', {})
    text = [f"Cost per frame of `wide_camera({source.get('width')}, {source.get('height')})` "
            f"into the training camera ({target.get('width')}x{target.get('height')}; prescale "
            f"{remap.get('prescale')}, {pct(remap.get('coverage'), 1)} of it seen), "
            f"{remap.get('calls')} interleaved calls of each after {remap.get('warmup')} "
            f'warm-up calls, OpenCV and torch at {threads} threads:', '',
            table(['path', 'median', 'p90', 'p99', 'calls', 'goal'], rows)]
    if met is False:
        text += ['', f"Remap goal not met: median {num(remap_ms.get('p50'), 2)} ms, "
                     f"{num(remap_ms.get('p50') - goal, 2)} ms over {num(goal, 0)} ms."]
    return text


def camera(source: Source) -> str:
    """Return the settings, per-scene errors of the inputs with the 15 % goal, the remap cost."""
    s, res = source.settings, source.results
    budget = s.get('budget', {})
    worlds: List[Dict[str, Any]] = res.get('worlds', [])
    first = worlds[0] if worlds else {}
    cameras = first.get('cameras', {})
    rows, shortfalls = [], []
    for world in worlds:
        inputs, per_scene = world.get('inputs', {}), get(world, 'goal.per_scene', {})
        for scene in get(inputs, 'training.scenes', {}):
            verdicts = per_scene.get(scene, {})
            figures = [get(inputs, f'{name}.scenes.{scene}') for name, _ in INPUTS]
            rows.append([
                world['world_seed'], scene, *(_errors(f) for f in figures[:2]),
                _ratios(get(verdicts, 'ratios.wide_reprojected')), _errors(figures[2]),
                _ratios(get(verdicts, 'ratios.wide_resized')),
                ' / '.join(pct((f or {}).get('scene_accuracy'), 0) for f in figures),
                verdict(verdicts.get('met'))])
        shortfalls += _shortfalls(world)
    checks = '; '.join(
        f"world {w['world_seed']}: {get(w, 'pose_check.frames')} poses within "
        f"{get(w, 'pose_check.max_position_m', float('nan')):.1e} m and "
        f"{get(w, 'pose_check.max_orientation_deg', float('nan')):.1e}°, "
        f"{get(w, 'pose_check.images_compared')} images identical" for w in worlds)
    reprojection = cameras.get('wide_reprojection', {})
    parts = [caption(source), '', settings_table([
        ['recipe', f"`{s.get('config', '?')}` at {budget.get('epochs')} epochs (step size "
                   f"{budget.get('step_size')}), training seed {s.get('seed')}; the deployed "
                   'run only (no fold runs), exported without calibration'],
        ['worlds', f"seeds {', '.join(str(w) for w in s.get('world_seeds', []))} (0: the world "
                   'the recipes were tuned on; others generated at benchmark time), 3 scenes, '
                   f"{budget.get('train_frames')} training frames per scene over "
                   f"{budget.get('train_sequences')} walks, {budget.get('test_frames')} test "
                   f"frames over {budget.get('test_sequences')} walks under other light"],
        ['dataset camera (training, input `training`)', _camera(cameras.get('dataset'))],
        ["network input (the bundle's `training_camera`)", _camera(cameras.get('training'))],
        ['wide camera (`synth.camera.wide_camera`)',
         f"{_camera(cameras.get('wide'))}; the reprojection sees "
         f"{pct(reprojection.get('coverage'), 1)} of the network input"],
        ['test poses', 'the test walks re-planned from `manifest.json`, each pose rendered '
                       'through both cameras under its walk\'s light; checked against the '
                       f'written test split: {checks}']]), '',
        'Median position / orientation error per scene on the test walks (predicted scene, as '
        'deployed), the wide camera against the training camera:', '',
        table(['world', 'scene', 'training camera', 'wide, reprojected',
               f"reprojected / training, pos / rot (goal <= {s.get('ratio_goal', '?')})",
               'wide, resized + cropped', 'resized / training, pos / rot',
               'scene accuracy: training / reprojected / resized', 'goal'], rows)]
    if worlds:
        parts += ['', ('Goal not met: ' + '; '.join(shortfalls) + '.') if shortfalls else
                  'Every scene meets the goal, position and orientation.']
    if res.get('remap'):
        parts += [''] + _remap(res['remap'], s.get('threads'))
    return '\n'.join(parts)
