"""γ-Net: a recurrent U-Net whose levels carry fGRU hidden states with GALA attention (Li 2020).

The whole network is one recurrent cell: the image is fed again at each timestep and the
hidden states (zeros at t=0, so inference is deterministic) carry top-down feedback between
the down and up passes of a level. ``forward(x, return_all=True)`` gives the output of every
timestep, for teaching.
"""
import torch
from torch import nn
import torch.nn.functional as F


def _channel_param(c, value):
    return nn.Parameter(torch.full((1, c, 1, 1), float(value)))


class GALA(nn.Module):
    """Global-and-local attention: a channel (1x1) path times a spatial (5x5 -> 1) path, squashed by a sigmoid."""

    def __init__(self, c, kernel=5):
        super().__init__()
        self.glob = nn.Conv2d(c, c, 1)
        self.glob_norm = nn.InstanceNorm2d(c, affine=True)
        self.local = nn.Conv2d(c, 1, kernel, padding=kernel // 2)
        self.local_norm = nn.InstanceNorm2d(1, affine=True)

    def forward(self, h):
        g = self.glob_norm(F.relu(self.glob(h)))
        s = self.local_norm(F.relu(self.local(h)))
        return g * s


class FGRU(nn.Module):
    """fGRU cell (docs/algorithms.md §1b); W is a full C x C x k x k kernel shared by both stages."""

    def __init__(self, c, kernel):
        super().__init__()
        self.w = nn.Parameter(torch.empty(c, c, kernel, kernel))
        nn.init.orthogonal_(self.w.view(c, -1))
        with torch.no_grad():  # symmetric across channels, as in Linsley's design
            self.w.copy_((self.w + self.w.transpose(0, 1)) / 2)
        self.pad = kernel // 2
        self.gala = GALA(c)
        self.u2 = nn.Conv2d(c, c, 1, bias=False)
        self.b2 = _channel_param(c, 0.0)
        self.norm_c1 = nn.InstanceNorm2d(c, affine=True)
        self.norm_c2 = nn.InstanceNorm2d(c, affine=True)
        self.norm_g2 = nn.InstanceNorm2d(c, affine=True)
        self.alpha, self.mu = _channel_param(c, 0.1), _channel_param(c, 1.0)
        self.kappa, self.gamma, self.omega = _channel_param(c, 0.5), _channel_param(c, 1.0), _channel_param(c, 0.5)

    def forward(self, x, h2):
        g1 = torch.sigmoid(self.gala(h2))
        c1 = self.norm_c1(F.conv2d(g1 * h2, self.w, padding=self.pad))
        h1 = F.relu(x - F.relu(c1 * (self.alpha * h2 + self.mu)))
        g2 = torch.sigmoid(self.norm_g2(self.u2(h1)) + self.b2)  # bias after the norm, so it is not cancelled
        c2 = self.norm_c2(F.conv2d(h1, self.w, padding=self.pad))
        h2_new = F.relu(self.kappa * h1 + self.gamma * c2 + self.omega * h1 * c2)
        return (1 - g2) * h2 + g2 * h2_new


def _conv_in_relu(c_in, c_out):
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1), nn.InstanceNorm2d(c_out, affine=True), nn.ReLU(inplace=True))


class GammaNet(nn.Module):
    def __init__(self, in_channels=1, n_classes=4, filters=(24, 28, 36, 48, 64),
                 down_kernels=(9, 7, 5, 3, 1), up_kernels=(1, 1, 1, 1), timesteps=2):
        super().__init__()
        self.filters, self.timesteps = tuple(filters), timesteps
        n = len(filters)
        self.encoder = nn.ModuleList(_conv_in_relu(in_channels if i == 0 else filters[i - 1], filters[i]) for i in range(n))
        self.fgru_down = nn.ModuleList(FGRU(filters[i], down_kernels[i]) for i in range(n))
        self.reduce = nn.ModuleList()
        self.up_block = nn.ModuleList()
        self.fgru_up = nn.ModuleList()
        for i in range(n - 1):
            deeper = sum(filters[i + 1:])  # up(a) carries level i+1; deeper hidden states follow
            self.reduce.append(nn.Conv2d(deeper, filters[i], 1))
            self.up_block.append(_conv_in_relu(2 * filters[i], filters[i]))
            self.fgru_up.append(FGRU(filters[i], up_kernels[i]))
        self.head = nn.Conv2d(filters[0], n_classes, 1)

    @property
    def size_multiple(self):
        return 2 ** (len(self.filters) - 1)

    def step(self, x, hidden):
        n = len(self.filters)
        a, skips = x, []
        for i in range(n):
            a = self.encoder[i](a)
            skips.append(a)
            if hidden[i] is None:
                hidden[i] = torch.zeros_like(a)
            hidden[i] = self.fgru_down[i](a, hidden[i])
            a = a + hidden[i]
            if i < n - 1:
                a = F.max_pool2d(a, 2)
        a = hidden[n - 1]
        for i in reversed(range(n - 1)):
            size = skips[i].shape[-2:]
            parts = [F.interpolate(a, size=size, mode="bilinear", align_corners=False)]
            parts += [F.interpolate(hidden[j], size=size, mode="bilinear", align_corners=False) for j in range(i + 2, n)]
            a = self.reduce[i](torch.cat(parts, 1))
            a = self.up_block[i](torch.cat([a, skips[i]], 1))
            hidden[i] = self.fgru_up[i](a, hidden[i])
            a = hidden[i]
        return self.head(a)

    def forward(self, x, timesteps=None, return_all=False):
        hidden = [None] * len(self.filters)
        outputs = [self.step(x, hidden) for _ in range(timesteps or self.timesteps)]
        return outputs if return_all else outputs[-1]
