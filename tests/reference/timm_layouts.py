"""timm's ResNet and DenseNet written in plain PyTorch, with timm's module names.

Written from timm's `models/resnet.py` and `models/densenet.py` (timm 1.0) for
the configurations netc's zoo has (resnet18, resnet50, densenet121), without
importing timm: the tests save these modules' state_dicts and check that the
zoo nets load them and compute the same outputs. timm's own structure is kept
where it shows in the module tree: `act1`/`act2` activations, a `global_pool`
module, `BatchNormAct2d` (a BatchNorm2d that applies its ReLU) in DenseNet, and
DenseNet's stem without a separate relu module.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn as nn


class SelectAdaptivePool2d(nn.Module):
    """timm.layers.SelectAdaptivePool2d(pool_type='avg', flatten=True)."""

    def __init__(self) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.flatten(self.pool(x))


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample=None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.drop_block = nn.Identity()
        self.act1 = nn.ReLU(inplace=True)
        self.aa = nn.Identity()
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.act2 = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.aa(self.act1(self.drop_block(self.bn1(self.conv1(x)))))
        x = self.bn2(self.conv2(x))
        if self.downsample is not None:
            shortcut = self.downsample(shortcut)
        return self.act2(x + shortcut)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample=None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.act1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.drop_block = nn.Identity()
        self.act2 = nn.ReLU(inplace=True)
        self.aa = nn.Identity()
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.act3 = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.act1(self.bn1(self.conv1(x)))
        x = self.aa(self.act2(self.drop_block(self.bn2(self.conv2(x)))))
        x = self.bn3(self.conv3(x))
        if self.downsample is not None:
            shortcut = self.downsample(shortcut)
        return self.act3(x + shortcut)


class ResNet(nn.Module):
    def __init__(self, block, layers: list[int], num_classes: int = 1000) -> None:
        super().__init__()
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.act1 = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        for index, (planes, count) in enumerate(zip((64, 128, 256, 512), layers)):
            self.add_module(f"layer{index + 1}", self._stage(block, planes, count, 1 + (index > 0)))
        self.global_pool = SelectAdaptivePool2d()
        self.fc = nn.Linear(512 * block.expansion, num_classes)

    def _stage(self, block, planes: int, count: int, stride: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * block.expansion, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes * block.expansion),
            )
        blocks = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        blocks += [block(self.inplanes, planes) for _ in range(1, count)]
        return nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.act1(self.bn1(self.conv1(x))))
        for index in range(1, 5):
            x = getattr(self, f"layer{index}")(x)
        return self.fc(self.global_pool(x))


class BatchNormAct2d(nn.BatchNorm2d):
    """timm.layers.BatchNormAct2d: batch norm, then its activation (ReLU here)."""

    def __init__(self, channels: int) -> None:
        super().__init__(channels)
        self.drop = nn.Identity()
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.drop(super().forward(x)))


class DenseLayer(nn.Module):
    def __init__(self, in_channels: int, growth: int = 32, bn_size: int = 4) -> None:
        super().__init__()
        self.norm1 = BatchNormAct2d(in_channels)
        self.conv1 = nn.Conv2d(in_channels, bn_size * growth, 1, bias=False)
        self.norm2 = BatchNormAct2d(bn_size * growth)
        self.conv2 = nn.Conv2d(bn_size * growth, growth, 3, padding=1, bias=False)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        x = self.conv1(self.norm1(torch.cat(features, 1)))
        return self.conv2(self.norm2(x))


class DenseBlock(nn.ModuleDict):
    def __init__(self, count: int, in_channels: int, growth: int = 32) -> None:
        super().__init__()
        for index in range(count):
            self.add_module(f"denselayer{index + 1}", DenseLayer(in_channels + index * growth))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = [x]
        for layer in self.values():
            features.append(layer(features))
        return torch.cat(features, 1)


class DenseTransition(nn.Sequential):
    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.add_module("norm", BatchNormAct2d(in_channels))
        self.add_module("conv", nn.Conv2d(in_channels, out_channels, 1, bias=False))
        self.add_module("pool", nn.AvgPool2d(2, stride=2))


class DenseNet(nn.Module):
    def __init__(self, blocks=(6, 12, 24, 16), num_classes: int = 1000) -> None:
        super().__init__()
        self.features = nn.Sequential(
            OrderedDict(
                conv0=nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False),
                norm0=BatchNormAct2d(64),
                pool0=nn.MaxPool2d(3, stride=2, padding=1),
            )
        )
        channels = 64
        for index, count in enumerate(blocks):
            self.features.add_module(f"denseblock{index + 1}", DenseBlock(count, channels))
            channels += count * 32
            if index != len(blocks) - 1:
                transition = DenseTransition(channels, channels // 2)
                self.features.add_module(f"transition{index + 1}", transition)
                channels //= 2
        self.features.add_module("norm5", BatchNormAct2d(channels))
        self.global_pool = SelectAdaptivePool2d()
        self.head_drop = nn.Dropout(0.0)
        self.classifier = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.head_drop(self.global_pool(self.features(x))))


BUILDERS = {
    "resnet18": lambda: ResNet(BasicBlock, [2, 2, 2, 2]),
    "resnet50": lambda: ResNet(Bottleneck, [3, 4, 6, 3]),
    "densenet121": lambda: DenseNet(),
}


def build(name: str) -> nn.Module:
    """timm's `name` (1000 classes) in eval mode, with PyTorch's default initialisation."""
    return BUILDERS[name]().eval()


__all__ = ["BUILDERS", "build"]
