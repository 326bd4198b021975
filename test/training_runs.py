"""Helpers of the tests that run ``mspr-train`` in a subprocess and kill it mid-run."""
from pathlib import Path
import subprocess

import pytest

from mspr_training.checkpoint import list_checkpoints
from mspr_training.ros_client import wait_until


def wait_for_mid_epoch_checkpoint(process: subprocess.Popen, folder: Path, log: Path,
                                  timeout: float) -> None:
    """Wait until ``process`` has written a mid-epoch checkpoint into ``folder``.

    Fails (showing the end of ``log``) when the process exits first; kills it and fails when
    ``timeout`` seconds pass first.
    """
    def written() -> bool:
        if process.poll() is not None:
            pytest.fail(f'training exited ({process.returncode}) before a mid-epoch checkpoint '
                        f'in {folder}:\n{log.read_text()[-3000:]}')
        return any(path.name.endswith('_iter.pt') for path in list_checkpoints(folder))

    try:
        wait_until(written, timeout, f'a mid-epoch checkpoint in {folder}')
    except AssertionError:
        process.kill()
        raise
