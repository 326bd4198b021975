"""Launch-argument helpers the package's launch files share (standard library only)."""
import os


def params_files(text, argument='params_file'):
    """Return the files of a comma-separated launch argument, in order (later override).

    A missing file stops the launch: launch_ros would skip it with a warning, and the node would
    run without the parameters its user wrote.
    """
    files = [part.strip() for part in text.split(',') if part.strip()]
    missing = [path for path in files if not os.path.isfile(path)]
    if missing:
        raise FileNotFoundError(f"{argument}: no such file: {', '.join(missing)}")
    return files
