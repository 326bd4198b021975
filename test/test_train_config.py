"""Training configs: paper recipes, errors naming file/line/key, overrides, data section."""
import dataclasses
from pathlib import Path
import shutil

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from mspr_training.config import (bundled_config, CONFIG_DIR, ConfigError, DataConfig, dump_config,
                                  load_config, TrainConfig)
from mspr_training.data import DatasetError, PoseSample
from mspr_training.datasets import data_fingerprint, read_split, split_calibration
from mspr_training.synth import generate

PAPER_CONFIGS = ('7scenes_ours', '7scenes_baseline', 'cambridge_ours', 'cambridge_baseline',
                 'cambridge_finetune')


def test_every_bundled_config_loads_and_round_trips(tmp_path):
    names = sorted(path.stem for path in CONFIG_DIR.glob('*.yaml'))
    assert set(PAPER_CONFIGS) | {'synth_demo', 'synth_baseline', 'tiny_test'} <= set(names)
    for name in names:
        cfg = load_config(f'{name}.yaml')
        assert TrainConfig.from_dict(cfg.to_dict()) == cfg
        dump_config(cfg, tmp_path / f'{name}.yaml')
        assert load_config(tmp_path / f'{name}.yaml') == cfg


@pytest.mark.parametrize('name', PAPER_CONFIGS)
def test_paper_configs_share_the_optimizer_and_model_size(name):
    cfg = load_config(name)
    assert (cfg.optim.lr, cfg.optim.eps, cfg.optim.weight_decay, cfg.optim.batch_size) == (
        1e-4, 1e-10, 1e-4, 8)
    assert cfg.optim.betas == (0.9, 0.999)
    assert (cfg.model.hidden_dim, cfg.model.nheads, cfg.model.dim_feedforward) == (256, 8, 256)
    assert cfg.model.backbone == 'efficientnet_b0' and cfg.model.feature_pool == 1
    assert (cfg.seed.torch, cfg.seed.numpy) == (0, 2)
    assert (cfg.augmentation.resize, cfg.augmentation.crop) == (256, 224)
    assert (cfg.augmentation.brightness, cfg.augmentation.contrast,
            cfg.augmentation.saturation, cfg.augmentation.hue) == (0.5, 0.5, 0.5, 0.2)
    assert cfg.schedule.gamma == 0.1


def test_7scenes_recipes():
    ours, base = load_config('7scenes_ours'), load_config('7scenes_baseline')
    for cfg in (ours, base):
        assert (cfg.schedule.epochs, cfg.schedule.step_size) == (30, 10)
        assert (cfg.loss.learnable, cfg.loss.s_x, cfg.loss.s_q) == (True, 0.0, -3.0)
        assert cfg.augmentation.enabled and not cfg.sampling.balanced_scenes
        assert cfg.model.num_scenes == 7
    assert (ours.model.position_encoding, ours.loss.lambda_aux) == ('sine', 0.1)
    assert (ours.model.enc_layers_rot, ours.model.dec_layers_rot) == (6, 6)
    assert (base.model.position_encoding, base.loss.lambda_aux) == ('learned', 0.0)
    assert (base.model.enc_layers_rot, base.model.dec_layers_rot) == (4, 4)


def test_cambridge_recipes():
    ours, base = load_config('cambridge_ours'), load_config('cambridge_baseline')
    assert ours.schedule.epochs == 500 and base.schedule.epochs == 600
    for cfg in (ours, base):
        assert cfg.schedule.step_size == 200
        assert not cfg.augmentation.enabled and cfg.sampling.balanced_scenes
        assert (cfg.loss.s_x, cfg.loss.s_q) == (-3.0, -6.5)
        assert (cfg.model.enc_layers_rot, cfg.model.dec_layers_rot) == (6, 6)
    assert (ours.model.position_encoding, ours.loss.lambda_aux) == ('sine', 0.1)
    assert (base.model.position_encoding, base.loss.lambda_aux) == ('learned', 0.0)
    finetune = load_config('cambridge_finetune')
    assert (finetune.schedule.epochs, finetune.schedule.step_size) == (60, 20)
    assert (finetune.loss.learnable, finetune.loss.s_x, finetune.loss.s_q) == (False, 1.0, 0.0)
    assert finetune.augmentation.enabled
    assert finetune.freeze.trainable == ['regressor_head_t'] and finetune.freeze.frozen_eval
    assert finetune.checkpoint.init_from is not None


def test_synth_configs():
    demo, base = load_config('synth_demo'), load_config('synth_baseline')
    for cfg in (demo, base):
        model = cfg.model
        assert (model.backbone, model.backbone_weights, model.freeze_backbone) == (
            'efficientnet_lite0', 'imagenet', True)
        assert (model.feature_pool, model.hidden_dim, model.nheads, model.dim_feedforward) == (
            2, 64, 4, 128)
        assert (model.enc_layers_t, model.dec_layers_t, model.enc_layers_rot,
                model.dec_layers_rot) == (2, 2, 2, 2)
        # Augmented views in the cache: the frozen-backbone recipe must see changes of light.
        assert cfg.augmentation.enabled and cfg.feature_cache.mode == 'on'
        assert cfg.feature_cache.augmented_views == 4
    assert (demo.model.position_encoding, demo.loss.lambda_aux) == ('sine', 0.1)
    assert (base.model.position_encoding, base.loss.lambda_aux) == ('learned', 0.0)
    assert demo.schedule == base.schedule and demo.optim == base.optim


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / 'bad.yaml'
    path.write_text(text)
    return path


def _base_text() -> str:
    return bundled_config('tiny_test').read_text()


def test_unknown_key_names_file_line_and_key(tmp_path):
    text = _base_text().replace('  batch_size: 4\n', '  batch_size: 4\n  momentum: 0.9\n')
    path = _write(tmp_path, text)
    line = text.splitlines().index('  momentum: 0.9') + 1
    with pytest.raises(ConfigError, match=rf'^{path}:{line}: optim\.momentum: unknown key'):
        load_config(path)


def test_invalid_value_names_file_line_and_key(tmp_path):
    text = _base_text().replace('  lr: 1.0e-3', '  lr: -0.5')
    path = _write(tmp_path, text)
    line = text.splitlines().index('  lr: -0.5') + 1
    with pytest.raises(ConfigError, match=rf'^{path}:{line}: optim\.lr: must be > 0'):
        load_config(path)


@pytest.mark.parametrize('old, new, key, message', [
    ('  epochs: 2', '  epochs: two', 'schedule.epochs', 'must be an integer'),
    ('  dropout: 0.1', '  dropout: 1.5', 'model.dropout', 'dropout must be in'),
    ('  format: cambridge', '  format: coco', 'data.format', 'must be one of'),
    ('  enabled: true', '  enabled: 1', 'augmentation.enabled', 'must be true or false'),
    ('  crop: 64', '  crop: 100', 'augmentation.crop', 'must lie in'),
])
def test_bad_values_point_at_their_key(tmp_path, old, new, key, message):
    text = _base_text().replace(old, new, 1)
    path = _write(tmp_path, text)
    line = text.splitlines().index(new) + 1
    with pytest.raises(ConfigError, match=rf'^{path}:{line}: {key}: .*{message}'):
        load_config(path)


def test_missing_model_and_scene_count(tmp_path):
    with pytest.raises(ConfigError, match=r'model: required key is missing'):
        load_config(_write(tmp_path, 'optim:\n  lr: 1.0e-3\n'))
    text = _base_text().replace('  num_scenes: 3\n', '')
    with pytest.raises(ConfigError, match="num_scenes"):
        load_config(_write(tmp_path, text))


def test_invalid_yaml_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match=r'bad\.yaml: invalid YAML'):
        load_config(_write(tmp_path, 'model: [unclosed\n'))
    with pytest.raises(ConfigError, match='must be a mapping of sections'):
        load_config(_write(tmp_path, '- a\n- b\n'))
    with pytest.raises(ConfigError, match='does not exist'):
        load_config(tmp_path / 'nope.yaml')


def test_overrides_apply_and_name_themselves_in_errors():
    cfg = load_config('tiny_test', ['optim.lr=1e-2', 'data.scenes=[a, b]',
                                    'checkpoint.init_from=runs/x', 'model.hidden_dim=64'])
    assert cfg.optim.lr == pytest.approx(1e-2)  # PyYAML reads 1e-2 as a string
    assert cfg.data.scenes == ['a', 'b']
    assert cfg.checkpoint.init_from == 'runs/x'
    assert cfg.model.hidden_dim == 64
    with pytest.raises(ConfigError, match=r'^--set optim\.batch_size: optim\.batch_size: must '
                                          r'be >= 1'):
        load_config('tiny_test', ['optim.batch_size=0'])
    with pytest.raises(ConfigError, match=r'^--set optim\.nope: optim\.nope: unknown key'):
        load_config('tiny_test', ['optim.nope=1'])
    with pytest.raises(ConfigError, match='expected key.sub=value'):
        load_config('tiny_test', ['optim.lr'])
    # YAML would read a bare on as true: an override of a string field keeps the text.
    assert load_config('tiny_test', ['feature_cache.mode=on']).feature_cache.mode == 'on'


def test_yaml_boolean_for_a_string_field_says_to_quote(tmp_path):
    path = _write(tmp_path, _base_text() + 'feature_cache:\n  mode: on\n')
    with pytest.raises(ConfigError, match=r'feature_cache\.mode: must be a string, got True '
                                          r'\(YAML reads unquoted on/off'):
        load_config(path)


# ---------------------------------------------------------------------------------------------
# The data section: every format reads the same rendered world into the same samples.
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope='module')
def world(tmp_path_factory) -> Path:
    """Render 3 scenes x (4 train, 2 test) frames in every format the renderer writes."""
    out = tmp_path_factory.mktemp('world')
    generate(out, formats=('cambridge', '7scenes', 'bag'), num_scenes=3, train_frames=4,
             test_frames=2, size=(48, 36))
    return out


def _poses(samples_by_scene):
    return {scene: np.array([np.concatenate([s.position, s.orientation]) for s in samples])
            for scene, samples in samples_by_scene.items()}


def test_every_data_format_reads_the_same_poses(world):
    held = DataConfig(format='cambridge', calibration_split='calibration')
    cambridge = read_split(held, 'train', world / 'cambridge')
    held_out = read_split(held, 'calibration', world / 'cambridge')
    assert sorted(cambridge) == sorted(held_out) == ['atrium', 'corridor', 'lab']
    # Two training sequences of two frames per scene: the second is the calibration split.
    assert all(len(samples) == 2 for samples in cambridge.values())
    assert {s.sequence for scene in cambridge.values() for s in scene} == {'seq1'}
    assert {s.sequence for scene in held_out.values() for s in scene} == {'seq2'}
    seven = read_split(dataclasses.replace(held, format='7scenes'), 'train', world / '7scenes')
    for scene, poses in _poses(cambridge).items():
        np.testing.assert_allclose(_poses(seven)[scene], poses, atol=1e-6)
    # A label CSV of the Cambridge rows (written as MS-Transformer does: w-first, the
    # Cambridge world-to-camera convention, recognised by rotation='world_to_camera').
    rows = ['scene,split,seq,img_path,t1,t2,t3,q1,q2,q3,q4']
    for scene, samples in cambridge.items():
        for sample in samples + held_out[scene]:
            w_first = Rotation.from_quat(sample.orientation).inv().as_quat()[[3, 0, 1, 2]]
            path = Path(sample.image_path).relative_to(world / 'cambridge').as_posix()
            rows.append(','.join([scene, 'train', sample.sequence, path]
                                 + [f'{v:.9f}' for v in [*sample.position, *w_first]]))
    (world / 'cambridge' / 'labels_train.csv').write_text('\n'.join(rows) + '\n')
    labels = DataConfig(format='label_csv', label_files={'train': 'labels_train.csv'},
                        rotation='world_to_camera', scenes=['lab', 'atrium'],
                        calibration_split='calibration')
    from_csv = read_split(labels, 'train', world / 'cambridge')
    assert sorted(from_csv) == ['atrium', 'lab']
    for scene in from_csv:
        np.testing.assert_allclose(_poses(from_csv)[scene], _poses(cambridge)[scene],
                                   atol=1e-6)
    bag = DataConfig(format='rosbag', bags={'test': ['bag']}, image_topic='/camera/image_raw',
                     pose_topic='/ground_truth/camera_pose', scene_topic='/ground_truth/scene')
    from_bag = read_split(bag, 'val', world)  # 'val' is data.val_split = test
    test = read_split(DataConfig(format='cambridge'), 'test', world / 'cambridge')
    assert sorted(from_bag) == sorted(test)
    for scene in test:
        np.testing.assert_allclose(_poses(from_bag)[scene], _poses(test)[scene], atol=1e-5)


def test_data_errors_name_what_is_missing(world, tmp_path):
    with pytest.raises(DatasetError, match='no dataset root'):
        read_split(DataConfig(), 'train')
    with pytest.raises(DatasetError, match=f'{tmp_path}: no scene folder holds '
                                           'dataset_train.txt'):
        read_split(DataConfig(format='cambridge'), 'train', tmp_path)
    with pytest.raises(DatasetError, match="scene 'hall' named in data.scenes"):
        read_split(DataConfig(format='cambridge', scenes=['lab', 'hall']), 'train',
                   world / 'cambridge')
    with pytest.raises(DatasetError, match="no entry for split 'test'"):
        read_split(DataConfig(format='label_csv', label_files={'train': 'x.csv'}), 'test',
                   world)


def test_data_fingerprint_ignores_order_and_root_but_not_poses(world, tmp_path):
    samples = read_split(DataConfig(format='cambridge'), 'train', world / 'cambridge')
    flat = [s for scene in sorted(samples) for s in samples[scene]]
    fingerprint = data_fingerprint(flat, world / 'cambridge')
    assert data_fingerprint(flat[::-1], world / 'cambridge') == fingerprint
    moved = tmp_path / 'moved'
    shutil.copytree(world / 'cambridge', moved)
    moved_samples = read_split(DataConfig(format='cambridge'), 'train', moved)
    assert data_fingerprint([s for scene in sorted(moved_samples)
                             for s in moved_samples[scene]], moved) == fingerprint
    shifted = [dataclasses.replace(flat[0], position=flat[0].position + 1e-3)] + flat[1:]
    assert data_fingerprint(shifted, world / 'cambridge') != fingerprint


def _sample(scene: str, sequence: str, index: int) -> PoseSample:
    return PoseSample(scene, sequence, np.array([index, 0.0, 0.0]), np.array([0, 0, 0, 1.0]))


def test_calibration_split_holds_out_whole_sequences_in_natural_order():
    samples = [_sample('a', f'seq{n}', i) for n in (1, 2, 10) for i in range(3)]
    train, calibration = split_calibration(samples, 1, 'a')
    assert {s.sequence for s in calibration} == {'seq10'}  # seq10 comes after seq2
    assert {s.sequence for s in train} == {'seq1', 'seq2'} and len(train) == 6
    train, calibration = split_calibration(samples, 2, 'a')
    assert {s.sequence for s in calibration} == {'seq2', 'seq10'}


def test_a_single_sequence_scene_gives_its_last_frames_and_says_so(caplog):
    samples = [_sample('heads', 'seq-02', i) for i in range(10)]
    with caplog.at_level('WARNING'):
        train, calibration = split_calibration(samples, 1, 'heads')
    assert [s.position[0] for s in calibration] == [8.0, 9.0]  # contiguous tail, 20 %
    assert len(train) == 8 and 'heads' in caplog.text
    with pytest.raises(DatasetError, match="scene 'x'"):
        split_calibration([_sample('x', 's', 0)], 1, 'x')


def test_calibration_split_must_not_be_the_test_or_training_split():
    with pytest.raises(ValueError, match='must differ from test_split'):
        DataConfig(calibration_split='test')
    with pytest.raises(ValueError, match='must differ from train_split'):
        DataConfig(calibration_split='train')
    with pytest.raises(ConfigError, match=r'data\.calibration_sequences: must be >= 1 when'):
        load_config('tiny_test', ['data.calibration_sequences=0'])
    with pytest.raises(ConfigError, match=r'data\.calibration_split: must differ from test'):
        load_config('tiny_test', ['data.calibration_split=test'])
    assert DataConfig(calibration_split='val', calibration_sequences=0).calibration_split == 'val'
    with pytest.raises(ConfigError, match=r'data\.calibration_folds: must be >= 2'):
        load_config('tiny_test', ['data.calibration_split=crossfit', 'data.calibration_folds=1'])
    # The shipped recipes train the deployed model on every training sequence and calibrate
    # on out-of-fold errors; the tests' config keeps the one-run held-out split.
    for name in ('synth_demo', 'synth_baseline', *PAPER_CONFIGS):
        data = load_config(name).data
        assert (data.calibration_split, data.calibration_folds) == ('crossfit', 2), name
    assert load_config('tiny_test').data.calibration_split == 'calibration'
    assert DataConfig().calibration_split == 'crossfit'


def test_crossfit_reads_every_training_sequence_and_refuses_to_read_its_name(world):
    crossfit = DataConfig(format='cambridge')
    train = read_split(crossfit, 'train', world / 'cambridge')
    assert {s.sequence for scene in train.values() for s in scene} == {'seq1', 'seq2'}
    assert all(len(samples) == 4 for samples in train.values())
    with pytest.raises(DatasetError, match="'crossfit' is not a split of images"):
        read_split(crossfit, 'crossfit', world / 'cambridge')


def test_backbone_weights_null_is_refused_none_is_random(tmp_path):
    text = _base_text()
    line = next(number for number, row in enumerate(text.splitlines(), start=1)
                if row.startswith('  backbone_weights: none'))
    path = _write(tmp_path, text.replace('  backbone_weights: none', '  backbone_weights: null'))
    with pytest.raises(ConfigError, match=rf'^{path}:{line}: model\.backbone_weights: null'):
        load_config(path)
    with pytest.raises(ConfigError, match=r'--set model\.backbone_weights'):
        load_config('tiny_test', ['model.backbone_weights=null'])
    assert load_config('tiny_test').model.backbone_weights == 'none'


def test_recipes_train_in_float32_unless_asked():
    for path in CONFIG_DIR.glob('*.yaml'):
        assert load_config(path).amp is False, path.name
    assert TrainConfig.from_dict({'model': {'num_scenes': 1}}).amp is False
    assert load_config('7scenes_ours', ['amp=true']).amp is True


def test_augmented_views_need_the_augmentation():
    cfg = load_config('synth_demo', ['feature_cache.augmented_views=8'])
    assert cfg.feature_cache.augmented_views == 8
    with pytest.raises(ConfigError, match='feature_cache.augmented_views: 4 augmented views '
                                          'need augmentation.enabled'):
        load_config('synth_demo', ['augmentation.enabled=false'])
