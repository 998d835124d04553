"""Captioned images of simple shapes, drawn on the fly: the toy models' whole world.

Each image holds one to three circles, squares or triangles of one colour and size, grouped at one
of five positions, on a plain background; its caption says all of that::

    >>> scenes = sample_scenes(2, seed=0)
    >>> [s.caption for s in scenes]  # doctest: +SKIP
    ['two small red circles at the top left on a blue background', ...]
    >>> images = render(scenes, size=64)  # (2, 3, 64, 64), values in [0, 1]

Which (colour, shape, background) triples appear is split once and for all: ``heldout`` triples
never occur in ``train`` draws, so a held-out caption is a combination the models never saw
(each colour, shape and background alone they did see). Draws are seeded: the attributes and
jitter come from a CPU generator, so a seed gives the same scenes on any device.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

import torch

__all__ = [
    "BACKGROUNDS",
    "COLOURS",
    "COUNTS",
    "POSITIONS",
    "SHAPES",
    "SIZES",
    "Scene",
    "captions",
    "draw",
    "prompt_order",
    "render",
    "sample_scenes",
    "vocabulary",
]

Split = Literal["train", "heldout"]

# RGB in [0, 1]. Shape colours and backgrounds share one vocabulary; a scene never paints a shape
# in its background's colour.
COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.85, 0.12, 0.12),
    "green": (0.12, 0.65, 0.2),
    "blue": (0.15, 0.3, 0.88),
    "yellow": (0.95, 0.85, 0.1),
    "purple": (0.55, 0.2, 0.7),
    "orange": (0.97, 0.55, 0.1),
    "white": (0.96, 0.96, 0.96),
    "black": (0.06, 0.06, 0.06),
    "gray": (0.5, 0.5, 0.5),
}
BACKGROUNDS = ("white", "black", "gray", "blue", "green", "yellow")
SHAPES = ("circle", "square", "triangle")
SIZES = {"small": 0.085, "large": 0.15}  # radius, as a fraction of the image side
COUNTS = {"one": 1, "two": 2, "three": 3}
POSITIONS = {  # group centre (x, y), y downwards
    "top left": (0.3, 0.3),
    "top right": (0.7, 0.3),
    "bottom left": (0.3, 0.7),
    "bottom right": (0.7, 0.7),
    "center": (0.5, 0.5),
}
MAX_OBJECTS = max(COUNTS.values())
_HELDOUT_EVERY = 6  # about one (colour, shape, background) triple in six is held out
_JITTER = 0.04  # of the image side, for the group's centre
_PLURAL = {"circle": "circles", "square": "squares", "triangle": "triangles"}


@dataclass(frozen=True)
class Scene:
    """One image's attributes; ``caption`` says them in words."""

    count: str
    size: str
    colour: str
    shape: str
    position: str
    background: str
    dx: float = 0.0  # the group's jitter, fractions of the image side
    dy: float = 0.0
    scale: float = 1.0  # size jitter

    @property
    def caption(self) -> str:
        noun = self.shape if self.count == "one" else _PLURAL[self.shape]
        where = "in the center" if self.position == "center" else f"at the {self.position}"
        scene = f"{self.count} {self.size} {self.colour} {noun} {where}"
        return f"{scene} on a {self.background} background"


@lru_cache(maxsize=1)
def _triples() -> dict[Split, tuple[tuple[str, str, str], ...]]:
    """(colour, shape, background) triples of each split; heldout ones by a fixed rule."""
    train: list[tuple[str, str, str]] = []
    heldout: list[tuple[str, str, str]] = []
    for ci, colour in enumerate(COLOURS):
        for si, shape in enumerate(SHAPES):
            for bi, background in enumerate(BACKGROUNDS):
                if colour == background:
                    continue
                held = (ci + 2 * si + 4 * bi) % _HELDOUT_EVERY == 0
                (heldout if held else train).append((colour, shape, background))
    return {"train": tuple(train), "heldout": tuple(heldout)}


def sample_scenes(n: int, *, seed: int, split: Split = "train") -> list[Scene]:
    """``n`` scenes drawn uniformly over the split's triples and every count, size and position."""
    if split not in ("train", "heldout"):
        raise ValueError(f"unknown split {split!r}; valid: train, heldout")
    triples = _triples()[split]
    g = torch.Generator().manual_seed(seed)
    picks = torch.randint(len(triples), (n,), generator=g).tolist()
    counts = torch.randint(len(COUNTS), (n,), generator=g).tolist()
    sizes = torch.randint(len(SIZES), (n,), generator=g).tolist()
    positions = torch.randint(len(POSITIONS), (n,), generator=g).tolist()
    jitter = (
        (torch.rand(n, 3, generator=g) * 2 - 1) * torch.tensor([_JITTER, _JITTER, 0.1])
    ).tolist()
    names = (list(COUNTS), list(SIZES), list(POSITIONS))
    return [
        Scene(
            count=names[0][c],
            size=names[1][s],
            colour=triples[t][0],
            shape=triples[t][1],
            position=names[2][p],
            background=triples[t][2],
            dx=j[0],
            dy=j[1],
            scale=1 + j[2],
        )
        for t, c, s, p, j in zip(picks, counts, sizes, positions, jitter, strict=True)
    ]


def _layout(scene: Scene) -> list[tuple[float, float, float]]:
    """Each object's (x, y, radius): the group around its position, kept inside the image."""
    r = SIZES[scene.size] * scene.scale
    n = COUNTS[scene.count]
    d = 1.25 * r
    offsets = {
        1: [(0.0, 0.0)],
        2: [(-d, 0.0), (d, 0.0)],
        3: [(-d, 0.6 * d), (d, 0.6 * d), (0.0, -1.1 * d)],
    }[n]
    cx, cy = POSITIONS[scene.position]
    cx, cy = cx + scene.dx, cy + scene.dy
    # Shift the whole group inwards where it would leave the image (margin of 2 px at 64 px).
    margin = r + 0.03
    xs = [cx + ox for ox, _ in offsets]
    ys = [cy + oy for _, oy in offsets]
    cx += max(0.0, margin - min(xs)) - max(0.0, max(xs) - (1 - margin))
    cy += max(0.0, margin - min(ys)) - max(0.0, max(ys) - (1 - margin))
    return [(cx + ox, cy + oy, r) for ox, oy in offsets]


def render(
    scenes: list[Scene], size: int = 64, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """Images (B, 3, size, size) in [0, 1], anti-aliased, drawn with signed distances."""
    b = len(scenes)
    # Built as lists and converted once: a training batch draws thousands of scenes a second.
    rows = []
    for scene in scenes:
        objects = [(x, y, r, 1.0) for x, y, r in _layout(scene)]
        rows.append(objects + [(0.0, 0.0, 0.0, 0.0)] * (MAX_OBJECTS - len(objects)))
    geometry = torch.tensor(rows, device=device)  # (B, K, 4): x, y, radius, present
    kind = torch.tensor([SHAPES.index(s.shape) for s in scenes], device=device)
    colour = torch.tensor([COLOURS[s.colour] for s in scenes], device=device)
    background = torch.tensor([COLOURS[s.background] for s in scenes], device=device)
    axis = (torch.arange(size, device=device, dtype=torch.float32) + 0.5) / size
    py, px = torch.meshgrid(axis, axis, indexing="ij")  # (H, W)
    dx = px - geometry[..., 0, None, None]  # (B, K, H, W)
    dy = py - geometry[..., 1, None, None]
    r = geometry[..., 2, None, None]
    circle = torch.sqrt(dx**2 + dy**2) - r
    square = torch.maximum(dx.abs(), dy.abs()) - 0.85 * r
    # An upright equilateral triangle around the centre: the largest of its three edge
    # distances (exact inside and along the edges, which is all anti-aliasing needs).
    up = -dy
    triangle = torch.maximum(-up, math.sqrt(3.0) / 2 * dx.abs() + 0.5 * up) - 0.6 * r
    distance = torch.stack([circle, square, triangle], dim=1)  # (B, 3 kinds, K, H, W)
    distance = distance[torch.arange(b, device=device), kind]  # (B, K, H, W)
    coverage = (0.5 - distance * size).clamp(0, 1) * geometry[..., 3, None, None]
    mask = 1 - torch.prod(1 - coverage, dim=1, keepdim=True)  # (B, 1, H, W)
    return background[:, :, None, None] * (1 - mask) + colour[:, :, None, None] * mask


def draw(
    n: int,
    *,
    seed: int,
    split: Split = "train",
    size: int = 64,
    device: torch.device | str = "cpu",
) -> tuple[torch.Tensor, list[str]]:
    """``n`` images and their captions: ``render(sample_scenes(...))`` in one call."""
    scenes = sample_scenes(n, seed=seed, split=split)
    return render(scenes, size, device), [s.caption for s in scenes]


def captions(split: Split) -> list[str]:
    """Every caption of a split without jitter, in a fixed order (the toy studies' prompts)."""
    out = []
    for colour, shape, background in _triples()[split]:
        for count in COUNTS:
            for size in SIZES:
                for position in POSITIONS:
                    out.append(Scene(count, size, colour, shape, position, background).caption)
    return out


@lru_cache(maxsize=2)
def prompt_order(split: Split) -> tuple[str, ...]:
    """``captions(split)`` in a fixed shuffled order: any first N mix every attribute."""
    order = captions(split)
    random.Random(f"accelopt-shapes-{split}").shuffle(order)
    return tuple(order)


def vocabulary() -> list[str]:
    """Every word a caption can use."""
    words = {"on", "a", "background", "at", "the", "in", "center"}
    for name in (*COUNTS, *SIZES, *COLOURS, *SHAPES, *_PLURAL.values(), *POSITIONS):
        words.update(name.split())
    return sorted(words)
