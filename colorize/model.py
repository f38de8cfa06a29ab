"""pix2pix networks: the U-Net generator and the PatchGAN discriminator.

Parameter names follow the source notebook exactly (``down1.model.0.weight`` ... ``final.2.bias``,
``model.0.weight`` ... ``model.12.weight``), so its state_dicts load strictly. Width (channels of
the first block), depth (number of down blocks) and channel counts are parameters; the notebook's
network is ``GeneratorConfig(in_channels=3, out_channels=3, width=64, depth=8)``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

GENERATOR_ARCHS = ("unet",)
DISCRIMINATOR_ARCHS = ("patchgan",)
# Down blocks from this index (1-based) on carry dropout, as in the notebook (down4..down8);
# the matching up blocks (those that produce a skip level >= this) do too (up1..up4).
_DROPOUT_FROM_LEVEL = 4


@dataclass(frozen=True)
class GeneratorConfig:
    """Shape of a U-Net generator."""

    arch: str = "unet"
    in_channels: int = 1  # 1 (L) in lab mode, 3 (gray x3) in rgb mode
    out_channels: int = 2  # 2 (ab) in lab mode, 3 (RGB) in rgb mode
    width: int = 64  # channels of the first block; deeper blocks use 2x, 4x, 8x (capped at 8x)
    depth: int = 8  # down blocks; the input side must be a multiple of 2**depth
    dropout: float = 0.5  # pix2pix uses dropout as its noise source; off in eval mode

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass(frozen=True)
class DiscriminatorConfig:
    """Shape of a PatchGAN discriminator (70x70 receptive field at the default 4 layers)."""

    arch: str = "patchgan"
    in_channels: int = 3  # colour channels + condition channels (2 + 1 in lab mode, 3 + 3 in rgb)
    width: int = 64


class UNetDown(nn.Module):
    """Conv 4x4 stride 2 -> [InstanceNorm] -> LeakyReLU(0.2) -> [Dropout]. Halves H and W."""

    def __init__(self, in_size: int, out_size: int, normalize: bool = True, dropout: float = 0.0):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(in_size, out_size, 4, 2, 1, bias=False)]
        if normalize:
            layers.append(nn.InstanceNorm2d(out_size))
        layers.append(nn.LeakyReLU(0.2))
        if dropout:
            layers.append(nn.Dropout(dropout))
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class UNetUp(nn.Module):
    """ConvTranspose 4x4 stride 2 -> InstanceNorm -> ReLU -> [Dropout], then concat the skip."""

    def __init__(self, in_size: int, out_size: int, dropout: float = 0.0):
        super().__init__()
        layers: list[nn.Module] = [
            nn.ConvTranspose2d(in_size, out_size, 4, 2, 1, bias=False),
            nn.InstanceNorm2d(out_size),
            nn.ReLU(inplace=True),
        ]
        if dropout:
            layers.append(nn.Dropout(dropout))
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        # (B, out, 2h, 2w) ++ (B, skip, 2h, 2w) -> (B, out + skip, 2h, 2w): output first, skip second.
        return torch.cat((self.model(x), skip), 1)


def _level_channels(width: int, depth: int) -> list[int]:
    """Channels after each down block: width * (1, 2, 4, 8, 8, ...)."""
    return [width * min(2**i, 8) for i in range(depth)]


class UNetGenerator(nn.Module):
    """U-Net: ``depth`` down blocks, ``depth - 1`` up blocks with skips, then upsample + conv + tanh.

    Input (B, in_channels, S, S) with S a multiple of 2**depth; output (B, out_channels, S, S) in
    [-1, 1].
    """

    def __init__(self, cfg: GeneratorConfig):
        super().__init__()
        if cfg.depth < 2:
            raise ValueError(f"U-Net depth must be at least 2, not {cfg.depth}")
        self.depth = cfg.depth
        ch = _level_channels(cfg.width, cfg.depth)
        prev = cfg.in_channels
        for i in range(1, cfg.depth + 1):
            normalize = i not in (1, cfg.depth)
            dropout = cfg.dropout if i >= _DROPOUT_FROM_LEVEL else 0.0
            self.add_module(f"down{i}", UNetDown(prev, ch[i - 1], normalize=normalize, dropout=dropout))
            prev = ch[i - 1]
        for j in range(1, cfg.depth):
            level = cfg.depth - j  # the skip this block joins: down{level}
            in_size = ch[-1] if j == 1 else 2 * ch[level]
            dropout = cfg.dropout if level >= _DROPOUT_FROM_LEVEL else 0.0
            self.add_module(f"up{j}", UNetUp(in_size, ch[level - 1], dropout=dropout))
        self.final = nn.Sequential(
            nn.Upsample(scale_factor=2),
            nn.ZeroPad2d((1, 0, 1, 0)),
            nn.Conv2d(2 * ch[0], cfg.out_channels, 4, padding=1),
            nn.Tanh(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for i in range(1, self.depth + 1):
            x = getattr(self, f"down{i}")(x)
            skips.append(x)
        # x is the bottleneck d_depth; up_j joins d_{depth-j}.
        for j in range(1, self.depth):
            x = getattr(self, f"up{j}")(x, skips[self.depth - j - 1])
        return self.final(x)


class PatchDiscriminator(nn.Module):
    """PatchGAN: scores overlapping patches. (B, C, S, S) x2 -> (B, 1, S/16, S/16)."""

    def __init__(self, cfg: DiscriminatorConfig):
        super().__init__()
        w = cfg.width

        def block(i: int, o: int, normalize: bool) -> list[nn.Module]:
            layers: list[nn.Module] = [nn.Conv2d(i, o, 4, stride=2, padding=1)]
            if normalize:
                layers.append(nn.InstanceNorm2d(o))
            layers.append(nn.LeakyReLU(0.2, inplace=True))
            return layers

        self.model = nn.Sequential(
            *block(cfg.in_channels, w, normalize=False),
            *block(w, 2 * w, normalize=True),
            *block(2 * w, 4 * w, normalize=True),
            *block(4 * w, 8 * w, normalize=True),
            nn.ZeroPad2d((1, 0, 1, 0)),
            nn.Conv2d(8 * w, 1, 4, padding=1, bias=False),
        )

    def forward(self, image: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        # Colour first, condition second, on the channel axis: (B, C_img + C_cond, S, S).
        return self.model(torch.cat((image, condition), 1))


def build_generator(cfg: GeneratorConfig) -> UNetGenerator:
    """The generator named by ``cfg.arch``, on the CPU, with PyTorch's default initialisation."""
    if cfg.arch not in GENERATOR_ARCHS:
        raise ValueError(f"unknown generator arch {cfg.arch!r}; valid: {', '.join(GENERATOR_ARCHS)}")
    return UNetGenerator(cfg)


def build_discriminator(cfg: DiscriminatorConfig) -> PatchDiscriminator:
    """The discriminator named by ``cfg.arch``, on the CPU."""
    if cfg.arch not in DISCRIMINATOR_ARCHS:
        raise ValueError(f"unknown discriminator arch {cfg.arch!r}; valid: {', '.join(DISCRIMINATOR_ARCHS)}")
    return PatchDiscriminator(cfg)


def init_weights(module: nn.Module, std: float = 0.02, generator: torch.Generator | None = None) -> None:
    """pix2pix initialisation: every conv and transposed-conv weight from N(0, std), biases zero."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d | nn.ConvTranspose2d):
            with torch.no_grad():
                m.weight.normal_(0.0, std, generator=generator)
                if m.bias is not None:
                    m.bias.zero_()


def config_from_state_dict(state: dict[str, torch.Tensor], dropout: float = 0.5) -> GeneratorConfig:
    """Read a U-Net generator's shape off its state_dict (for checkpoints that carry no config)."""
    try:
        first = state["down1.model.0.weight"]  # (width, in_channels, 4, 4)
        final = state["final.2.weight"]  # (out_channels, 2 * width, 4, 4)
    except KeyError as err:
        raise ValueError(f"not a U-Net generator state_dict: missing {err.args[0]}") from None
    depth = sum(1 for k in state if k.startswith("down") and k.endswith(".model.0.weight"))
    return GeneratorConfig(
        in_channels=int(first.shape[1]),
        out_channels=int(final.shape[0]),
        width=int(first.shape[0]),
        depth=depth,
        dropout=dropout,
    )
