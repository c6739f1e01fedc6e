"""The judge: a small CNN that tells a demo-world picture's shape and colour (plain torch).

Trained on the generator (shapes.py) with pixel noise, so it also reads the slightly imperfect pictures
the demo Flux draws. Scores every erasure metric of the benchmark (Acc_e, Acc_ir, Acc_g).
"""

import dataclasses

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import shapes


class Judge(nn.Module):
    """images (b, 3, 32, 32) in [0, 1] -> (shape_logits (b, 4), colour_logits (b, len(COLOURS) + 1)); the
    last colour is shapes.UNNAMED, the white of a caption that names no colour."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(),
            nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU(),   # (b, 32, 16, 16)
            nn.Conv2d(32, 32, 3, stride=2, padding=1), nn.ReLU(),   # (b, 32, 8, 8)
            nn.Conv2d(32, 32, 3, stride=2, padding=1), nn.ReLU(),   # (b, 32, 4, 4)
            nn.Flatten(), nn.Linear(32 * 16, 64), nn.ReLU())
        self.shape_head = nn.Linear(64, len(shapes.SHAPES))
        self.colour_head = nn.Linear(64, len(shapes.COLOURS) + 1)

    def forward(self, images):
        h = self.features(images * 2 - 1)
        return self.shape_head(h), self.colour_head(h)

    @torch.no_grad()
    def predict(self, images) -> tuple[torch.Tensor, torch.Tensor]:
        """(shape_idx (b,), colour_idx (b,)) of images (b, 3, 32, 32) in [0, 1]."""
        shape_logits, colour_logits = self(images.clamp(0, 1))
        return shape_logits.argmax(1), colour_logits.argmax(1)


def load(path) -> Judge:
    """The judge from a safetensors file (e.g. models/demo_world/judge.safetensors), in eval mode."""
    from safetensors.torch import load_file
    judge = Judge()
    judge.load_state_dict(load_file(str(path)))
    return judge.eval()


P_WHITE = 0.2  # share of the judge's training and held-out pictures drawn white (shapes.UNNAMED_COLOUR)


def generator_batch(n: int, rng: np.random.Generator) -> shapes.Batch:
    """Generator pictures in every colour the world draws (the named ones and, for P_WHITE of them, white),
    each object at the shade of a random shape rather than its own (shapes.SHADES): the judge reads the shape
    from the outline and the colour from the hue, not either from the brightness."""
    data = shapes.whiten(shapes.sample(n, rng), torch.from_numpy(rng.random(n) < P_WHITE))
    shade = torch.tensor(shapes.SHADES)
    ratio = shade[torch.from_numpy(rng.integers(0, len(shapes.SHAPES), n))] / shade[data.shape_idx]  # (n,)
    images = torch.where(data.masks[:, None], data.images * ratio[:, None, None, None], data.images)
    return dataclasses.replace(data, images=images)


def noisy(images: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Augmentation: per-image Gaussian pixel noise with std in [0, 0.15], clamped to [0, 1]."""
    std = torch.rand((images.shape[0], 1, 1, 1), generator=gen) * 0.15
    return (images + std * torch.randn(images.shape, generator=gen)).clamp(0, 1)


def train_judge(seed: int, steps: int = 2000, batch: int = 128, on_log=None) -> Judge:
    """Adam 2e-3 with cosine decay on fresh generator batches (numpy seed `seed`, torch seed `seed`)."""
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # nn.Module initialisation; only in this training entry point
    judge = Judge()
    opt = torch.optim.Adam(judge.parameters(), lr=2e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    for step in range(steps):
        data = generator_batch(batch, rng)
        shape_logits, colour_logits = judge(noisy(data.images, gen))
        loss = F.cross_entropy(shape_logits, data.shape_idx) + F.cross_entropy(colour_logits, data.colour_idx)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if on_log is not None and (step % 100 == 0 or step == steps - 1):
            on_log(step, loss.item())
    return judge.eval()


def held_out_accuracy(judge: Judge, seed: int, n: int = 4000, noise: bool = False) -> tuple[float, float]:
    """(shape accuracy, colour accuracy) on n fresh generator images from `seed` (never a training seed)."""
    data = generator_batch(n, np.random.default_rng(seed))
    images = noisy(data.images, torch.Generator().manual_seed(seed)) if noise else data.images
    shape_idx, colour_idx = judge.predict(images)
    return ((shape_idx == data.shape_idx).float().mean().item(), (colour_idx == data.colour_idx).float().mean().item())
