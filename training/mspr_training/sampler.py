"""Epoch orders for training: shuffled or scene-balanced, single-process or sharded.

Each epoch's order is a pure function of (seed, epoch), so a resumed run and every
data-parallel process agree on it without communicating. Items are ``(index, draw_seed)`` pairs;
``draw_seed`` seeds the item's augmentation (see ``mspr_training.transforms.SeededDraws``).

Balanced sampling follows MS-Transformer's ``equalize_scenes`` (docs/paper.md section 4.1): an
epoch has ``max_scene_count * S`` draws: every image once, plus ``max * S - N`` extra draws that
each pick a scene with probability ``(max - count_s) / (max * S - N)`` and then a uniformly random
image of it, so each scene contributes ``max`` draws in expectation.
"""
from typing import Any, Iterator

import numpy as np
from torch.utils.data import Sampler

# Distinguishes the order stream from the draw-seed stream of one (seed, epoch).
_ORDER_STREAM = 0
_SEED_STREAM = 1


class SceneBalancedSampler(Sampler):
    """Epoch orders over a multi-scene dataset.

    Args:
        scene_of: int (N,) scene index of each dataset item.
        balanced: equalize scenes per epoch (else every item once).
        shuffle: shuffle the epoch order.
        seed: base seed of every epoch's order.

    Iterating yields ``(index, draw_seed)`` pairs; ``len`` is the number still to come in this
    epoch (``set_start`` skips the beginning of an interrupted epoch).
    """

    def __init__(self, scene_of: Any, *, balanced: bool = False, shuffle: bool = True,
                 seed: int = 0) -> None:
        """See the class docstring."""
        self.scene_of = np.asarray(scene_of, dtype=np.int64).reshape(-1)
        if self.scene_of.size == 0:
            raise ValueError('cannot sample from an empty dataset')
        if self.scene_of.min() < 0:
            raise ValueError('scene indices must be >= 0')
        self.balanced = balanced
        self.shuffle = shuffle
        self.seed = int(seed)
        self.epoch = 0
        self.start = 0
        counts = np.bincount(self.scene_of)
        self._members = [np.flatnonzero(self.scene_of == s) for s in range(counts.size)]
        self._counts = counts[counts > 0]
        self._scenes = np.flatnonzero(counts > 0)

    def epoch_length(self) -> int:
        """Return the number of draws of one whole epoch (all processes together)."""
        if not self.balanced:
            return int(self.scene_of.size)
        return int(self._counts.max() * self._counts.size)

    def epoch_order(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """Return ``(indices, draw_seeds)`` of a whole epoch, both int64 (epoch_length,)."""
        rng = np.random.default_rng([self.seed, int(epoch), _ORDER_STREAM])
        indices = np.arange(self.scene_of.size, dtype=np.int64)
        if self.balanced:
            indices = np.concatenate([indices, self._extra_draws(rng)])
        if self.shuffle:
            indices = rng.permutation(indices)
        seeds = np.random.default_rng([self.seed, int(epoch), _SEED_STREAM]).integers(
            0, 2 ** 63 - 1, size=indices.size, dtype=np.int64)
        return indices, seeds

    def _extra_draws(self, rng: np.random.Generator) -> np.ndarray:
        """Return the equalizing draws: a scene by its deficit, then one of its images."""
        largest = self._counts.max()
        extra = int(largest * self._counts.size - self.scene_of.size)
        if extra == 0:
            return np.empty(0, dtype=np.int64)
        deficit = (largest - self._counts) / extra
        scenes = rng.choice(self._scenes, size=extra, p=deficit)
        picks = np.empty(extra, dtype=np.int64)
        for scene in np.unique(scenes):
            slots = np.flatnonzero(scenes == scene)
            picks[slots] = rng.choice(self._members[scene], size=slots.size)
        return picks

    def shard(self, indices: np.ndarray) -> np.ndarray:
        """Return this process's part of a whole-epoch array (all of it here)."""
        return indices

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose order the next iteration yields; resets ``start``."""
        self.epoch = int(epoch)
        self.start = 0

    def set_start(self, position: int) -> None:
        """Skip the first ``position`` draws of this process's share of the current epoch."""
        if position < 0:
            raise ValueError(f'start position must be >= 0, got {position}')
        self.start = int(position)

    def _local(self) -> tuple[np.ndarray, np.ndarray]:
        indices, seeds = self.epoch_order(self.epoch)
        return self.shard(indices)[self.start:], self.shard(seeds)[self.start:]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        """Yield ``(index, draw_seed)`` for the rest of the current epoch."""
        indices, seeds = self._local()
        return iter(zip(indices.tolist(), seeds.tolist()))

    def __len__(self) -> int:
        """Return the number of draws still to come in the current epoch."""
        return max(0, self.local_length() - self.start)

    def local_length(self) -> int:
        """Return the draws of one whole epoch for this process."""
        return self.epoch_length()

    def state_dict(self) -> dict[str, Any]:
        """Return what defines the epoch orders: seed, epoch, balanced, shuffle.

        The position inside the epoch is the trainer's (iterations done times the per-process
        batch), given back through :meth:`set_start` on resume.
        """
        return {'seed': self.seed, 'epoch': self.epoch, 'balanced': self.balanced,
                'shuffle': self.shuffle}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the epoch; seed and settings must match or the orders would differ."""
        for key in ('seed', 'balanced', 'shuffle'):
            if state[key] != getattr(self, key):
                raise ValueError(f'sampler {key} {getattr(self, key)!r} differs from the '
                                 f'checkpoint\'s {state[key]!r}: the epoch orders would differ')
        self.set_epoch(int(state['epoch']))


class DistributedSceneSampler(SceneBalancedSampler):
    """The same epoch orders, sharded over ``num_replicas`` processes.

    The whole-epoch order is padded (by repeating its beginning) to a multiple of
    ``num_replicas`` and process ``rank`` takes positions ``rank, rank + R, rank + 2R, ...``.
    With a per-process batch ``b``, batch ``i`` of all processes together is exactly positions
    ``[i * b * R, (i + 1) * b * R)`` of the single-process order: data-parallel training sees
    the same global batches as one process with batch ``b * R``, and the scene balance is kept.
    """

    def __init__(self, scene_of: Any, *, num_replicas: int, rank: int,
                 balanced: bool = False, shuffle: bool = True, seed: int = 0) -> None:
        """See :class:`SceneBalancedSampler`; ``rank`` in ``[0, num_replicas)``."""
        super().__init__(scene_of, balanced=balanced, shuffle=shuffle, seed=seed)
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ValueError(f'need 0 <= rank < num_replicas, got rank {rank} of '
                             f'{num_replicas}')
        self.num_replicas = int(num_replicas)
        self.rank = int(rank)

    def local_length(self) -> int:
        """Return the draws of one whole epoch for this process (after padding)."""
        return -(-self.epoch_length() // self.num_replicas)

    def shard(self, indices: np.ndarray) -> np.ndarray:
        """Return positions ``rank::num_replicas`` of the padded whole-epoch array."""
        padded_length = self.local_length() * self.num_replicas
        padding = padded_length - indices.size
        if padding:
            indices = np.concatenate([indices, np.resize(indices, padding)])
        return indices[self.rank::self.num_replicas]


def build_sampler(scene_of: Any, *, balanced: bool, shuffle: bool, seed: int,
                  num_replicas: int = 1, rank: int = 0) -> SceneBalancedSampler:
    """Return the single-process sampler, or the sharded one when ``num_replicas > 1``."""
    if num_replicas > 1:
        return DistributedSceneSampler(scene_of, num_replicas=num_replicas, rank=rank,
                                       balanced=balanced, shuffle=shuffle, seed=seed)
    return SceneBalancedSampler(scene_of, balanced=balanced, shuffle=shuffle, seed=seed)
