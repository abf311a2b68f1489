"""2D+T perfusion ResUNet (Xue et al. 2020): time frames as input channels.

Pre-activation residual blocks (BN -> ReLU -> conv3x3, twice); encoder 96 (2 blocks) and
96->128 (3 blocks), bridge 128 (3 blocks), bilinear decoder with skip concatenation, 1x1
head to background, LV blood pool, myocardium, RV (the project's label order).
"""
import torch
from torch import nn
import torch.nn.functional as F


class PreActBlock(nn.Module):
    def __init__(self, c_in, c_out):
        super().__init__()
        self.body = nn.Sequential(nn.BatchNorm2d(c_in), nn.ReLU(inplace=False), nn.Conv2d(c_in, c_out, 3, padding=1),
                                  nn.BatchNorm2d(c_out), nn.ReLU(inplace=True), nn.Conv2d(c_out, c_out, 3, padding=1))
        self.skip = nn.Identity() if c_in == c_out else nn.Conv2d(c_in, c_out, 1)

    def forward(self, x):
        return self.skip(x) + self.body(x)


def _stage(c_in, c_out, blocks):
    return nn.Sequential(*[PreActBlock(c_in if i == 0 else c_out, c_out) for i in range(blocks)])


class PerfusionResUNet(nn.Module):
    def __init__(self, in_frames=48, n_classes=4, widths=(96, 96, 128, 128), blocks=(2, 2, 3, 3), bridge_blocks=3):
        super().__init__()
        self.stem = nn.Conv2d(in_frames, widths[0], 3, padding=1)
        self.encoder = nn.ModuleList()
        c = widths[0]
        for w, b in zip(widths, blocks):
            self.encoder.append(_stage(c, w, b))
            c = w
        self.bridge = _stage(c, c, bridge_blocks)
        self.decoder = nn.ModuleList()
        for w in reversed(widths):
            self.decoder.append(_stage(c + w, w, 1))
            c = w
        self.head = nn.Sequential(nn.BatchNorm2d(c), nn.ReLU(inplace=True), nn.Conv2d(c, n_classes, 1))
        self.n_levels = len(widths)

    @property
    def size_multiple(self):
        return 2 ** self.n_levels

    def forward(self, x):
        x = self.stem(x)
        skips = []
        for stage in self.encoder:
            x = stage(x)
            skips.append(x)
            x = F.max_pool2d(x, 2)
        x = self.bridge(x)
        for stage, skip in zip(self.decoder, reversed(skips)):
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=True)
            x = stage(torch.cat([x, skip], 1))
        return self.head(x)
