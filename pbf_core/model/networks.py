"""Network modules of our own, around the segmentation-models-pytorch architectures."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812


def _conv_bn_relu(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(True)]


class _WithHead(nn.Module):
    """An smp model (``base``) whose segmentation head is replaced by our own ``head``."""

    def __init__(self, base: nn.Module) -> None:
        super().__init__()
        base.segmentation_head = nn.Identity()
        self.base = base

    @property
    def encoder(self) -> nn.Module:
        return self.base.encoder


class FullResolutionHead(_WithHead):
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
        decoder_out = base.segmentation_head[0].in_channels
        super().__init__(base)
        self.head = nn.Sequential(
            *_conv_bn_relu(decoder_out + in_channels, width),
            *_conv_bn_relu(width, width),
            nn.Conv2d(width, classes, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, C, H, W)`` → logits ``(N, classes, H, W)``; H, W multiples of 32."""
        features = self.base(x)
        if features.shape[-2:] != x.shape[-2:]:  # decoders that stop at 1/4 (FPN, ...)
            features = F.interpolate(features, size=x.shape[-2:], mode="bilinear")
        return self.head(torch.cat([features, x], dim=1))


class _Passthrough(nn.Module):
    """Stands in for a U-Net decoder block: returns its input, ignoring the target size."""

    def forward(self, x: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
        return x


class ShuffleHead(_WithHead):
    """A U-Net whose full-resolution stage runs at half resolution on pixel-unshuffled input.

    :class:`FullResolutionHead` keeps pixel-exact detail but spends most of an int8 model's time
    in narrow 3×3 convolutions over every full-resolution pixel, which ONNX Runtime's int8
    kernels run poorly (measured: half the int8 latency at 320²). Here the decoder stops at
    half resolution; the input pixels enter losslessly as 2×2 blocks
    (:func:`~torch.nn.functional.pixel_unshuffle`, ``4 × in_channels`` channels) beside the
    decoder's features; two wider 3×3 convolutions at half resolution predict ``4 × classes``
    logits that :func:`~torch.nn.functional.pixel_shuffle` puts back as full-resolution
    pixels. Same detail, a quarter of the positions and wide convolutions int8 runs well.

    Args:
        base: smp U-Net; its last decoder block (the one that upsamples to full resolution)
            and segmentation head are removed.
        in_channels: input channels.
        classes: output channels (logits).
        width: channels of the two half-resolution convolutions.
    """

    def __init__(self, base: nn.Module, in_channels: int, classes: int, width: int) -> None:
        blocks = base.decoder.blocks
        decoder_out = blocks[-2].conv2[0].out_channels
        blocks[-1] = _Passthrough()
        super().__init__(base)
        # pixel unshuffle as a fixed one-hot 2×2 stride-2 convolution: exported as one Conv that
        # ONNX Runtime quantizes with the rest, instead of a slow 6-D float Transpose
        unshuffle = torch.zeros(4 * in_channels, in_channels, 2, 2)
        for c in range(in_channels):
            for k in range(4):
                unshuffle[4 * c + k, c, k // 2, k % 2] = 1.0
        self.register_buffer("unshuffle", unshuffle, persistent=False)
        self.head = nn.Sequential(
            *_conv_bn_relu(decoder_out + 4 * in_channels, width),
            *_conv_bn_relu(width, width),
            nn.Conv2d(width, 4 * classes, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, C, H, W)`` → logits ``(N, classes, H, W)``; H, W multiples of 32."""
        features = self.base(x)
        pixels = F.conv2d(x, self.unshuffle, stride=2)  # == F.pixel_unshuffle(x, 2)
        return F.pixel_shuffle(self.head(torch.cat([features, pixels], dim=1)), 2)
