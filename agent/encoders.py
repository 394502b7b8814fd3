"""Observation encoders: uint8 [N, *obs_shape] observations -> float [N, hidden] features.

``nature``: the Nature DQN CNN (Mnih et al. 2015), the CPU default.
``resnet``: the IMPALA deep ResNet (Espeholt et al. 2018): three stages of 16, 32, 32 channels,
each conv 3x3 -> max-pool 3x3/2 -> two residual blocks, then FC to ``hidden``. About 5-10x the
Nature CNN's cost on a CPU; meant for GPUs. Both run in channels_last memory layout, which is
measurably faster for convolutions on CPU. Both read 4 x 84 x 84 frame stacks (Atari, the
DMLab-style memory tasks).
``mlp``: small observations (the T-maze's 1 x (K + 2) indicators): flattened, then two
Linear-ReLU layers to ``hidden``. Values are read as they are (0/1 indicators, no / 255).

Which encoder reads which games is checked by :func:`check_encoder` (frames for the CNNs, at most
:data:`MLP_MAX_INPUTS` values for the MLP; one shape for the whole schedule).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from common.errors import UserError
from envs.atari import OBS_SHAPE
from envs.registry import observation_shape

ENCODERS = ("nature", "resnet", "mlp")
MLP_MAX_INPUTS = 1024
"""Most values per observation that ``mlp`` takes (it is meant for small, symbolic observations)."""


class NatureCNN(nn.Module):
    def __init__(self, in_channels: int = 4, hidden: int = 256):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(in_channels, 32, 8, stride=4), nn.ReLU(),
            nn.Conv2d(32, 64, 4, stride=2), nn.ReLU(),
            nn.Conv2d(64, 64, 3, stride=1), nn.ReLU(),
            nn.Flatten(),
            nn.Linear(64 * 7 * 7, hidden), nn.ReLU(),
        )

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        """frames: uint8 [N, C, 84, 84] -> [N, hidden]."""
        x = frames.float().div_(255.0).contiguous(memory_format=torch.channels_last)
        return self.net(x)


class _ResidualBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv0 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv1(torch.relu(self.conv0(torch.relu(x))))


class ImpalaResNet(nn.Module):
    def __init__(self, in_channels: int = 4, hidden: int = 256, channels: tuple[int, ...] = (16, 32, 32)):
        super().__init__()
        stages = []
        for out in channels:
            stages += [nn.Conv2d(in_channels, out, 3, padding=1), nn.MaxPool2d(3, stride=2, padding=1),
                       _ResidualBlock(out), _ResidualBlock(out)]
            in_channels = out
        self.stages = nn.Sequential(*stages)
        self.fc = nn.Linear(channels[-1] * 11 * 11, hidden)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        """frames: uint8 [N, C, 84, 84] -> [N, hidden]."""
        x = frames.float().div_(255.0).contiguous(memory_format=torch.channels_last)
        x = torch.relu(self.stages(x))
        return torch.relu(self.fc(x.flatten(1)))


class MLP(nn.Module):
    def __init__(self, in_features: int, hidden: int = 256):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(in_features, hidden), nn.ReLU(),
                                 nn.Linear(hidden, hidden), nn.ReLU())

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        """obs: uint8 [N, *obs_shape] with prod(obs_shape) = in_features -> [N, hidden]."""
        return self.net(obs.float())


def make_encoder(name: str, hidden: int, obs_shape: tuple[int, ...] = OBS_SHAPE) -> nn.Module:
    """The encoder called ``name`` for uint8 observations of ``obs_shape`` per sample (the CNNs in channels_last)."""
    if name == "mlp":
        return MLP(math.prod(obs_shape), hidden)
    cls = {"nature": NatureCNN, "resnet": ImpalaResNet}[name]
    return cls(obs_shape[0], hidden).to(memory_format=torch.channels_last)


def check_encoder(name: str, games: list[str]) -> tuple[int, ...]:
    """The observation shape that encoder ``name`` reads in every game of ``games``; UserError if it cannot.

    The games of one run share the encoder, so they must share one observation shape; ``nature``
    and ``resnet`` read 4 x 84 x 84 frames, ``mlp`` at most :data:`MLP_MAX_INPUTS` values.
    """
    shapes = {g: observation_shape(g) for g in dict.fromkeys(games)}
    if len(set(shapes.values())) > 1:
        listed = ", ".join(f"{g} {_shape(s)}" for g, s in shapes.items())
        raise UserError(f"the games of a run share one encoder, so one observation shape; got {listed}")
    game, shape = next(iter(shapes.items()))
    if name == "mlp" and math.prod(shape) > MLP_MAX_INPUTS:
        raise UserError(f"--encoder mlp reads small observations (at most {MLP_MAX_INPUTS} values, e.g. tmaze-D); "
                        f"{game}'s are {_shape(shape)}: use --encoder nature or resnet")
    if name in ("nature", "resnet") and shape != OBS_SHAPE:
        raise UserError(f"--encoder {name} reads {_shape(OBS_SHAPE)} frames; {game}'s observations are "
                        f"{_shape(shape)}: use --encoder mlp")
    return shape


def _shape(shape: tuple[int, ...]) -> str:
    return " x ".join(map(str, shape))
