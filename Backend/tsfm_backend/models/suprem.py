"""SuPreM backbones: UNet3D (Models-Genesis style), SwinUNETR and SegResNet, with the released key names.

- ``unet``: ``down_tr64/128/256/512`` and ``up_tr256/128/64`` of two conv + ContBatchNorm3d + ReLU units
  each, transposed-conv upsampling (upsampled tensor first in the concat), head ``out_tr.final_conv``.
  ContBatchNorm3d normalises with the statistics of the current batch even in eval mode, as the authors'
  network does; in eval mode it leaves the running statistics untouched.
- ``swinunetr``: MONAI ``SwinUNETR(feature_size=48)``; ``segresnet``: MONAI ``SegResNet(init_filters=16,
  blocks_down=(1, 2, 2, 4), blocks_up=(1, 1, 1))``. Their keys are MONAI's, which the checkpoints use.
  ``patch_merging`` picks the order in which SwinUNETR's patch merging concatenates the 2x2x2 neighbours
  (``tsfm_backend.models.patch_merging``): ``"monai<1.5"`` for the released SuPreM files (trained with
  MONAI 0.9.0's copy), ``"monai>=1.5"`` (the default) for networks made with a current MONAI.

``head="universal"`` (unet and swinunetr) replaces the conv head with the CLIP-driven Universal Model head
the released ``supervised_suprem_{unet,swinunetr}_2100.pth`` files were trained with: ``GAP`` pools the
bottleneck (GroupNorm(16), ReLU, global average, 1x1x1 conv to 256), ``text_to_vision`` maps each class's
text embedding (buffer ``organ_embedding``, (classes, 512)) to 256, and ``controller`` turns the pair into
the 153 weights of a per-class three-layer 1x1x1 head (8 -> 8 -> 8 -> 1, ReLU between) applied to
``precls_conv`` of the last decoder feature (GroupNorm(16), ReLU, 1x1x1 conv to 8). One logit per class,
read with an independent sigmoid. Keys are the file's without ``module.backbone.`` / ``module.``.

All take (B, C, Z, Y, X) with sizes divisible by 8 (unet, segresnet) or 32 (swinunetr).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

BACKBONES = ("unet", "swinunetr", "segresnet")
HEADS = ("conv", "universal")
ENCODINGS = ("word_embedding", "rand_embedding")

PRESETS: dict[str, dict] = {
    "unet": {"backbone": "unet"},
    "swinunetr": {"backbone": "swinunetr", "feature_size": 48},
    "segresnet": {"backbone": "segresnet", "init_filters": 16},
    "tiny-swinunetr": {"backbone": "swinunetr", "feature_size": 12, "depths": (1, 1, 1, 1)},
}

# Per backbone: the head that a task replaces (absent from backbone-only checkpoints); "universal" is the
# Universal Model head that replaces a unet or swinunetr conv head.
UNIVERSAL_HEAD_KEYS = ("organ_embedding", "precls_conv.", "GAP.", "controller.", "text_to_vision.")
HEAD_KEYS = {"unet": ("out_tr.",), "swinunetr": ("out.",), "segresnet": ("conv_final.2.",),
             "universal": UNIVERSAL_HEAD_KEYS}
# Universal Model sizes: dynamic head width, task and text embedding widths.
DYNAMIC_CHANNELS, TASK_DIM, TEXT_DIM = 8, 256, 512
# Classes whose dynamic heads run together: bounds the (classes x 8)-channel feature maps they need.
CLASS_CHUNK = 8
ENCODER_KEYS = ("down_tr", "swinViT.", "encoder", "convInit.", "down_layers.")
STEM_KEYS = ("down_tr64.ops.0.conv1.", "swinViT.patch_embed.", "convInit.")


class ContBatchNorm3d(nn.modules.batchnorm._BatchNorm):
    """Batch norm that always uses the current batch's statistics (running stats only updated in training)."""

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() != 5:
            raise ValueError(f"expected a 5D (B, C, Z, Y, X) input, got {input.dim()}D")

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        self._check_input_dim(input)
        running_mean = self.running_mean if self.training else None
        running_var = self.running_var if self.training else None
        return F.batch_norm(input, running_mean, running_var, self.weight, self.bias, True, self.momentum, self.eps)


class LUConv(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv3d(cin, cout, 3, padding=1)
        self.bn1 = ContBatchNorm3d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn1(self.conv1(x)))


class DownTransition(nn.Module):
    """Two LUConvs (cin -> 32*2^d -> 64*2^d), then max-pool except at the deepest level."""

    def __init__(self, cin: int, depth: int) -> None:
        super().__init__()
        width = 32 * 2**depth
        self.ops = nn.Sequential(LUConv(cin, width), LUConv(width, 2 * width))
        self.pool = depth != 3

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        skip = self.ops(x)
        return (F.max_pool3d(skip, 2) if self.pool else skip), skip


class UpTransition(nn.Module):
    """Transposed conv x2, concat (upsampled first) with the skip, then two LUConvs to 64*2^d channels."""

    def __init__(self, channels: int, depth: int) -> None:
        super().__init__()
        width = 64 * 2**depth
        self.up_conv = nn.ConvTranspose3d(channels, channels, 2, stride=2)
        self.ops = nn.Sequential(LUConv(channels + channels // 2, width), LUConv(width, width))

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.ops(torch.cat((self.up_conv(x), skip), 1))


class OutputTransition(nn.Module):
    def __init__(self, cin: int, num_classes: int) -> None:
        super().__init__()
        self.final_conv = nn.Conv3d(cin, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.final_conv(x)


class UNet3D(nn.Module):
    """SuPreM's UNet3D: (B, in_channels, Z, Y, X) -> logits (B, num_classes, Z, Y, X)."""

    def __init__(self, in_channels: int = 1, num_classes: int = 2) -> None:
        super().__init__()
        self.down_tr64 = DownTransition(in_channels, 0)
        self.down_tr128 = DownTransition(64, 1)
        self.down_tr256 = DownTransition(128, 2)
        self.down_tr512 = DownTransition(256, 3)
        self.up_tr256 = UpTransition(512, 2)
        self.up_tr128 = UpTransition(256, 1)
        self.up_tr64 = UpTransition(128, 0)
        self.out_tr = OutputTransition(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out_tr(unet_features(self, x)[1])


def unet_features(network: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(bottleneck (B, 512, Z/8, Y/8, X/8), last decoder feature (B, 64, Z, Y, X)) of a UNet3D's layers."""
    x, skip64 = network.down_tr64(x)
    x, skip128 = network.down_tr128(x)
    x, skip256 = network.down_tr256(x)
    bottleneck, _ = network.down_tr512(x)
    x = network.up_tr256(bottleneck, skip256)
    x = network.up_tr128(x, skip128)
    return bottleneck, network.up_tr64(x, skip64)


def swin_features(network: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(bottleneck ``encoder10`` (B, 16F, Z/32, ...), ``decoder1`` output (B, F, Z, Y, X)) of MONAI
    SwinUNETR's layers, F the feature size: its forward without the ``out`` conv, as SuPreM's copy."""
    if any(size % 32 for size in x.shape[2:]):
        raise ValueError(f"SwinUNETR needs spatial sizes divisible by 32, got {tuple(x.shape[2:])}")
    hidden = network.swinViT(x, network.normalize)
    enc0 = network.encoder1(x)
    enc1 = network.encoder2(hidden[0])
    enc2 = network.encoder3(hidden[1])
    enc3 = network.encoder4(hidden[2])
    bottleneck = network.encoder10(hidden[4])
    dec3 = network.decoder5(bottleneck, hidden[3])
    dec2 = network.decoder4(dec3, enc3)
    dec1 = network.decoder3(dec2, enc2)
    dec0 = network.decoder2(dec1, enc1)
    return bottleneck, network.decoder1(dec0, enc0)


def dynamic_head(features: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    """Per-class 1x1x1 heads C -> C -> C -> 1 (ReLU between) with generated weights.

    features: (1, C, Z, Y, X); params: (N, 2*C*C + C + 2*C + 1), laid out as the Universal Model's
    controller emits them (weights of the three layers, then their biases). Returns (1, N, Z, Y, X).
    """
    c, n = features.shape[1], params.shape[0]
    w1, w2, w3, b1, b2, b3 = torch.split(params, [c * c, c * c, c, c, c, 1], dim=1)
    x = features.repeat(1, n, 1, 1, 1)
    x = F.relu(F.conv3d(x, w1.reshape(n * c, c, 1, 1, 1), b1.reshape(n * c), groups=n))
    x = F.relu(F.conv3d(x, w2.reshape(n * c, c, 1, 1, 1), b2.reshape(n * c), groups=n))
    return F.conv3d(x, w3.reshape(n, c, 1, 1, 1), b3.reshape(n), groups=n)


class UniversalModel(nn.Module):
    """A UNet3D or SwinUNETR body with the Universal Model head (module docstring), as SuPreM released them.

    The body's layers are this module's own children (``down_tr64``..., ``swinViT``...), so weight names
    are the checkpoint's without ``backbone.``. (B, in_channels, Z, Y, X) -> logits (B, num_classes, Z, Y, X).
    """

    def __init__(self, backbone: str, body: nn.Module, num_classes: int, encoding: str = "word_embedding",
                 head_groups: int = 16) -> None:
        super().__init__()
        if backbone not in ("unet", "swinunetr"):
            raise ValueError(f"the Universal Model head sits on unet or swinunetr, not {backbone!r}")
        if encoding not in ENCODINGS:
            raise ValueError(f"unknown class encoding {encoding!r}; choose one of {ENCODINGS}")
        self.backbone_name, self.encoding = backbone, encoding
        if encoding == "word_embedding":
            self.register_buffer("organ_embedding", torch.zeros(num_classes, TEXT_DIM))
        for name, child in body.named_children():
            if not (name + ".").startswith(HEAD_KEYS[backbone]):
                self.add_module(name, child)
        if backbone == "unet":
            decoded, bottleneck = 64, 512
        else:
            self.normalize = body.normalize
            decoded = int(body.swinViT.embed_dim)  # the feature size; the bottleneck has 16 times as many
            bottleneck = 16 * decoded
        c = DYNAMIC_CHANNELS
        self.precls_conv = nn.Sequential(nn.GroupNorm(head_groups, decoded), nn.ReLU(inplace=True),
                                         nn.Conv3d(decoded, c, kernel_size=1))
        self.GAP = nn.Sequential(nn.GroupNorm(head_groups, bottleneck), nn.ReLU(inplace=True),
                                 nn.AdaptiveAvgPool3d((1, 1, 1)), nn.Conv3d(bottleneck, TASK_DIM, kernel_size=1))
        self.controller = nn.Conv3d(2 * TASK_DIM, 2 * c * c + c + 2 * c + 1, kernel_size=1)
        if encoding == "word_embedding":
            self.text_to_vision = nn.Linear(TEXT_DIM, TASK_DIM)
        else:
            self.organ_embedding = nn.Embedding(num_classes, TASK_DIM)

    def task_encoding(self) -> torch.Tensor:
        """(num_classes, 256): each class's embedding in the space the controller reads."""
        if self.encoding == "word_embedding":
            return F.relu(self.text_to_vision(self.organ_embedding))
        return self.organ_embedding.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = unet_features if self.backbone_name == "unet" else swin_features
        bottleneck, decoded = features(self, x)
        task = self.task_encoding()
        pooled = self.GAP(bottleneck).flatten(1)
        head_input = self.precls_conv(decoded)
        logits = []
        for b in range(x.shape[0]):
            condition = torch.cat([pooled[b].expand(task.shape[0], -1), task], dim=1)
            params = self.controller(condition[:, :, None, None, None]).flatten(1)
            logits.append(torch.cat([dynamic_head(head_input[b : b + 1], params[i : i + CLASS_CHUNK])
                                     for i in range(0, params.shape[0], CLASS_CHUNK)], dim=1))
        return torch.cat(logits)


def build(
    backbone: str = "unet",
    in_channels: int = 1,
    num_classes: int = 2,
    preset: str | None = None,
    head: str = "conv",
    encoding: str = "word_embedding",
    head_groups: int = 16,
    **overrides,
) -> nn.Module:
    """A SuPreM backbone network with a ``num_classes`` head; ``preset`` names a row of PRESETS.

    ``head``: ``conv`` (the backbone's own output conv) or ``universal`` (the released Universal Model
    head; ``encoding`` and ``head_groups``, the GroupNorm groups, apply to it only).
    """
    kwargs: dict = {}
    if preset is not None:
        if preset not in PRESETS:
            raise ValueError(f"unknown SuPreM preset {preset!r}; choose one of {sorted(PRESETS)}")
        kwargs.update(PRESETS[preset])
        backbone = kwargs.pop("backbone")
    kwargs.update(overrides)
    if head not in HEADS:
        raise ValueError(f"unknown SuPreM head {head!r}; choose one of {HEADS}")
    body = _body(backbone, in_channels, num_classes, kwargs)
    if head == "universal":
        return UniversalModel(backbone, body, num_classes, encoding, head_groups)
    return body


def _body(backbone: str, in_channels: int, num_classes: int, kwargs: dict) -> nn.Module:
    if backbone == "unet":
        return UNet3D(in_channels, num_classes, **kwargs)
    if backbone == "swinunetr":
        from monai.networks.nets import SwinUNETR

        from tsfm_backend.models.patch_merging import CURRENT, merging_class

        downsample = merging_class(kwargs.pop("patch_merging", CURRENT))
        kwargs.setdefault("feature_size", 48)
        return SwinUNETR(in_channels=in_channels, out_channels=num_classes, downsample=downsample, **kwargs)
    if backbone == "segresnet":
        from monai.networks.nets import SegResNet

        kwargs.setdefault("init_filters", 16)
        return SegResNet(spatial_dims=3, in_channels=in_channels, out_channels=num_classes,
                         blocks_down=(1, 2, 2, 4), blocks_up=(1, 1, 1), **kwargs)
    raise ValueError(f"unknown SuPreM backbone {backbone!r}; choose one of {BACKBONES}")


def head_keys(backbone: str) -> tuple[str, ...]:
    return HEAD_KEYS[backbone]
