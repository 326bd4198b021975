"""Dataset readers on small hand-written files of each real format, valid and malformed."""
from pathlib import Path
import shutil

import cv2
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from mspr_training.data import (DatasetError, load_rgb, PoseSample, read_7scenes, read_cambridge,
                                read_label_csv)

CAMBRIDGE_HEADER = 'Visual Landmark Dataset V1\nImageFile, Camera Position [X Y Z W P Q R]\n\n'
# World-to-camera rotation of a camera whose optical axis looks along world +X with image "down"
# along world -Z: R_cam_scene rows are the optical axes in world coordinates,
# x_opt = -Y, y_opt = -Z, z_opt = +X. Its w-first quaternion, worked out by hand from the
# matrix (trace 0 -> w = 0.5; x = (R21 - R12) / 4w = 0.5; y = (R02 - R20) / 4w = -0.5;
# z = (R10 - R01) / 4w = 0.5):
LOOK_ALONG_X_WPQR = (0.5, 0.5, -0.5, 0.5)


def write_image(path, value=(10, 20, 30)):
    """Write a 4 x 6 PNG whose every pixel is the RGB ``value``; return the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rgb = np.zeros((4, 6, 3), np.uint8) + np.asarray(value, np.uint8)
    assert cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    return path


def cambridge_scene(root, rows, header=CAMBRIDGE_HEADER, images=True, split='train'):
    """Write ``root/Scene/dataset_<split>.txt`` from row strings; create the listed images."""
    scene = root / 'Scene'
    scene.mkdir(parents=True, exist_ok=True)
    (scene / f'dataset_{split}.txt').write_text(header + ''.join(r + '\n' for r in rows))
    if images:
        for row in rows:
            fields = row.split()
            if fields:
                write_image(scene / fields[0])
    return scene


def rotation_of(sample):
    """Return R_scene_cam (3, 3) of a sample."""
    return Rotation.from_quat(sample.orientation).as_matrix()


# ---------------------------------------------------------------- Cambridge Landmarks


def test_cambridge_reads_centre_and_inverts_the_world_to_camera_quaternion(tmp_path):
    w, p, q, r = LOOK_ALONG_X_WPQR
    scene = cambridge_scene(tmp_path, [f'seq1/frame00001.png 10.0 5.0 1.5 {w} {p} {q} {r}',
                                       'seq2/frame00007.png -1 -2 -3 1 0 0 0'])
    samples = read_cambridge(scene, 'train')
    assert [s.sequence for s in samples] == ['seq1', 'seq2']
    assert all(s.scene == 'Scene' for s in samples)
    first = samples[0]
    np.testing.assert_allclose(first.position, [10.0, 5.0, 1.5])
    rotation = rotation_of(first)
    # Optical z (forward) looks along world +X; optical y (down) is world -Z.
    np.testing.assert_allclose(rotation @ [0, 0, 1], [1, 0, 0], atol=1e-12)
    np.testing.assert_allclose(rotation @ [0, 1, 0], [0, 0, -1], atol=1e-12)
    np.testing.assert_allclose(rotation @ [1, 0, 0], [0, -1, 0], atol=1e-12)
    assert first.orientation[3] >= 0 and np.isclose(np.linalg.norm(first.orientation), 1)
    assert first.image_path == scene / 'seq1/frame00001.png'
    np.testing.assert_allclose(samples[1].orientation, [0, 0, 0, 1])


def test_cambridge_canonicalises_negative_w(tmp_path):
    scene = cambridge_scene(tmp_path, ['seq1/frame00001.png 0 0 0 -0.5 -0.5 0.5 -0.5'])
    sample = read_cambridge(scene)[0]
    assert sample.orientation[3] > 0
    np.testing.assert_allclose(rotation_of(sample) @ [0, 0, 1], [1, 0, 0], atol=1e-12)


@pytest.mark.parametrize('rows, line, words', [
    (['seq1/frame00001.png 1 2 3 1 0 0'], 4, 'expected 8 fields'),
    (['seq1/frame00001.png 1 2 3 1 0 0 0', 'seq1/frame00002.png 1 2 x 1 0 0 0'], 5,
     "'x' is not a number"),
    (['seq1/frame00001.png 1 2 3 2 0 0 0'], 4, 'not a unit quaternion'),
    (['seq1/frame00001.png 1 2 3 1 0 0 0 9'], 4, 'expected 8 fields'),
])
def test_cambridge_malformed_rows_name_file_and_line(tmp_path, rows, line, words):
    scene = cambridge_scene(tmp_path, rows)
    with pytest.raises(DatasetError, match=words) as error:
        read_cambridge(scene)
    assert f'dataset_train.txt:{line}:' in str(error.value)


def test_cambridge_missing_header_names_the_first_line(tmp_path):
    scene = cambridge_scene(tmp_path, ['seq1/frame00001.png 1 2 3 1 0 0 0'] * 4, header='')
    with pytest.raises(DatasetError, match=r'dataset_train.txt:1: missing the 3-line header'):
        read_cambridge(scene)


def test_cambridge_missing_image_names_listing_line_and_image(tmp_path):
    scene = cambridge_scene(tmp_path, ['seq1/frame00001.png 1 2 3 1 0 0 0',
                                       'seq1/frame00002.png 1 2 3 1 0 0 0'])
    (scene / 'seq1/frame00002.png').unlink()
    with pytest.raises(DatasetError, match=r'dataset_train.txt:5: image .*frame00002.png'):
        read_cambridge(scene)
    assert len(read_cambridge(scene, check_images=False)) == 2


def test_cambridge_missing_split_file_and_bad_split(tmp_path):
    scene = cambridge_scene(tmp_path, ['seq1/frame00001.png 1 2 3 1 0 0 0'])
    with pytest.raises(DatasetError, match=r'dataset_test.txt: split file does not exist'):
        read_cambridge(scene, 'test')
    # A split of one's own (walks recorded where the robot works) is listed the same way.
    shutil.copy(scene / 'dataset_train.txt', scene / 'dataset_site_2.txt')
    assert [s.image_path for s in read_cambridge(scene, 'site_2')] == [
        s.image_path for s in read_cambridge(scene)]
    with pytest.raises(DatasetError, match=r'dataset_val.txt: split file does not exist'):
        read_cambridge(scene, 'val')
    for name in ('../train', '', 'a b', None):   # never a path out of the scene folder
        with pytest.raises(ValueError, match='split must be a name'):
            read_cambridge(scene, name)


def test_cambridge_header_only_is_an_error(tmp_path):
    scene = cambridge_scene(tmp_path, [])
    with pytest.raises(DatasetError, match='no image rows'):
        read_cambridge(scene)


# ---------------------------------------------------------------- 7-Scenes


def pose_text(matrix):
    """Return a 7-Scenes style pose file body for a 4 x 4 matrix."""
    return ''.join('\t'.join(f'{v:.7e}' for v in row) + '\t\n' for row in matrix)


def seven_scenes(root, sequences=(1, 2), frames=2, train=(1,), test=(2,)):
    """Write a small 7-Scenes scene; frame k of sequence n is at x = 10 n + k, yawed by k."""
    scene = root / 'chess'
    for number in sequences:
        for k in range(frames):
            stem = scene / f'seq-{number:02d}' / f'frame-{k:06d}'
            write_image(stem.with_name(stem.name + '.color.png'))
            matrix = np.eye(4)
            matrix[:3, :3] = Rotation.from_euler('z', 0.1 * k).as_matrix()
            matrix[:3, 3] = (10 * number + k, 1.0, 2.0)
            stem.with_name(stem.name + '.pose.txt').write_text(pose_text(matrix))
    (scene / 'TrainSplit.txt').write_text(''.join(f'sequence{n}\n' for n in train))
    (scene / 'TestSplit.txt').write_text(''.join(f'Sequence{n}\n'.lower() for n in test))
    return scene


def test_7scenes_reads_camera_to_world_matrices_per_split(tmp_path):
    scene = seven_scenes(tmp_path, sequences=(1, 2, 3), train=(1, 3), test=(2,))
    train = read_7scenes(scene, 'train')
    assert [(s.sequence, s.image_path.name) for s in train] == [
        ('seq-01', 'frame-000000.color.png'), ('seq-01', 'frame-000001.color.png'),
        ('seq-03', 'frame-000000.color.png'), ('seq-03', 'frame-000001.color.png')]
    np.testing.assert_allclose(train[1].position, [11.0, 1.0, 2.0])
    np.testing.assert_allclose(rotation_of(train[1]),
                               Rotation.from_euler('z', 0.1).as_matrix(), atol=1e-6)
    assert all(s.scene == 'chess' and s.orientation[3] >= 0 for s in train)
    assert [s.sequence for s in read_7scenes(scene, 'test')] == ['seq-02', 'seq-02']


def test_7scenes_split_of_ones_own_is_read_like_the_others(tmp_path):
    scene = seven_scenes(tmp_path)
    (scene / 'SiteSplit.txt').write_text('sequence2\n')
    assert [s.sequence for s in read_7scenes(scene, 'site')] == ['seq-02', 'seq-02']
    with pytest.raises(ValueError, match='split must be a name'):
        read_7scenes(scene, '../Test')


def test_7scenes_missing_split_file(tmp_path):
    scene = seven_scenes(tmp_path)
    (scene / 'TestSplit.txt').unlink()
    with pytest.raises(DatasetError, match=r'TestSplit.txt: split file does not exist'):
        read_7scenes(scene, 'test')


def test_7scenes_unknown_sequence_names_split_line(tmp_path):
    scene = seven_scenes(tmp_path)
    (scene / 'TrainSplit.txt').write_text('sequence1\nsequence9\n')
    with pytest.raises(DatasetError, match=r"TrainSplit.txt:2: unknown sequence 'sequence9'"):
        read_7scenes(scene, 'train')


def test_7scenes_malformed_split_line(tmp_path):
    scene = seven_scenes(tmp_path)
    (scene / 'TrainSplit.txt').write_text('sequence1\nseq-02\n')
    with pytest.raises(DatasetError, match=r'TrainSplit.txt:2: expected a line like'):
        read_7scenes(scene, 'train')


def edit_token(text, line, column, value):
    """Return pose file text with the token at 1-based ``line`` and 0-based ``column`` set."""
    rows = [row.split() for row in text.splitlines()]
    rows[line - 1][column] = value
    return ''.join('\t'.join(row) + '\n' for row in rows)


@pytest.mark.parametrize('edit, where, words', [
    (lambda m: m.replace('\t\n', '\t7\n', 1), ':1:', 'expected 4 numbers'),
    (lambda m: edit_token(m, 3, 2, 'one'), ':3:', "'one' is not a number"),
    (lambda m: '\n'.join(m.splitlines()[:3]), ':', 'expected 4 rows'),
    (lambda m: edit_token(m, 4, 3, '2.0'), ':4:', 'last row'),
    (lambda m: edit_token(m, 1, 0, '1.3'), ':', 'not a rotation'),
])
def test_7scenes_bad_pose_matrix_names_file_and_line(tmp_path, edit, where, words):
    scene = seven_scenes(tmp_path)
    pose = scene / 'seq-01' / 'frame-000001.pose.txt'
    pose.write_text(edit(pose.read_text()))
    with pytest.raises(DatasetError, match=words) as error:
        read_7scenes(scene, 'train')
    assert f'frame-000001.pose.txt{where}' in str(error.value)


def test_7scenes_reflection_is_not_a_rotation(tmp_path):
    scene = seven_scenes(tmp_path)
    mirror = np.diag([1.0, 1.0, -1.0, 1.0])
    (scene / 'seq-01' / 'frame-000000.pose.txt').write_text(pose_text(mirror))
    with pytest.raises(DatasetError, match='frame-000000.pose.txt: rotation block'):
        read_7scenes(scene, 'train')


def test_7scenes_pose_without_image_and_image_without_pose(tmp_path):
    scene = seven_scenes(tmp_path)
    (scene / 'seq-01' / 'frame-000001.color.png').unlink()
    with pytest.raises(DatasetError, match=r'frame-000001.pose.txt: no image'):
        read_7scenes(scene, 'train')
    write_image(scene / 'seq-01' / 'frame-000001.color.png')
    write_image(scene / 'seq-01' / 'frame-000005.color.png')
    with pytest.raises(DatasetError, match=r'frame-000005.color.png: no pose file'):
        read_7scenes(scene, 'train')


# ---------------------------------------------------------------- MS-Transformer label CSV

CSV_HEADER = 'scene,split,seq,img_path,t1,t2,t3,q1,q2,q3,q4\n'


def label_csv(root, rows, header=CSV_HEADER):
    """Write ``root/labels.csv`` and the images its rows name; return the path."""
    for row in rows:
        fields = row.split(',')
        if len(fields) > 3:
            write_image(root / fields[3])
    path = root / 'labels.csv'
    path.write_text(header + ''.join(r + '\n' for r in rows))
    return path


def test_label_csv_auto_treats_cambridge_rows_as_world_to_camera(tmp_path):
    w, p, q, r = LOOK_ALONG_X_WPQR
    csv_path = label_csv(tmp_path, [
        f'KingsCollege,train,seq1,KingsCollege/seq1/frame00001.png,1,2,3,{w},{p},{q},{r}',
        f'chess,train,seq-01,chess/seq-01/frame-000000.color.png,4,5,6,{w},{p},{q},{r}'])
    kings, chess = read_label_csv(csv_path, tmp_path)
    assert (kings.scene, kings.sequence, chess.scene) == ('KingsCollege', 'seq1', 'chess')
    assert kings.image_path == tmp_path / 'KingsCollege/seq1/frame00001.png'
    np.testing.assert_allclose(kings.position, [1, 2, 3])
    # Cambridge row: inverted, the camera looks along +X.
    np.testing.assert_allclose(rotation_of(kings) @ [0, 0, 1], [1, 0, 0], atol=1e-12)
    # 7-Scenes row: the same numbers read as camera-to-world look along -Y instead.
    np.testing.assert_allclose(rotation_of(chess) @ [0, 0, 1], [0, -1, 0], atol=1e-12)
    forced = read_label_csv(csv_path, tmp_path, rotation='world_to_camera')
    np.testing.assert_allclose(rotation_of(forced[1]) @ [0, 0, 1], [1, 0, 0], atol=1e-12)
    forced = read_label_csv(csv_path, tmp_path, rotation='camera_to_world')
    np.testing.assert_allclose(rotation_of(forced[0]) @ [0, 0, 1], [0, -1, 0], atol=1e-12)


def test_label_csv_header_columns_may_come_in_any_order(tmp_path):
    header = 't1,t2,t3,q1,q2,q3,q4,img_path,seq,split,scene\n'
    write_image(tmp_path / 'a.png')
    path = tmp_path / 'labels.csv'
    path.write_text(header + '1,2,3,1,0,0,0,a.png,s,test,fire\n')
    (sample,) = read_label_csv(path, tmp_path)
    assert (sample.scene, sample.sequence) == ('fire', 's')
    np.testing.assert_allclose(sample.position, [1, 2, 3])


@pytest.mark.parametrize('rows, header, line, words', [
    (['chess,train,seq-01,a.png,1,2,3,1,0,0,0'], 'scene,split,seq,img_path,t1,t2,t3\n', 1,
     'header lacks column'),
    (['chess,train,seq-01,a.png,1,2,3,1,0,0,0', 'chess,train,seq-01,a.png,1,2,3,1,0,0'],
     CSV_HEADER, 3, 'expected 11 columns, got 10'),
    (['chess,train,seq-01,a.png,1,2,3,1,0,0,abc'], CSV_HEADER, 2, "'abc' is not a number"),
    (['chess,train,seq-01,a.png,1,2,3,0,0,0,0'], CSV_HEADER, 2, 'not a unit quaternion'),
])
def test_label_csv_malformed_input_names_file_and_line(tmp_path, rows, header, line, words):
    path = label_csv(tmp_path, rows, header)
    with pytest.raises(DatasetError, match=words) as error:
        read_label_csv(path, tmp_path)
    assert f'labels.csv:{line}:' in str(error.value)


def test_label_csv_missing_image_file_and_empty_file(tmp_path):
    path = tmp_path / 'labels.csv'
    path.write_text(CSV_HEADER + 'chess,train,seq-01,missing.png,1,2,3,1,0,0,0\n')
    with pytest.raises(DatasetError, match=r'labels.csv:2: image .*missing.png does not exist'):
        read_label_csv(path, tmp_path)
    path.write_text('')
    with pytest.raises(DatasetError, match='labels.csv: empty file'):
        read_label_csv(path, tmp_path)
    with pytest.raises(DatasetError, match='nothere.csv: label file does not exist'):
        read_label_csv(tmp_path / 'nothere.csv', tmp_path)


# ---------------------------------------------------------------- images


def test_load_rgb_decodes_rgb_order_and_names_bad_files(tmp_path):
    path = write_image(tmp_path / 'a.png', value=(200, 100, 50))
    sample = PoseSample('s', 'q', np.zeros(3), np.array([0, 0, 0, 1.0]), image_path=path)
    rgb = load_rgb(sample)
    assert rgb.shape == (4, 6, 3) and rgb.dtype == np.uint8
    assert tuple(rgb[0, 0]) == (200, 100, 50)
    broken = tmp_path / 'broken.png'
    broken.write_bytes(b'not a png at all')
    with pytest.raises(DatasetError, match='broken.png: cannot decode image'):
        load_rgb(PoseSample('s', 'q', np.zeros(3), np.array([0, 0, 0, 1.0]), image_path=broken))
    with pytest.raises(DatasetError, match='gone.png: image file does not exist'):
        load_rgb(PoseSample('s', 'q', np.zeros(3), np.array([0, 0, 0, 1.0]),
                            image_path=Path(tmp_path / 'gone.png')))
    held = np.full((2, 2, 3), 7, np.uint8)
    assert load_rgb(PoseSample('s', 'q', np.zeros(3), np.array([0, 0, 0, 1.0]),
                               image=held)) is held
