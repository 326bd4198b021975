"""Encoder self-attention report (NeurIPS 2024 analysis, docs/paper.md section 3.4).

For a model and a sample of images: per branch and encoder layer the attention entropy, the
query/key centroid distance and the query-region purity (``mspr_ros.model.attention_stats``),
written
as ``attention.json``, ``attention.md`` and plots (entropy per layer, purity histograms).
Reports of several models (baseline vs ours) are compared with::

    python -m mspr_training.attention_report --compare ours/attention.json \
        base/attention.json --labels ours baseline --out DIR
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
import sys
from typing import Mapping, Sequence

import numpy as np
import torch
from torch import nn

from mspr_ros.model.attention_stats import (AttentionStats, collect_attention_stats,
                                            DEFAULT_NEIGHBOURS, LayerAttentionStats)
from mspr_training.plots import plot_attention_entropy, plot_purity_histograms

# Images per forward pass: the purity needs an N x 2N distance matrix per image and head.
CHUNK_SIZE = 4


def _merge_layers(chunks: Sequence[tuple[int, list[LayerAttentionStats]]]
                  ) -> list[LayerAttentionStats]:
    """Average per-layer stats of image chunks, weighted by their image counts."""
    total = sum(count for count, _ in chunks)
    merged = []
    for layer_index in range(len(chunks[0][1])):
        layers = [(count, layers[layer_index]) for count, layers in chunks]

        def mean(name: str) -> float:
            """Return the image-weighted mean of one statistic over the chunks."""
            return float(sum(count * getattr(layer, name) for count, layer in layers) / total)

        merged.append(LayerAttentionStats(
            entropy=mean('entropy'), centroid_distance=mean('centroid_distance'),
            purity_mean=mean('purity_mean'),
            purity_histogram=np.sum([layer.purity_histogram for _, layer in layers],
                                    axis=0).astype(int).tolist(),
            purity_bin_edges=list(layers[0][1].purity_bin_edges)))
    return merged


def usable_neighbours(model: nn.Module, images: torch.Tensor, wanted: int) -> int:
    """Return ``wanted`` capped to what the smaller token map allows (2N - 1 other points)."""
    with torch.no_grad():
        feat_t, feat_rot = model.forward_features(images[:1])
    tokens = min(feat_t.shape[-2] * feat_t.shape[-1], feat_rot.shape[-2] * feat_rot.shape[-1])
    return max(1, min(wanted, 2 * tokens - 1))


def collect(model: nn.Module, images: torch.Tensor,
            neighbours: int = DEFAULT_NEIGHBOURS) -> AttentionStats:
    """Return the diagnostics of ``model`` on ``images`` (``B x 3 x H x W``, normalised).

    Images are processed in chunks of :data:`CHUNK_SIZE`; means are weighted by image count,
    histograms summed, so the result equals one pass over all images. ``neighbours`` (the
    purity's k) is capped for tiny token maps; the value used is in the result.
    """
    if images.shape[0] == 0:
        raise ValueError('the attention report needs at least one image')
    neighbours = usable_neighbours(model, images, neighbours)
    chunks = []
    for start in range(0, images.shape[0], CHUNK_SIZE):
        part = images[start:start + CHUNK_SIZE]
        stats = collect_attention_stats(model, part, neighbours)
        chunks.append((part.shape[0], stats))
    return AttentionStats(
        position=_merge_layers([(count, s.position) for count, s in chunks]),
        orientation=_merge_layers([(count, s.orientation) for count, s in chunks]),
        neighbours=neighbours)


def to_markdown(stats: Mapping[str, dict]) -> str:
    """Return one Markdown table per branch with a row per layer and columns per model."""
    labels = list(stats)
    lines = []
    for branch in ('position', 'orientation'):
        lines.append(f'### {branch} encoder')
        lines.append('')
        header = ['layer'] + [f'{label} {what}' for label in labels
                              for what in ('entropy', 'q-k distance', 'purity')]
        lines.append('| ' + ' | '.join(header) + ' |')
        lines.append('| ' + ' | '.join(['---'] * len(header)) + ' |')
        depth = max(len(stats[label][branch]) for label in labels)
        for layer in range(depth):
            row = [str(layer + 1)]
            for label in labels:
                layers = stats[label][branch]
                if layer < len(layers):
                    values = layers[layer]
                    row += [f'{values["entropy"]:.3f}', f'{values["centroid_distance"]:.3f}',
                            f'{values["purity_mean"]:.3f}']
                else:
                    row += ['', '', '']
            lines.append('| ' + ' | '.join(row) + ' |')
        lines.append('')
    lines.append('Entropy: -(1/N) sum_ij A_ij log A_ij (nats), mean over heads and images. '
                 'q-k distance: || mean query - mean key || per head (the QKA quantity). '
                 'Purity: fraction of queries among each query\'s nearest neighbours in the '
                 'pooled queries and keys (1: the query region holds no key).')
    return '\n'.join(lines) + '\n'


def write_report(stats: Mapping[str, dict], out_dir: str | Path) -> dict[str, Path]:
    """Write ``attention.json``, ``attention.md`` and the two plots; return their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {'json': out_dir / 'attention.json', 'markdown': out_dir / 'attention.md'}
    paths['json'].write_text(json.dumps(dict(stats), indent=2) + '\n')
    paths['markdown'].write_text(to_markdown(stats))
    paths['entropy_plot'] = plot_attention_entropy(stats, out_dir / 'attention_entropy.png')
    paths['purity_plot'] = plot_purity_histograms(stats, out_dir / 'attention_purity.png')
    return paths


def read_report(path: str | Path) -> dict[str, dict]:
    """Read an ``attention.json`` written by :func:`write_report` (label -> stats)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f'{path}: cannot read attention report: {error}') from error
    if not isinstance(data, dict) or not all(
            isinstance(v, dict) and {'position', 'orientation'} <= set(v) for v in data.values()):
        raise ValueError(f'{path}: not an attention report (label -> position/orientation)')
    return data


def main(argv: Sequence[str] | None = None) -> int:
    """Compare saved attention reports: ``--compare A.json B.json --labels a b --out DIR``."""
    parser = argparse.ArgumentParser(prog='python -m mspr_training.attention_report',
                                     description='Compare attention reports side by side.')
    parser.add_argument('--compare', nargs='+', required=True, help='attention.json files')
    parser.add_argument('--labels', nargs='+', help='one label per report')
    parser.add_argument('--out', required=True, help='output folder')
    args = parser.parse_args(argv)
    labels = args.labels or [Path(p).parent.name for p in args.compare]
    if len(labels) != len(args.compare):
        parser.error(f'{len(labels)} labels for {len(args.compare)} reports')
    combined = {}
    try:
        for label, path in zip(labels, args.compare):
            report = read_report(path)
            for inner, stats in report.items():
                combined[label if len(report) == 1 else f'{label}/{inner}'] = stats
    except ValueError as error:
        print(f'error: {error}', file=sys.stderr)
        return 2
    paths = write_report(combined, args.out)
    print(Path(paths['markdown']).read_text())
    return 0


if __name__ == '__main__':
    sys.exit(main())
