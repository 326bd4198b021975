"""Tables of the speed benchmarks (latency, stream, throughput, ONNX, GPU, model speed).

Each function takes the loaded results file (``common.markdown.Source``) and returns Markdown
starting with its caption; ``benchmarks/figures.py`` places it between the markers. Every
statistic is labelled as what it is (median = p50, mean, p95).
"""
from typing import Any, Dict, List, Optional

from common.markdown import caption, DASH, get, num, pct, rate, settings_table, Source, table
from common.markdown import verdict

STAGES = ('decode', 'preprocess', 'inference', 'tf', 'pose_stream', 'publish')


def model_label(config: Optional[Dict[str, Any]], size: str) -> str:
    """Return 'demo (Lite0, d=64, 2+2 / 2+2 layers)' from a model configuration."""
    if not config:
        return size
    backbone = str(config.get('backbone', '')).replace('efficientnet_', '').capitalize()
    return (f"{size} ({backbone}, d={config.get('hidden_dim')}, "
            f"{config.get('enc_layers_t')}+{config.get('dec_layers_t')} / "
            f"{config.get('enc_layers_rot')}+{config.get('dec_layers_rot')} layers)")


def _nodes(measurement: Dict[str, Any]) -> Dict[str, Dict[str, Any]]:
    """Return a latency measurement's node figures per fusion setting (old files: one)."""
    if 'nodes' in measurement:
        return measurement['nodes']
    keys = ('node_ms', 'ratio_p50', 'ratio_mean', 'node_stages_ms', 'node_stages_frames',
            'outside_worker_ms')
    return {'not recorded': {key: measurement.get(key) for key in keys}}


def latency(source: Source) -> str:
    """Node vs Localizer, fusion on and off; stage means; the fusion's share; the echo floor."""
    settings, results = source.settings, source.results
    configs = settings.get('model_configs', {})
    rows, stage_rows, share_rows = [], [], []
    for m in results.get('measurements', []):
        label = model_label(configs.get(m['model']), m['model'])
        if m.get('device', 'cpu') != 'cpu' or m.get('precision', 'fp32') != 'fp32':
            label += f" {m['device']} {m['precision']}"
        for fusion, n in _nodes(m).items():
            rows.append([label, num(m['parameters'] / 1e6, 1, ' M'), fusion,
                         num(m['direct_ms']['p50'], 1, ' ms'), num(n['node_ms']['p50'], 1, ' ms'),
                         f"**{num(n['ratio_p50'], 2)}**", num(m['direct_ms']['p95'], 1, ' ms'),
                         num(n['node_ms']['p95'], 1, ' ms')])
            stages = n.get('node_stages_ms') or {}
            stage_rows.append([m['model'], fusion] + [num(stages.get(s), 2) for s in STAGES]
                              + [num(stages.get('total'), 2), num(n.get('outside_worker_ms'), 2),
                                 n.get('node_stages_frames', DASH)])
        cost = m.get('fusion_cost')
        goal = get(results, f"goals.models.{m['model']}")
        if cost:
            nodes = m['nodes']
            share_rows.append([
                m['model'], f"{num(cost['pose_stream_window_ms'], 2)} / "
                f"{num(cost['pose_stream_none_ms'], 2)} ms", num(cost['fusion_ms'], 2, ' ms'),
                pct(cost['share_of_node'], 1), num(cost['node_p50_difference_ms'], 1, ' ms'),
                f"{num(nodes['window']['ratio_p50'], 2)} / {num(nodes['none']['ratio_p50'], 2)}",
                verdict(goal['met']) if goal else DASH])
    frames = settings.get('frames')
    parts = [caption(source), '', settings_table([
        ['frames per model (after warm-up)', f"{frames} (+ {settings.get('warmup')})"],
        ['image', f"{'x'.join(map(str, settings.get('image_size', [])))} "
                  f"{settings.get('encoding', '')}, one frame in flight"],
        ['node parameters beyond the defaults', ', '.join(
            f'`{k}: {v}`' for k, v in settings.get('node_parameters', {}).items()) or DASH],
        ['fusion settings measured', ', '.join(settings.get('fusion', ['not recorded']))]]),
        '', 'Medians (p50) and p95 of the round trip, image published -> pose received:', '',
        table(['model', 'parameters', 'fusion', 'Localizer alone p50', 'node p50',
               f"node / core p50 (target < {settings.get('target_ratio', 1.15)})",
               'Localizer alone p95', 'node p95'], rows),
        '', "The node's stages, means over the measured frames (ms), from its /diagnostics:", '',
        table(['model', 'fusion', *STAGES, 'worker total', 'outside the worker', 'frames'],
              stage_rows)]
    if share_rows:
        parts += ['', "The fusion's share: pose_stream (gates + fusion) with the fusion on and "
                  'off, their difference per frame, and that over the mean round trip with it '
                  'on:', '', table([
                      'model', 'pose_stream on / off (mean)', 'fusion per frame',
                      "share of the node's time", 'node p50 on - off',
                      'node / core p50, on / off',
                      f"goal node / core <= {settings.get('goal_ratio', 1.05)}, fusion on"],
                      share_rows)]
    else:
        parts += ['', "_This file has no fusion-on / fusion-off pair: the fusion's share of the "
                  "node's time is not in it._"]
    echo = results.get('echo_node_ms')
    if echo:
        parts += ['', table(['echo node (same interface, no work)', 'p50', 'p95'],
                            [['round trip', num(echo['p50'], 1, ' ms'),
                              num(echo['p95'], 1, ' ms')]])]
    return '\n'.join(parts)


def stream(sources: List[Source]) -> str:
    """One row per stream results file (fusion on, and off where that file exists)."""
    parts, rows = [], []
    for source in sources:
        s, r = source.settings, source.results
        counts, latency_ms, memory = r['counts'], r['latency_ms'], r['memory']
        fusion = s.get('fusion') or get(s, 'node_parameters.fusion', 'not recorded')
        rejected = sum((counts.get('rejected') or {}).values())
        rows.append([
            fusion, f"{num(counts['published'], 0)} ({num(counts['publisher_missed_ticks'], 0)})",
            f"{num(counts['answered'], 0)} ({num(r['answer_rate_hz'], 1)} Hz)",
            f"{num(counts['superseded'], 0)} / {num(rejected, 0)} / "
            f"{num(counts['not_received'], 0)}",
            ' / '.join(num(latency_ms[k], 1) for k in ('p50', 'p95', 'p99', 'max')) + ' ms',
            f"{num(r['latency_last_window_ms']['p50'], 1)} vs "
            f"{num(r['latency_first_window_ms']['p50'], 1)} ms ({num(r['backlog_ratio'], 2)})",
            f"{num(memory['rss_start_mib'], 1)} -> {num(memory['rss_end_mib'], 1)} MiB "
            f"({num(memory['rss_max_mib'], 1)})"])
        parts += [caption(source), '']
    first = sources[0].settings
    parts += [settings_table([
        ['model', model_label(first.get('model_config'), first.get('model', '?'))],
        ['device, threads', f"{first.get('device')}, {first.get('threads')}"],
        ['camera', f"{'x'.join(map(str, first.get('image_size', [])))} "
                   f"{first.get('encoding', '')} at {num(first.get('rate_hz'), 0)} Hz, "
                   'best-effort, on schedule'],
        ['measured / warm-up', f"{num(first.get('duration_s'), 0)} s / "
                               f"{num(first.get('warmup_s'), 0)} s"]]), '',
        table(['fusion', 'published (camera ticks missed)', 'answered',
               'dropped: superseded / rejected / never reached the node',
               'latency p50 / p95 / p99 / max', 'backlog: p50 last vs first window (ratio)',
               'node RSS start -> end (max)'], rows)]
    return '\n'.join(parts)


def throughput(source: Source) -> str:
    """Training images/s of the paper configuration through the trainer's DataLoader."""
    rows = []
    for d in source.results.get('devices', []):
        step, wait = d['step_ms'], d['loader_wait_ms']
        rows.append([d['device'], d['precision'], d['batch_size'], d['num_workers'],
                     d['iterations'], rate(d['images_per_s']),
                     f"{num(step['p50'] / 1e3, 2)} / {num(step['p95'] / 1e3, 2)} s",
                     f"{num(wait['p50'], 1)} ms ({pct(d['loader_wait_fraction'], 1)})",
                     num(d['prepare_batch_ms']['p50'], 0, ' ms'), num(d['loader_keeps_up'])])
    return '\n'.join([caption(source), '', table(
        ['device', 'precision', 'batch', 'loader workers', 'iterations',
         'images/s (batch / mean iteration)', 'step p50 / p95',
         'loader wait p50 (share of all iterations)', 'one batch prepared in one process, p50',
         'loader keeps up'], rows)])


def onnx_latency(sources: List[Source]) -> str:
    """Torch eager vs onnxruntime at batch 1, one table per results file."""
    parts = []
    for source in sources:
        s = source.settings
        rows = []
        for size in s.get('sizes', []):
            r = source.results[size]
            rows.append([model_label(r.get('model'), size),
                         f"{num(r['torch_ms']['p50'], 1)} / {num(r['torch_ms']['p95'], 1)} ms",
                         f"{num(r['onnxruntime_ms']['p50'], 1)} / "
                         f"{num(r['onnxruntime_ms']['p95'], 1)} ms",
                         f"{num(r['ratio_p50'], 2)} / {num(r['ratio_p95'], 2)}",
                         f"{max(r['max_abs_difference'].values()):.1e}",
                         f"{verdict(r['goal_met'])} (<= {r['goal_ratio']})"])
        calls = f"{s.get('rounds')} rounds x {s.get('calls_per_round')} calls per back-end"
        parts += [caption(source), '', f"_{calls}, interleaved; opset {s.get('opset')}, "
                  f"onnxruntime {s.get('onnxruntime_version')}, random weights, one "
                  f"{'x'.join(map(str, s.get('frame_size', [])))} frame._", '',
                  table(['model', 'torch p50 / p95', 'onnxruntime p50 / p95',
                         'ratio p50 / p95', 'largest output difference',
                         'goal onnxruntime / torch p50'], rows), '']
    return '\n'.join(parts)


def int8_latency(source: Source) -> str:
    """Torch eager fp32, onnxruntime fp32 and the int8 graph at batch 1."""
    s = source.settings
    rows = []
    for size in s.get('sizes', []):
        r = source.results[size]
        ms, ratio = r['ms'], r['ratio_to_torch']
        check = r['quantization']['check']
        rows.append([model_label(r.get('model'), size),
                     f"{num(ms['torch']['p50'], 1)} ms",
                     f"{num(ms['onnxruntime']['p50'], 1)} ms "
                     f"({num(ratio['onnxruntime']['p50'], 2)})",
                     f"{num(ms['int8']['p50'], 1)} ms ({num(ratio['int8']['p50'], 2)})",
                     f"{verdict(r['goal_met'])} (<= {r['goal_ratio']})",
                     f"{check['outputs']['position']['median_abs_difference']:.1e} / "
                     f"{check['outputs']['orientation']['median_abs_difference']:.1e}",
                     f"{len(r['quantization']['float_nodes'])}",
                     # Percentile ranges fall back to min-max where ONNX Runtime cannot histogram.
                     str(r['quantization'].get('activations', 'not recorded'))])
    cpu = s.get('cpu', {})
    calls = f"{s.get('rounds')} rounds x {s.get('calls_per_round')} calls per variant"
    return '\n'.join([caption(source), '', f"_{calls}, interleaved; onnxruntime "
                      f"{s.get('onnxruntime_version')}; {cpu.get('kernels')}; random weights, "
                      f"int8 ranges calibrated on {s.get('calibration_frames')} rendered "
                      'frames._', '', table(
                          ['model', 'torch eager fp32 p50', 'onnxruntime fp32 p50 (/ torch)',
                           'int8 p50 (/ torch)', 'goal int8 / torch p50',
                           'int8 vs float median difference, position / orientation',
                           'nodes kept in float', 'activation ranges'], rows)])


#: How the torch_latency table names each variant (each one adds to the one before).
TORCH_VARIANTS = {'today': 'today (the model as built)', 'fold_bn': '+ BatchNorm folded',
                  'attention': '+ decoder attention without copies',
                  'cross_attention': '+ cross-attention without projecting the tokens',
                  'channels_last': '+ channels-last convolutions (inference_model)',
                  'compiled': 'that model compiled by torch.compile (not eager; torch_compile)'}


def torch_latency(source: Source) -> str:
    """Torch eager at batch 1: today's path and each inference rewrite, then where time goes."""
    s = source.settings
    rows, goals, floors, profile_rows = [], [], [], []
    for size in s.get('sizes', []):
        r = source.results[size]
        label = model_label(r.get('model'), size) if r.get('model') else size
        for name, title in TORCH_VARIANTS.items():
            if name not in r['ms']:
                continue
            rows.append([label, title, f"{num(r['ms'][name]['p50'], 1)} / "
                         f"{num(r['ms'][name]['p95'], 1)} ms",
                         num(r['ratio_p50'][name], 2),
                         f"{r['max_abs_difference'][name]:.1e}"])
        compiled = (f"; compiled {num(r['ratio_p50']['compiled'], 2)} of today, its compile "
                    f"(cold cache) {num(r['compile_s'], 0)} s"
                    if 'compiled' in r['ratio_p50'] else '')
        goals.append(f"{size}: eager {num(r['ratio_p50']['channels_last'], 2)} of today "
                     f"({verdict(r['goal_met'])}, goal <= {r['goal_ratio']}){compiled}")
        arithmetic = r.get('arithmetic')
        if arithmetic:
            flops = arithmetic['gflop_per_forward']
            floors.append(f"{size}: {num(flops['today'], 2)} GFLOP per forward today, "
                          f"{num(flops['channels_last'], 2)} rewritten; at "
                          f"{num(arithmetic['matmul_gflop_s'], 0)} GFLOP/s that arithmetic "
                          f"alone takes {num(arithmetic['floor_ms'], 1)} ms, "
                          f"{num(arithmetic['floor_ratio'], 2)} of today")
        for name, operators in r.get('profile', {}).items():
            for rank, op in enumerate(operators[:5]):
                variant = TORCH_VARIANTS[name].split(' (')[0]
                profile_rows.append([size if rank == 0 else '', variant if rank == 0 else '',
                                     op['operator'], pct(op['share'], 0),
                                     num(op['ms_per_forward'], 1),
                                     num(op['calls_per_forward'], 0)])
    calls = f"{s.get('rounds')} rounds x {s.get('calls_per_round')} calls per variant"
    return '\n'.join([
        caption(source), '', f'_{calls}, interleaved; batch 1, fp32, random weights._', '',
        table(['model', 'variant', 'p50 / p95', 'p50 / today', 'largest output difference '
               'to today'], rows), '', 'Goal (the paper model): ' + '; '.join(goals) + '.', '',
        *(['Arithmetic (matrix products, convolutions and attention kernels; the rate is a '
           '1024 x 1024 float32 matrix product on this machine, the best case of any float32 '
           'kernel): ' + '; '.join(floors) + '.', ''] if floors else []),
        f"Where the time goes (self CPU time per forward, {s.get('profiled_calls')} profiled "
        'calls, top 5 operators):', '',
        table(['model', 'variant', 'operator', 'share', 'ms per forward', 'calls per forward'],
              profile_rows)])


def gpu_latency(source: Source) -> str:
    """Localizer per precision and with CUDA graphs."""
    rows = []
    for size, result in source.results.items():
        for name, v in result.get('variants', {}).items():
            if 'skipped' in v:
                rows.append([size, name, f"skipped: {v['skipped']}", '', '', ''])
                continue
            rate = v.get('throughput')
            diff = v['difference_vs_fp32']
            rows.append([size, name, f"{num(v['localize_ms']['p50'], 2)} / "
                         f"{num(v['localize_ms']['p99'], 2)} ms",
                         f"{num(v['model_ms']['p50'], 2)} / {num(v['model_ms']['p99'], 2)} ms",
                         num(rate['images_per_s'], 1) if rate else 'batch 1 only',
                         f"{diff['position_m']:.1e} m, {diff['orientation_deg']:.1e}°, "
                         f"{diff['scene_disagreements']}/{diff['images']} scenes"])
    goals = [f"{size}: {verdict(get(r, 'goal.met'))} (best {get(r, 'goal.best_variant')}, "
             f"{num(get(r, 'goal.best_p50_ms'), 2)} ms)" if get(r, 'goal.applies')
             else f"{size}: not judged ({get(r, 'goal.reason')})"
             for size, r in source.results.items()]
    return '\n'.join([caption(source), '', f"_Device: {source.settings.get('device')} "
                      f"({source.settings.get('cuda_device') or 'no CUDA'})._", '', table(
                          ['model', 'variant', 'localize p50 / p99', 'model only p50 / p99',
                           'eager images/s at the batch', 'largest difference from fp32'], rows),
                      '', 'Goal localize p50 < 3 ms: ' + '; '.join(goals) + '.'])


def model_speed(source: Source) -> str:
    """Baseline vs ours forward latency and the QKA training-step cost (medians)."""
    rows = []
    for r in source.results.get('inference', []):
        for clock in ('wall', 'cpu'):
            rows.append([r['backbone'].replace('efficientnet_', ''), r['device'], r['precision'],
                         clock, num(r['latency_ms']['baseline_learned_pe'][clock], 1, ' ms'),
                         num(r['latency_ms']['ours_sine_pe'][clock], 1, ' ms'),
                         num(r['ratio_ours_over_baseline'][clock], 2)])
    parts = [caption(source), '', 'Forward pass, batch 1, medians (cpu: process CPU time, all '
             'threads):', '', table(['backbone', 'device', 'precision', 'clock',
                                     'baseline (learned PE)', 'ours (sine PE)', 'ours / baseline'],
                                    rows)]
    training = source.results.get('training')
    if training:
        step = training['step_ms']
        parts += ['', f"Training step of the paper configuration, batch {training['batch']} on "
                  f"{training['device']}, medians:", '', table(
                      ['clock', 'without QKA', 'with QKA', 'QKA overhead'],
                      [[clock, num(step['without_qka'][clock] / 1e3, 2, ' s'),
                        num(step['with_qka'][clock] / 1e3, 2, ' s'),
                        pct(training['qka_overhead'][clock], 1)] for clock in ('wall', 'cpu')])]
    return '\n'.join(parts)
