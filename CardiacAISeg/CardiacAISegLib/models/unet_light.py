"""Lightweight U-Net (Uys 2019, as used by Li 2020): 5 levels, filters 8..128 by default (the shipped v4:
16..256, its card's ``architecture.params``), bilinear up-sampling.

Each level is `convs_per_level` x (3x3 conv -> ReLU -> BatchNorm), the order of the thesis code.
Multi-class head (background, LV blood pool, LV myocardium, RV).
``in_channels = 2 n + 1`` makes it a 2.5D network: slice k with its n neighbours on each side
(``context_slices = n``; ``preprocess.with_context_slices`` stacks them).
"""
import torch
from torch import nn
import torch.nn.functional as F


def conv_block(c_in, c_out, n):
    layers = []
    for i in range(n):
        layers += [nn.Conv2d(c_in if i == 0 else c_out, c_out, 3, padding=1), nn.ReLU(inplace=True), nn.BatchNorm2d(c_out)]
    return nn.Sequential(*layers)


class UpBlock(nn.Module):
    def __init__(self, c_in, c_out, n):
        super().__init__()
        self.reduce = nn.Conv2d(c_in, c_out, 1)
        self.block = conv_block(2 * c_out, c_out, n)

    def forward(self, x, skip):
        x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
        return self.block(torch.cat([self.reduce(x), skip], 1))


class UNetLight(nn.Module):
    def __init__(self, in_channels=1, n_classes=4, filters=(8, 16, 32, 64, 128), convs_per_level=2):
        super().__init__()
        self.filters = tuple(filters)
        # neighbouring slices on each side the network reads (inference stacks them by this)
        self.context_slices = (in_channels - 1) // 2
        self.down = nn.ModuleList()
        c = in_channels
        for f in filters:
            self.down.append(conv_block(c, f, convs_per_level))
            c = f
        self.up = nn.ModuleList(UpBlock(filters[i + 1], filters[i], convs_per_level) for i in reversed(range(len(filters) - 1)))
        self.head = nn.Conv2d(filters[0], n_classes, 1)

    @property
    def size_multiple(self):
        return 2 ** (len(self.filters) - 1)

    def forward(self, x):
        skips = []
        for i, block in enumerate(self.down):
            x = block(x)
            if i < len(self.down) - 1:
                skips.append(x)
                x = F.max_pool2d(x, 2)
        for up, skip in zip(self.up, reversed(skips)):
            x = up(x, skip)
        return self.head(x)
