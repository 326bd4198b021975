"""Plain JSON data from the values reports hold: dataclasses, numpy, enums, paths, NaN."""
from dataclasses import asdict, is_dataclass
import enum
import math
from pathlib import PurePath
from typing import Any

import numpy as np


def jsonable(value: Any) -> Any:
    """Return ``value`` as plain JSON data; NaN and infinities become None (JSON has neither).

    Dataclass instances become dicts, numpy arrays lists, numpy scalars Python numbers, enums
    their values and paths strings; dict keys become strings.
    """
    if is_dataclass(value) and not isinstance(value, type):
        return jsonable(asdict(value))
    if isinstance(value, dict):
        return {str(key): jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(item) for item in value]
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if isinstance(value, enum.Enum):
        return jsonable(value.value)
    if isinstance(value, np.generic):
        return jsonable(value.item())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, PurePath):
        return str(value)
    return value
