"""Encoders shared by the image self-supervised packages; each returns ``(module, feature_dim)``.

- ``resnet18_cifar``: ResNet-18 with the CIFAR stem (3×3 stride-1 first conv, no max-pool),
  as SimSiam/SimCLR use for 32-px images;
- ``resnet50``: torchvision's ResNet-50 for ImageNet;
- ``digits_mlp`` / ``digits_cnn``: small encoders for the 8×8 offline digits.
The classification head is removed: the module maps images to features.
"""

from __future__ import annotations

from torch import nn

from reprokit.errors import ConfigError


def resnet18_cifar(in_channels: int = 3) -> tuple[nn.Module, int]:
    import torchvision

    net = torchvision.models.resnet18(weights=None)
    net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
    net.maxpool = nn.Identity()
    net.fc = nn.Identity()
    return net, 512


def resnet50(in_channels: int = 3) -> tuple[nn.Module, int]:
    import torchvision

    net = torchvision.models.resnet50(weights=None)
    if in_channels != 3:
        net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
    net.fc = nn.Identity()
    return net, 2048


def digits_mlp(in_shape: tuple[int, int, int] = (1, 8, 8), hidden: int = 256,
               depth: int = 2) -> tuple[nn.Module, int]:
    """Flatten → depth × (Linear, BN, ReLU)."""
    if depth < 1:
        raise ConfigError("digits_mlp depth must be at least 1")
    dim_in = in_shape[0] * in_shape[1] * in_shape[2]
    layers: list[nn.Module] = [nn.Flatten()]
    for i in range(depth):
        layers += [nn.Linear(dim_in if i == 0 else hidden, hidden), nn.BatchNorm1d(hidden),
                   nn.ReLU(inplace=True)]
    return nn.Sequential(*layers), hidden


def digits_cnn(in_channels: int = 1, width: int = 32) -> tuple[nn.Module, int]:
    """Two 3×3 conv stages (8×8 → 4×4 → 2×2) and global average pooling."""
    def stage(cin, cout):
        return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout),
                nn.ReLU(inplace=True), nn.Conv2d(cout, cout, 3, padding=1, bias=False),
                nn.BatchNorm2d(cout), nn.ReLU(inplace=True), nn.MaxPool2d(2)]

    net = nn.Sequential(*stage(in_channels, width), *stage(width, 2 * width),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten())
    return net, 2 * width


BACKBONES = {"resnet18_cifar": resnet18_cifar, "resnet50": resnet50,
             "digits_mlp": digits_mlp, "digits_cnn": digits_cnn}


def build_backbone(name: str, **kwargs) -> tuple[nn.Module, int]:
    if name not in BACKBONES:
        raise ConfigError(f"unknown backbone {name!r}; choose one of {sorted(BACKBONES)}")
    return BACKBONES[name](**kwargs)
