"""Model configuration of the multi-scene pose transformer.

The defaults are the paper configuration (EfficientNet-B0, d=256, 8 heads, 6/6 layers per branch,
fixed sine positional encoding); see docs/paper.md sections 1 and 3.
"""
from dataclasses import asdict, dataclass, fields
from typing import Any, Mapping

BACKBONES = ('efficientnet_b0', 'efficientnet_lite0')
POSITION_ENCODINGS = ('sine', 'learned')


@dataclass
class ModelConfig:
    """Hyper-parameters of :class:`mspr_ros.model.ms_transformer.MSTransformer`.

    Attributes:
        num_scenes: number of scenes S (one learned query per scene and branch).
        backbone: 'efficientnet_b0' (torchvision) or 'efficientnet_lite0' (timm).
        backbone_weights: 'imagenet' (offline ImageNet weights), a path to a local state-dict
            file (.safetensors, or .pth/.pt loaded with weights_only=True), or None (random init).
        freeze_backbone: backbone without gradients and always in eval mode.
        hidden_dim: transformer width d.
        nheads: attention heads per multi-head attention.
        dim_feedforward: hidden width of the transformer feed-forward blocks.
        dropout: dropout of attention weights, residual branches and feed-forward blocks.
        enc_layers_t, dec_layers_t: encoder/decoder depth of the position branch.
        enc_layers_rot, dec_layers_rot: encoder/decoder depth of the orientation branch.
        position_encoding: 'sine' (fixed 2-D sinusoidal, NeurIPS 2024) or 'learned'
            (MS-Transformer baseline).
        feature_pool: average-pool factor applied to both backbone maps (1 = paper).
        head_hidden: hidden width of the two pose regression MLPs.
    """

    num_scenes: int
    backbone: str = 'efficientnet_b0'
    backbone_weights: str | None = 'imagenet'
    freeze_backbone: bool = False
    hidden_dim: int = 256
    nheads: int = 8
    dim_feedforward: int = 256
    dropout: float = 0.1
    enc_layers_t: int = 6
    dec_layers_t: int = 6
    enc_layers_rot: int = 6
    dec_layers_rot: int = 6
    position_encoding: str = 'sine'
    feature_pool: int = 1
    head_hidden: int = 1024

    def __post_init__(self) -> None:
        """Validate every field; raise ValueError naming the field and the problem."""
        positive_ints = ('num_scenes', 'hidden_dim', 'nheads', 'dim_feedforward',
                         'enc_layers_t', 'dec_layers_t', 'enc_layers_rot', 'dec_layers_rot',
                         'feature_pool', 'head_hidden')
        for name in positive_ints:
            value = getattr(self, name)
            # bool is an int subclass; True as a layer count is a bug, not a config.
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f'ModelConfig.{name} must be a positive integer, got {value!r}')
        if self.backbone not in BACKBONES:
            raise ValueError(f'ModelConfig.backbone must be one of {BACKBONES}, '
                             f'got {self.backbone!r}')
        if self.backbone_weights is not None and (
                not isinstance(self.backbone_weights, str) or not self.backbone_weights):
            raise ValueError("ModelConfig.backbone_weights must be 'imagenet', a file path or "
                             f'None, got {self.backbone_weights!r}')
        if not isinstance(self.freeze_backbone, bool):
            raise ValueError('ModelConfig.freeze_backbone must be a bool, '
                             f'got {self.freeze_backbone!r}')
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, (int, float)) \
                or not 0.0 <= self.dropout < 1.0:
            raise ValueError(f'ModelConfig.dropout must be in [0, 1), got {self.dropout!r}')
        self.dropout = float(self.dropout)
        if self.position_encoding not in POSITION_ENCODINGS:
            raise ValueError(f'ModelConfig.position_encoding must be one of {POSITION_ENCODINGS}, '
                             f'got {self.position_encoding!r}')
        if self.hidden_dim % self.nheads:
            raise ValueError(f'ModelConfig.hidden_dim ({self.hidden_dim}) must be divisible by '
                             f'nheads ({self.nheads})')
        # Each axis gets hidden_dim/2 channels made of (sin, cos) pairs.
        if self.hidden_dim % 4:
            raise ValueError('ModelConfig.hidden_dim must be a multiple of 4 (two axes of '
                             f'sin/cos pairs), got {self.hidden_dim}')

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-serialisable dict of all fields."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> 'ModelConfig':
        """Build from a dict as written by :meth:`to_dict`.

        Raises:
            ValueError: on unknown keys, a missing ``num_scenes`` or an invalid value.
        """
        if not isinstance(data, Mapping):
            raise ValueError(f'ModelConfig must be a mapping, got {type(data).__name__}')
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f'unknown ModelConfig keys {unknown}; known keys: {sorted(known)}')
        if 'num_scenes' not in data:
            raise ValueError("ModelConfig requires the key 'num_scenes'")
        return cls(**data)
