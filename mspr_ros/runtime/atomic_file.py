"""Write a file so that readers and crashes see either the old file or the complete new one."""
import contextlib
import os
from pathlib import Path
from typing import BinaryIO, Iterator
import uuid


@contextlib.contextmanager
def atomic_write(path: Path) -> Iterator[BinaryIO]:
    """Yield a binary handle whose content replaces ``path`` when the block succeeds.

    The data goes to a hidden file beside ``path`` (same file system, so the final
    ``os.replace`` is atomic) and is fsynced first; a kill at any moment, or an exception in the
    block, leaves the previous ``path`` untouched and no temporary file behind (except after
    SIGKILL, which leaves a ``.<name>.*.tmp`` that nothing reads).
    """
    path = Path(path)
    # open(..., 'xb') (unlike mkstemp) gives the file the usual umask-based permissions.
    tmp_path = path.with_name(f'.{path.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp')
    try:
        with open(tmp_path, 'xb') as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise
