"""mspr_ros: multi-scene absolute pose regression (MS-Transformer) for ROS 2.

The core (model, weights bundle, localizer, geometry) is ROS-free. The heavy names below are
imported lazily so that light modules such as ``mspr_ros.geometry.transforms`` do not import torch.
"""
import importlib

_LAZY_EXPORTS = {
    'BundleError': 'mspr_ros.bundle',
    'LocalizationResult': 'mspr_ros.localizer',
    'Localizer': 'mspr_ros.localizer',
    'ModelConfig': 'mspr_ros.model.config',
    'build_model': 'mspr_ros.model.ms_transformer',
    'load_bundle': 'mspr_ros.bundle',
}

__all__ = sorted(_LAZY_EXPORTS)


def __getattr__(name: str):
    """Import the module that defines ``name`` on first access."""
    module_name = _LAZY_EXPORTS.get(name)
    if module_name is None:
        raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
    value = getattr(importlib.import_module(module_name), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    """List the lazy exports with the module's own names."""
    return sorted(set(globals()) | set(__all__))
