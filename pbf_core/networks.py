"""Network modules of our own, around the segmentation-models-pytorch architectures."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812


def _conv_bn_relu(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(True)]


class FullResolutionHead(nn.Module):
    """An smp model whose output head also sees the input pixels at full resolution.

    Every smp encoder starts with a stride-2 stage and the U-Net decoder has no skip connection
    at full resolution, so its last layers only upsample half-resolution features: defects of
    one to a few pixels blur away and boundaries land a pixel off. Two 3×3 convolutions over
    ``[decoder output, input]`` restore pixel-exact detail for little compute.

    Args:
        base: smp segmentation model; its segmentation head is replaced (it returns the
            decoder's features, upsampled to full resolution when coarser).
        in_channels: input channels.
        classes: output channels (logits).
        width: channels of the two full-resolution convolutions.
    """

    def __init__(self, base: nn.Module, in_channels: int, classes: int, width: int) -> None:
        super().__init__()
        decoder_out = base.segmentation_head[0].in_channels
        base.segmentation_head = nn.Identity()
        self.base = base
        self.head = nn.Sequential(
            *_conv_bn_relu(decoder_out + in_channels, width),
            *_conv_bn_relu(width, width),
            nn.Conv2d(width, classes, 1),
        )

    @property
    def encoder(self) -> nn.Module:
        return self.base.encoder

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, C, H, W)`` → logits ``(N, classes, H, W)``; H, W multiples of 32."""
        features = self.base(x)
        if features.shape[-2:] != x.shape[-2:]:  # decoders that stop at 1/4 (FPN, ...)
            features = F.interpolate(features, size=x.shape[-2:], mode="bilinear")
        return self.head(torch.cat([features, x], dim=1))
