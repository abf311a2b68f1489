"""Lightweight U-Net (Uys 2019, as used by Li 2020): 5 levels, filters 8..128 by default (the shipped v4:
16..256, its card's ``architecture.params``), bilinear up-sampling.

Each level is `convs_per_level` x (3x3 conv -> ReLU -> BatchNorm), the order of the thesis code.
Multi-class head (background, LV blood pool, LV myocardium, RV).
``in_channels = 2 n + 1`` makes it a 2.5D network: slice k with its n neighbours on each side
(``context_slices = n``; ``preprocess.with_context_slices`` stacks them).
``deep_supervision = k`` adds k 1x1 heads on the decoder's next coarser outputs (1/2, 1/4, ...
resolution): in training mode the forward pass returns [full, 1/2, ...] logits so the loss can
supervise every scale (nnU-Net's recipe); in eval mode, and in an ONNX export, only the full one.
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
    def __init__(self, in_channels=1, n_classes=4, filters=(8, 16, 32, 64, 128), convs_per_level=2, deep_supervision=0):
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
        if not 0 <= deep_supervision <= len(filters) - 2:
            raise ValueError(f"deep_supervision must be 0-{len(filters) - 2} for {len(filters)} levels, not {deep_supervision}")
        # heads on the decoder outputs at 1/2, 1/4, ... resolution (unused at inference)
        self.aux_heads = nn.ModuleList(nn.Conv2d(filters[i], n_classes, 1) for i in range(1, deep_supervision + 1))

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
        decoded = []
        for up, skip in zip(self.up, reversed(skips)):
            x = up(x, skip)
            decoded.append(x)
        if self.training and len(self.aux_heads):
            # decoded[-1] is full resolution, decoded[-2] half, ...
            return [self.head(x)] + [head(decoded[-2 - i]) for i, head in enumerate(self.aux_heads)]
        return self.head(x)
