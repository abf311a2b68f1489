"""Architecture name -> constructor, so a model card can rebuild its network."""


def build(name, **params):
    if name == "unet-light":
        from .unet_light import UNetLight

        return UNetLight(**params)
    if name == "gammanet":
        from .gammanet import GammaNet

        return GammaNet(**params)
    if name == "perfusion-resunet":
        from .resunet import PerfusionResUNet

        return PerfusionResUNet(**params)
    if name == "ensemble":
        return mean_of_networks([build(member["name"], **member.get("params", {})) for member in params["members"]])
    raise ValueError(f"unknown architecture {name!r}; known: unet-light, gammanet, perfusion-resunet, ensemble")


def mean_of_networks(members):
    """One network of several trained ones (architecture "ensemble", params {"members": [{"name",
    "params"}, ...]}): the mean of their log-probabilities, so the card's softmax and test-time
    readings treat it as any single network and it exports to one ONNX graph. Averaging networks
    trained apart cancels part of each one's errors where its own longer training no longer did
    (docs/models.md, gammanet)."""
    import torch

    class MeanOfNetworks(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.members = torch.nn.ModuleList(members)
            # the input must suit every member's pooling
            self.size_multiple = max(getattr(m, "size_multiple", 16) for m in members)

        def forward(self, x):
            return sum(torch.log_softmax(m(x), 1) for m in self.members) / len(self.members)

    return MeanOfNetworks()


def parameter_count(module):
    return int(sum(p.numel() for p in module.parameters()))
