"""The demo reuses what it made before only when the inputs, code included, are the same."""
import types

from mspr_training import demo


def _module(path):
    return types.SimpleNamespace(__file__=str(path))


def test_a_changed_exporter_makes_the_demo_export_again(tmp_path):
    """The bundle's key covers the exporter's source: a new calibration is not skipped."""
    exporter, calibration = tmp_path / 'export.py', tmp_path / 'calibration.py'
    exporter.write_text('SHRINKAGE = None\n')
    calibration.write_text('def fit(): ...\n')
    bundle, stamp = tmp_path / 'bundle.safetensors', tmp_path / '.demo-bundle'
    bundle.write_bytes(b'weights')
    key = demo._fingerprint('train-key', demo._source_digest(_module(exporter),
                                                             _module(calibration)))
    stamp.write_text(key + '\n')
    assert demo._fresh(bundle, stamp, key)

    calibration.write_text('def fit(): return shrink()\n')
    changed = demo._fingerprint('train-key', demo._source_digest(_module(exporter),
                                                                 _module(calibration)))
    assert changed != key
    assert not demo._fresh(bundle, stamp, changed)
    assert not demo._fresh(bundle, stamp, demo._fingerprint('other-run', changed))
