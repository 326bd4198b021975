"""Epoch orders of mspr_training.sampler: balance, determinism, sharding, resume."""
from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st
import numpy as np
import pytest

from mspr_training.sampler import build_sampler, DistributedSceneSampler, SceneBalancedSampler

# Scene sizes 10, 4, 2 (the imbalance of Cambridge: StMarys 1487 vs ShopFacade 231).
SCENE_OF = np.repeat([0, 1, 2], [10, 4, 2])


def _indices(sampler):
    return [index for index, _ in sampler]


def test_balanced_epoch_has_max_count_times_scenes_draws_and_every_image():
    sampler = SceneBalancedSampler(SCENE_OF, balanced=True, seed=1)
    indices = _indices(sampler)
    assert len(indices) == len(sampler) == 30
    assert set(indices) == set(range(16))  # every real image at least once


def test_balanced_scenes_are_equally_represented():
    sampler = SceneBalancedSampler(SCENE_OF, balanced=True, seed=1)
    counts = Counter()
    for epoch in range(200):
        sampler.set_epoch(epoch)
        counts.update(SCENE_OF[_indices(sampler)].tolist())
    fractions = np.array([counts[s] for s in range(3)]) / sum(counts.values())
    np.testing.assert_allclose(fractions, 1 / 3, atol=0.02)
    # Without balancing the big scene dominates as in the data.
    plain = SceneBalancedSampler(SCENE_OF, balanced=False, seed=1)
    assert sorted(_indices(plain)) == list(range(16))


def test_orders_depend_only_on_seed_and_epoch():
    first = SceneBalancedSampler(SCENE_OF, balanced=True, seed=7)
    second = SceneBalancedSampler(SCENE_OF, balanced=True, seed=7)
    first.set_epoch(3)
    second.set_epoch(3)
    assert list(first) == list(second)
    second.set_epoch(4)
    assert list(first) != list(second)
    other_seed = SceneBalancedSampler(SCENE_OF, balanced=True, seed=8)
    other_seed.set_epoch(3)
    assert _indices(first) != _indices(other_seed)


def test_set_start_skips_the_consumed_draws():
    sampler = SceneBalancedSampler(SCENE_OF, balanced=True, seed=2)
    sampler.set_epoch(5)
    whole = list(sampler)
    sampler.set_start(12)
    assert list(sampler) == whole[12:]
    assert len(sampler) == 18
    sampler.set_epoch(6)  # a new epoch starts from its beginning
    assert len(list(sampler)) == 30


@pytest.mark.parametrize('replicas', [2, 3, 4])
def test_distributed_shards_are_disjoint_and_cover_the_epoch(replicas):
    single = SceneBalancedSampler(SCENE_OF, balanced=True, seed=4)
    single.set_epoch(2)
    whole = list(single)
    shards = []
    for rank in range(replicas):
        sampler = DistributedSceneSampler(SCENE_OF, num_replicas=replicas, rank=rank,
                                          balanced=True, seed=4)
        sampler.set_epoch(2)
        shards.append(list(sampler))
    lengths = {len(shard) for shard in shards}
    assert lengths == {-(-30 // replicas)}  # equal shares, padded
    # Positions are disjoint: interleaving the shards gives back the (padded) epoch order.
    interleaved = [shard[i] for i in range(len(shards[0])) for shard in shards]
    assert interleaved[:30] == whole
    assert interleaved[30:] == whole[:len(interleaved) - 30]  # padding repeats the start


def test_distributed_batches_together_equal_the_single_process_batch():
    per_rank, replicas = 3, 2
    single = SceneBalancedSampler(SCENE_OF, balanced=True, seed=5)
    whole = list(single)
    shards = [list(DistributedSceneSampler(SCENE_OF, num_replicas=replicas, rank=rank,
                                           balanced=True, seed=5)) for rank in range(replicas)]
    for batch in range(30 // (per_rank * replicas)):
        together = [draw for shard in shards
                    for draw in shard[batch * per_rank:(batch + 1) * per_rank]]
        expected = whole[batch * per_rank * replicas:(batch + 1) * per_rank * replicas]
        assert sorted(together) == sorted(expected)
    # Scene balance holds on every rank (in expectation, as for one process).
    for rank in range(replicas):
        sampler = DistributedSceneSampler(SCENE_OF, num_replicas=replicas, rank=rank,
                                          balanced=True, seed=5)
        counts = Counter()
        for epoch in range(200):
            sampler.set_epoch(epoch)
            counts.update(SCENE_OF[_indices(sampler)].tolist())
        fractions = np.array([counts[s] for s in range(3)]) / sum(counts.values())
        np.testing.assert_allclose(fractions, 1 / 3, atol=0.03)


def test_state_round_trip_and_mismatch():
    sampler = build_sampler(SCENE_OF, balanced=True, shuffle=True, seed=9)
    sampler.set_epoch(11)
    restored = build_sampler(SCENE_OF, balanced=True, shuffle=True, seed=9)
    restored.load_state_dict(sampler.state_dict())
    assert list(restored) == list(sampler)
    with pytest.raises(ValueError, match='seed'):
        build_sampler(SCENE_OF, balanced=True, shuffle=True, seed=10).load_state_dict(
            sampler.state_dict())
    with pytest.raises(ValueError, match='balanced'):
        build_sampler(SCENE_OF, balanced=False, shuffle=True, seed=9).load_state_dict(
            sampler.state_dict())
    assert isinstance(build_sampler(SCENE_OF, balanced=True, shuffle=True, seed=9,
                                    num_replicas=2, rank=1), DistributedSceneSampler)


def test_draw_seeds_differ_between_repeated_images():
    sampler = SceneBalancedSampler(SCENE_OF, balanced=True, seed=3)
    draws = list(sampler)
    seeds_by_index = {}
    for index, seed in draws:
        seeds_by_index.setdefault(index, []).append(seed)
    repeated = [seeds for seeds in seeds_by_index.values() if len(seeds) > 1]
    assert repeated  # scene 2 (2 images) fills 10 draws
    assert all(len(set(seeds)) == len(seeds) for seeds in repeated)


def test_invalid_arguments():
    with pytest.raises(ValueError, match='empty'):
        SceneBalancedSampler([])
    with pytest.raises(ValueError, match='rank'):
        DistributedSceneSampler(SCENE_OF, num_replicas=2, rank=2)


@settings(max_examples=40, deadline=None)
@given(counts=st.lists(st.integers(min_value=1, max_value=9), min_size=1, max_size=5),
       replicas=st.integers(min_value=1, max_value=5), balanced=st.booleans(),
       epoch=st.integers(min_value=0, max_value=1000))
def test_sharding_property(counts, replicas, balanced, epoch):
    scene_of = np.repeat(np.arange(len(counts)), counts)
    whole = SceneBalancedSampler(scene_of, balanced=balanced, seed=epoch % 7)
    whole.set_epoch(epoch)
    order = list(whole)
    shards = []
    for rank in range(replicas):
        sampler = DistributedSceneSampler(scene_of, num_replicas=replicas, rank=rank,
                                          balanced=balanced, seed=epoch % 7)
        sampler.set_epoch(epoch)
        shards.append(list(sampler))
        assert len(sampler) == len(shards[-1])
    interleaved = [shard[i] for i in range(len(shards[0])) for shard in shards]
    assert interleaved[:len(order)] == order
    assert len(interleaved) - len(order) < replicas
