"""torchvision's classifier families, width-reduced: the same classes (so the same code and
ops as the full models), small enough to script, trace and shrink in a test.

``FAMILIES`` maps a family to a builder of a 10-class model taking (N, 3, S, S) at ``SIZE``
(a family not listed there takes 32); ``family_of`` names the family of every model in
``torchvision.models.list_models``, so a model added to torchvision fails the zoo tests
until it has a builder here.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from functools import partial

import torch
import torchvision.models as tv
from torch import nn
from torchvision.models import convnext, efficientnet, mobilenetv3, regnet, resnet, swin_transformer
from torchvision.models import vgg as tv_vgg

from worker.engine import scripting


def _vgg() -> nn.Module:
    model = tv.VGG(tv_vgg.make_layers([8, "M", 16, "M"], batch_norm=True), num_classes=10)
    model.features.append(nn.Conv2d(16, 512, 1, bias=False))  # the head expects 512 x 7 x 7
    model.classifier[0] = nn.Linear(512 * 7 * 7, 16)
    model.classifier[3] = nn.Linear(16, 16)
    model.classifier[6] = nn.Linear(16, 10)
    return model


def _efficientnet(arch: str, **widths: float) -> nn.Module:
    setting, last = efficientnet._efficientnet_conf(arch, **widths)
    return tv.EfficientNet(setting, 0.2, last_channel=last, num_classes=10)


def _mobilenet_v3() -> nn.Module:
    setting, last = mobilenetv3._mobilenet_v3_conf("mobilenet_v3_small", width_mult=0.25)
    return tv.MobileNetV3(setting, last, num_classes=10)


def _regnet(se_ratio: float | None) -> nn.Module:
    params = regnet.BlockParams.from_init_params(depth=3, w_0=16, w_a=8.0, w_m=2.0,
                                                 group_width=8, se_ratio=se_ratio)
    return tv.RegNet(params, num_classes=10)


def _swin(v2: bool) -> nn.Module:
    extra = ({"block": swin_transformer.SwinTransformerBlockV2,
              "downsample_layer": swin_transformer.PatchMergingV2} if v2 else {})
    return tv.SwinTransformer(patch_size=[4, 4], embed_dim=8, depths=[1, 1], num_heads=[1, 1],
                              window_size=[4, 4], stochastic_depth_prob=0.1, num_classes=10,
                              **extra)


FAMILIES: dict[str, Callable[[], nn.Module]] = {
    "alexnet": partial(tv.AlexNet, num_classes=10),
    "vgg": _vgg,
    "resnet": partial(tv.ResNet, resnet.BasicBlock, [1, 1, 1, 1], num_classes=10),
    "resnext": partial(tv.ResNet, resnet.Bottleneck, [1, 1, 1, 1], groups=4,
                       width_per_group=4, num_classes=10),
    "densenet": partial(tv.DenseNet, growth_rate=8, block_config=(2, 2), num_init_features=16,
                        bn_size=2, num_classes=10),
    "googlenet": partial(tv.GoogLeNet, num_classes=10, aux_logits=False, init_weights=False),
    "inception": partial(tv.Inception3, num_classes=10, aux_logits=False, init_weights=False),
    "mnasnet": partial(tv.MNASNet, 0.5, num_classes=10),
    "mobilenet_v2": partial(tv.MobileNetV2, num_classes=10, width_mult=0.25),
    "mobilenet_v3": _mobilenet_v3,
    "efficientnet": partial(_efficientnet, "efficientnet_b0", width_mult=0.25, depth_mult=0.25),
    "efficientnet_v2": partial(_efficientnet, "efficientnet_v2_s"),
    "regnet_x": partial(_regnet, None),
    "regnet_y": partial(_regnet, 0.25),
    # two blocks per stage: the second (stride 1) splits with chunk, as every full model's
    "shufflenet": partial(tv.ShuffleNetV2, [2, 2, 2], [8, 16, 32, 64, 128], num_classes=10),
    "squeezenet1_0": partial(tv.SqueezeNet, "1_0", num_classes=10),
    "squeezenet1_1": partial(tv.SqueezeNet, "1_1", num_classes=10),
    "convnext": partial(tv.ConvNeXt, [convnext.CNBlockConfig(16, 32, 1),
                                      convnext.CNBlockConfig(32, None, 1)],
                        stochastic_depth_prob=0.1, num_classes=10),
    "vit": partial(tv.VisionTransformer, image_size=32, patch_size=16, num_layers=1,
                   num_heads=2, hidden_dim=16, mlp_dim=32, num_classes=10),
    "swin": partial(_swin, False),
    "swin_v2": partial(_swin, True),
    "maxvit": partial(tv.MaxVit, input_size=(32, 32), stem_channels=8, partition_size=2,
                      block_channels=[8, 16], block_layers=[1, 1], head_dim=4,
                      stochastic_depth_prob=0.1, num_classes=10),
}
SIZE = {"alexnet": 64, "vgg": 32, "googlenet": 64, "inception": 75, "efficientnet_v2": 32}
# torchvision names whose family is not their first word
_RENAMED = {"wide_resnet": "resnet", "efficientnet_v2": "efficientnet_v2", "swin_v2": "swin_v2",
            "regnet_x": "regnet_x", "regnet_y": "regnet_y", "squeezenet1_0": "squeezenet1_0",
            "squeezenet1_1": "squeezenet1_1", "mobilenet_v2": "mobilenet_v2",
            "mobilenet_v3": "mobilenet_v3"}


def family_of(name: str) -> str | None:
    """The family of a torchvision model name ('resnet50' -> 'resnet'), None if unknown."""
    for prefix in sorted(_RENAMED, key=len, reverse=True):
        if name.startswith(prefix):
            return _RENAMED[prefix]
    head = name.rstrip("0123456789").split("_")[0].rstrip("0123456789")
    return head if head in FAMILIES else None


def build(family: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return FAMILIES[family]().eval()


def example(family: str, batch: int = 2) -> torch.Tensor:
    size = SIZE.get(family, 32)
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(1))


def compile_(model: nn.Module, how: str, family: str) -> torch.jit.ScriptModule:
    """``torch.jit.script`` or ``torch.jit.trace`` (at the family's input size)."""
    return compile_at(model, how, SIZE.get(family, 32))


def compile_at(model: nn.Module, how: str, size: int) -> torch.jit.ScriptModule:
    """``torch.jit.script``, or ``torch.jit.trace`` on one 3 x ``size`` x ``size`` image."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if how == "script":
            return scripting.script(model)
        image = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            traced: torch.jit.ScriptModule = torch.jit.trace(model, image, check_trace=False)
        return traced
