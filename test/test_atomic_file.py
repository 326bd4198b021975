"""atomic_write: the old file survives any failure; success replaces it whole."""
import pytest

from mspr_ros.runtime.atomic_file import atomic_write


def test_success_replaces_the_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / 'model.safetensors'
    target.write_bytes(b'old')
    with atomic_write(target) as handle:
        handle.write(b'new content')
    assert target.read_bytes() == b'new content'
    assert [p.name for p in tmp_path.iterdir()] == ['model.safetensors']


def test_a_failure_in_the_block_keeps_the_old_file(tmp_path):
    target = tmp_path / 'checkpoint.pt'
    target.write_bytes(b'old')
    with pytest.raises(RuntimeError, match='disk full'):
        with atomic_write(target) as handle:
            handle.write(b'half of the new')
            raise RuntimeError('disk full')
    assert target.read_bytes() == b'old'
    assert [p.name for p in tmp_path.iterdir()] == ['checkpoint.pt']


def test_readers_never_see_a_partial_file(tmp_path):
    target = tmp_path / 'bundle.safetensors'
    with atomic_write(target) as handle:
        handle.write(b'part one, ')
        assert not target.exists(), 'the target appears only once complete'
        handle.write(b'part two')
    assert target.read_bytes() == b'part one, part two'
