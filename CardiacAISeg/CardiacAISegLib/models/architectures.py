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
    raise ValueError(f"unknown architecture {name!r}; known: unet-light, gammanet, perfusion-resunet")


def parameter_count(module):
    return int(sum(p.numel() for p in module.parameters()))
