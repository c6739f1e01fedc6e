"""The demo world's pictures: coloured shapes on a plain background, their masks and their captions.

Plain numpy/torch, no host. Everything is drawn from one `numpy.random.Generator`, so a seed fixes the
images, the masks and the captions. A 32x32 image has one shape (circle, square, triangle, cross) in one
colour (times the shape's shade: SHADES) at a random size and a position near the centre on a dark grey
background. Every shape has one or two synonyms ("disc", "box", ...) that the captions use as often as the
name itself, so an erasure can be scored on words the model knows for the same thing (the paper's generality
metric, Acc_g).
"""

import dataclasses
import re
from dataclasses import dataclass

import numpy as np
import torch

SIZE = 32
SHAPES = ("circle", "square", "triangle", "cross")
SYNONYMS = {"circle": ("disc", "dot"), "square": ("box", "block"), "triangle": ("wedge", "delta"), "cross": ("plus",)}
COLOURS = {"red": (0.90, 0.15, 0.15), "green": (0.15, 0.80, 0.20), "blue": (0.20, 0.35, 0.95),
           "yellow": (0.95, 0.85, 0.10)}
COLOUR_NAMES = tuple(COLOURS)
# The colour of an object whose caption names none ("a circle", "a shape"): a colour no word names, so that
# a prompt with its colour word removed has one answer. With a random named colour there instead, erasing
# "red" by removing the word brought red back for 16-22% of prompts, and pulling it toward "blue" broke the
# objects where the T5 is local (docs/demo_world.md, "The anchor, not the depth").
UNNAMED_COLOUR = (0.90, 0.90, 0.90)
UNNAMED = len(COLOURS)  # its colour_idx
# Each shape's brightness: an object is drawn in its colour times its shape's shade. With flat colours a shape
# word decides only the outline, and the image tokens read it on the object's edge and around it, not inside
# (docs/demo_world.md, "v4: a shade per shape"); with a shade per shape every pixel of the object depends on
# the shape word, as it does on the colour word. The judge learns shades independent of the shape
# (judge.generator_batch), so it reads the shape from the outline and the colour from the hue.
SHADES = (1.0, 0.75, 0.55, 0.4)  # in SHAPES order
BACKGROUND = (0.15, 0.15, 0.15)
# Where and how big. Shapes anywhere in the picture (centres over the whole frame) left the tiny Flux
# drawing blobs whose shape it chose at chance: averaged over all positions, every shape's conditional
# mean is the same blob, so the shape word barely moves the prediction at high noise and the layout is
# left to the noise (docs/demo_world.md). Centres within a few pixels of the middle keep the position
# random but let each shape word mean a distinct layout, as a colour word means a distinct colour.
# One size for every shape (half-extent 9.5-10.5 px), and a square as wide as the circle: with sizes
# 8-12 px and the square at 0.85 of the circle's half-extent, circles and squares differed by two pixels
# at the corners, and the first world drew them right 73% and 65% of the time (docs/demo_world.md).
HALF_EXTENT = (9.5, 10.5)
CENTRE_JITTER = 3.0

# {c} colour word, {s} shape word. Full captions name both; partial ones name one or none, so "a shape"
# and "a red shape" mean something (an anchor that does not depict a given shape, Acc_e's floor).
FULL_TEMPLATES = ("a {c} {s}", "a {s} painted {c}", "a {c} {s} on a plain background", "{c} {s}",
                  "a picture of a {c} {s}", "the {s} is {c}", "one {c} {s}", "a drawing of a {c} {s}",
                  "this is a {c} {s}", "a {s} that is {c}", "the {c} {s}", "a {s} in {c}")
# A picture on a coloured background {b} (never the object's colour) always names it, so that drawing it right
# needs the object's image tokens to read the object's colour word and the background's the other one. Tried
# for the colour maps (train_demo_world.py --p-background 0.25) and not used: it drew worse and the maps did
# not localise (docs/demo_world.md). Its captions stay in all_captions(): the committed world's training drew
# its swapped pooled vectors from that set.
BACKGROUND_TEMPLATES = ("a {c} {s} on a {b} background", "a {c} {s} on {b}", "a {s} painted {c} on a {b} background")
# Words a caption may start or end with that say nothing about the picture, so that unseen words around a
# prompt ("look, a red circle") do not throw the drawing. None of them is in the benchmark's held-out
# templates (erasure_quality.HELDOUT_TEMPLATES), and none names a shape, colour or size.
FILLERS = ("wow", "see", "now", "today", "simple", "nice", "new", "just", "only", "very", "flat", "neat",
           "cool", "great", "my", "hey", "oh", "okay", "well", "so", "yes", "please", "sharp", "done")
FILLER_FORMS = ("{w}, {t}", "{w} {t}", "{t}, {w}", "{t} {w}")
SHAPE_TEMPLATES = ("a {s}", "a picture of a {s}", "one {s}")
COLOUR_TEMPLATES = ("a {c} shape", "something {c}")
NEUTRAL_CAPTIONS = ("a shape", "")


def shape_words(shape: str) -> tuple[str, ...]:
    """The name and its synonyms, name first."""
    return (shape,) + SYNONYMS[shape]


@dataclass
class Batch:
    """images (n, 3, 32, 32) float32 in [0, 1]; masks (n, 32, 32) bool; shape_idx, colour_idx (n,) int64
    (colour_idx UNNAMED: white); background_idx (n,) int64: -1 for the plain grey BACKGROUND, else the index
    of the background's colour."""
    images: torch.Tensor
    masks: torch.Tensor
    shape_idx: torch.Tensor
    colour_idx: torch.Tensor
    background_idx: torch.Tensor


def shape_mask(shape: str, cy: float, cx: float, r: float, size: int = SIZE) -> np.ndarray:
    """(size, size) bool mask of one shape with centre (cy, cx) and half-extent r, in pixels."""
    # A shape word's map goes where the word decides the picture. v4's triangle (rows cy - r to cy + 0.8 r)
    # left a band under its base that every other shape fills, and its word's map peaked on that band of
    # background (raw mIoU 0.215); v4's cross (arms 0.7 r wide, reaching r) had almost no token wholly inside
    # it (0.299). Now the triangle's base is on the others' bottom row and it reaches past them (apex, base
    # corners); the cross's arms are 0.9 r wide and reach 1.1 r, past the square, so its corner notches stay
    # 0.65 r wide: with arms 1.0 r wide reaching r, the world got 37.5% of cross prompts wrong (docs/demo_world.md,
    # "v5").
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    dy, dx = y - cy, x - cx
    if shape == "circle":
        return dy * dy + dx * dx <= r * r
    if shape == "square":
        return (np.abs(dy) <= r) & (np.abs(dx) <= r)  # the circle's bounding box: corners 0.41 r beyond it
    if shape == "triangle":  # apex up; rows cy - 1.1 r (apex) to cy + r (base, width 2.2 r)
        top, bottom = cy - 1.1 * r, cy + r
        half_width = (y - top) / (bottom - top) * 1.1 * r
        return (y >= top) & (y <= bottom) & (np.abs(dx) <= half_width)
    if shape == "cross":
        arm, reach = 0.45 * r, 1.1 * r
        return ((np.abs(dx) <= arm) & (np.abs(dy) <= reach)) | ((np.abs(dy) <= arm) & (np.abs(dx) <= reach))
    raise ValueError(f"shape: unknown shape {shape!r}; use one of {SHAPES}")


def draw(shape_idx, colour_idx, rng: np.random.Generator, size: int = SIZE, background_idx=None) -> Batch:
    """Draw one image per (shape, colour) pair at a random size (half-extent HALF_EXTENT px) and a
    random position (centre within CENTRE_JITTER px of the image's centre on each axis), on the plain
    background or, where background_idx >= 0, on that colour."""
    shape_idx = np.asarray(shape_idx, dtype=np.int64)
    colour_idx = np.asarray(colour_idx, dtype=np.int64)
    n = len(shape_idx)
    background_idx = np.full(n, -1, dtype=np.int64) if background_idx is None else np.asarray(background_idx, dtype=np.int64)
    r = rng.uniform(*HALF_EXTENT, n)
    cy = size / 2 + rng.uniform(-CENTRE_JITTER, CENTRE_JITTER, n)
    cx = size / 2 + rng.uniform(-CENTRE_JITTER, CENTRE_JITTER, n)
    masks = np.stack([shape_mask(SHAPES[s], cy[i], cx[i], r[i], size) for i, s in enumerate(shape_idx)])
    colours = np.array([COLOURS[COLOUR_NAMES[c]] for c in colour_idx], dtype=np.float32)  # (n, 3)
    colours = colours * np.array(SHADES, dtype=np.float32)[shape_idx][:, None]
    palette = np.array([COLOURS[c] for c in COLOUR_NAMES] + [BACKGROUND], dtype=np.float32)  # index -1: plain
    backgrounds = palette[background_idx]  # (n, 3)
    images = np.where(masks[:, None], colours[:, :, None, None], backgrounds[:, :, None, None])
    return Batch(torch.from_numpy(images.astype(np.float32)), torch.from_numpy(masks),
                 torch.from_numpy(shape_idx), torch.from_numpy(colour_idx), torch.from_numpy(background_idx))


def whiten(batch: Batch, which: torch.Tensor) -> Batch:
    """The batch with the objects where `which` (n,) bool is set redrawn in UNNAMED_COLOUR (at their shade)."""
    white = torch.tensor(UNNAMED_COLOUR)[None, :, None, None] * torch.tensor(SHADES)[batch.shape_idx][:, None, None, None]
    images = torch.where(which[:, None, None, None] & batch.masks[:, None], white, batch.images)
    return dataclasses.replace(batch, images=images, colour_idx=torch.where(which, UNNAMED, batch.colour_idx))


def names_colour(text: str) -> bool:
    return any(word in COLOURS for word in re.findall(r"[a-z]+", text))


def sample(n: int, rng: np.random.Generator, p_background: float = 0.0) -> Batch:
    """n images with uniformly random shapes and colours; with probability p_background on a background
    of another colour (no extra random draws when p_background is 0)."""
    shape_idx, colour_idx = rng.integers(0, len(SHAPES), n), rng.integers(0, len(COLOURS), n)
    background_idx = None
    if p_background > 0:
        # a uniformly random colour other than the object's: shift by 1..len-1
        other = (colour_idx + rng.integers(1, len(COLOURS), n)) % len(COLOURS)
        background_idx = np.where(rng.random(n) < p_background, other, -1)
    return draw(shape_idx, colour_idx, rng, background_idx=background_idx)


def caption(shape: str, colour: str, rng: np.random.Generator, p_partial: float = 0.0,
            background: str | None = None, p_filler: float = 0.0) -> str:
    """A caption for a (shape, colour) image: a random full template with the name or a synonym (each
    word of the shape equally likely). With probability p_partial: a caption that leaves out the
    colour, the shape or both (split 0.4 / 0.4 / 0.2). A picture on a coloured `background` always gets a
    full caption that names it. With probability p_filler a full caption gets a FILLERS word before or
    after it (no extra random draws when p_filler is 0)."""
    words = shape_words(shape)
    s = words[rng.integers(len(words))]
    if background is not None:
        return _with_filler(BACKGROUND_TEMPLATES[rng.integers(len(BACKGROUND_TEMPLATES))].format(
            c=colour, s=s, b=background), rng, p_filler)
    if rng.random() < p_partial:
        u = rng.random()
        if u < 0.4:
            return SHAPE_TEMPLATES[rng.integers(len(SHAPE_TEMPLATES))].format(s=s)
        if u < 0.8:
            return COLOUR_TEMPLATES[rng.integers(len(COLOUR_TEMPLATES))].format(c=colour)
        return NEUTRAL_CAPTIONS[rng.integers(len(NEUTRAL_CAPTIONS))]
    return _with_filler(FULL_TEMPLATES[rng.integers(len(FULL_TEMPLATES))].format(c=colour, s=s), rng, p_filler)


def _with_filler(text: str, rng: np.random.Generator, p_filler: float) -> str:
    if p_filler <= 0 or rng.random() >= p_filler:
        return text
    form = FILLER_FORMS[rng.integers(len(FILLER_FORMS))]
    return form.format(w=FILLERS[rng.integers(len(FILLERS))], t=text)


def captions(batch: Batch, rng: np.random.Generator, p_partial: float = 0.0, p_filler: float = 0.0) -> list[str]:
    """A caption per picture of a batch of named colours (shapes.sample); training then draws the objects of
    captions that name no colour white (whiten)."""
    return [caption(SHAPES[s], COLOUR_NAMES[c], rng, p_partial, None if b < 0 else COLOUR_NAMES[b], p_filler)
            for s, c, b in zip(batch.shape_idx.tolist(), batch.colour_idx.tolist(), batch.background_idx.tolist())]


def all_captions() -> list[str]:
    """Every caption the generator can write without a filler word, sorted (a closed set: 967 strings;
    with fillers there are 96 times as many full captions, which training.TextTable encodes when met)."""
    out = set(NEUTRAL_CAPTIONS)
    for shape in SHAPES:
        for s in shape_words(shape):
            out.update(t.format(s=s) for t in SHAPE_TEMPLATES)
            for c in COLOUR_NAMES:
                out.update(t.format(c=c, s=s) for t in FULL_TEMPLATES)
                out.update(t.format(c=c, s=s, b=b) for t in BACKGROUND_TEMPLATES for b in COLOUR_NAMES if b != c)
    for c in COLOUR_NAMES:
        out.update(t.format(c=c) for t in COLOUR_TEMPLATES)
    return sorted(out)
