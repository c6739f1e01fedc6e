"""Concept data: trajectories sampled once from the frozen model, so an ESD state is a lookup.

ESD evaluates its loss at a state x_t that the model itself reached by sampling the concept prompt
"until t". The released code re-sampled 28 steps for every erase step (and, through a scheduler bug,
never left the noise). We sample `num_images` trajectories once with the frozen model and keep every
state: x_t at step j is `x_t[i, j]`, evaluated at `sigmas[j]`, exactly ESD's "sample until t".
The frozen model's velocity at that state, which the sampler computed to take the step, is kept too:
it is ESD's frozen concept reference (Eq. 2) at that state, so an erase step need not recompute it.
"""

from dataclasses import dataclass
from typing import Callable

import torch


@dataclass
class Trajectories:
    x_t: torch.Tensor     # (num_images, steps, c, h, w): the state at which step j's velocity was taken
    x0: torch.Tensor      # (num_images, c, h, w): the final samples (the concept latents, D_un)
    noise: torch.Tensor   # (num_images, c, h, w): the start noise
    sigmas: torch.Tensor  # (steps + 1,): sigma of each state, ending at 0
    velocity: torch.Tensor | None = None  # (num_images, steps, c, h, w): frozen concept velocity at x_t[i, j];
                                          # None when the states are noised user latents, not sampler states
    prompt_idx: torch.Tensor | None = None  # (num_images,) int64: the prompt each trajectory was sampled with
                                            # (None: all one prompt)

    @property
    def num_images(self) -> int:
        return self.x_t.shape[0]

    @property
    def steps(self) -> int:
        return self.x_t.shape[1]


def euler_sample(velocity: Callable[[torch.Tensor, float], torch.Tensor], noise: torch.Tensor,
                 sigmas: torch.Tensor, until: int | None = None, keep_states: bool = False):
    """Integrate the rectified-flow ODE dx/dsigma = v with Euler from sigmas[0] to sigmas[until].

    noise: (b, c, h, w). x starts at sigmas[0] * noise (Flux's CONST noise scaling with an empty latent).
    Returns x at step `until` (default: the end); with keep_states also the visited states and the
    velocity taken at each.
    """
    until = len(sigmas) - 1 if until is None else until
    x = noise * sigmas[0]
    states, velocities = [], []
    for j in range(until):
        v = velocity(x, float(sigmas[j]))
        if keep_states:
            states.append(x)
            velocities.append(v)
        x = x + (sigmas[j + 1] - sigmas[j]) * v.to(x.dtype)
    return (x, states, velocities) if keep_states else x


def sample_trajectories(velocity: Callable[[torch.Tensor, float], torch.Tensor], noise: torch.Tensor,
                        sigmas: torch.Tensor, batch_size: int = 4, store_dtype=torch.float32) -> Trajectories:
    """Sample noise.shape[0] trajectories with `velocity` (frozen model, concept prompt), keeping every
    state and its velocity on the CPU in store_dtype (8 images at 512 px, 28 steps: 2 x 30 MB in bf16)."""
    states, velocities, finals = [], [], []
    for chunk in noise.split(batch_size):
        x0, visited, taken = euler_sample(velocity, chunk, sigmas, keep_states=True)
        states.append(torch.stack([s.to("cpu", store_dtype) for s in visited], dim=1))
        velocities.append(torch.stack([v.to("cpu", store_dtype) for v in taken], dim=1))
        finals.append(x0.to("cpu", store_dtype))
    return Trajectories(x_t=torch.cat(states), x0=torch.cat(finals), noise=noise.to("cpu", store_dtype),
                        sigmas=sigmas.to("cpu", torch.float32), velocity=torch.cat(velocities))


def concat(parts: list[Trajectories]) -> Trajectories:
    """Trajectories of several prompts, in order, as one set; prompt_idx says which part each came from."""
    if len(parts) == 1:
        return parts[0]
    cat = lambda name: None if getattr(parts[0], name) is None else torch.cat([getattr(p, name) for p in parts])
    prompt_idx = torch.cat([torch.full((p.num_images,), k, dtype=torch.long) for k, p in enumerate(parts)])
    return Trajectories(x_t=cat("x_t"), x0=cat("x0"), noise=cat("noise"), sigmas=parts[0].sigmas,
                        velocity=cat("velocity"), prompt_idx=prompt_idx)


def uniform_sigmas(steps: int) -> torch.Tensor:
    """steps + 1 noise levels evenly spaced from 1 to 0: states drawn from it are uniform in sigma, as the
    released code draws t ~ U[0, 1)."""
    return torch.linspace(1.0, 0.0, steps + 1)


def noised(x0: torch.Tensor, noise: torch.Tensor, sigma: float) -> torch.Tensor:
    """Rectified flow forward process: x_t = (1 - sigma) x0 + sigma noise."""
    return (1.0 - sigma) * x0 + sigma * noise


def trajectories_from_latents(x0: torch.Tensor, sigmas: torch.Tensor, generator: torch.Generator) -> Trajectories:
    """Concept latents given by the user (e.g. encoded photos) instead of sampled ones: the state at
    step j is the rectified-flow interpolation x_t = (1 - sigma_j) x0 + sigma_j noise, with one fixed
    noise per image. x0: (num_images, c, h, w) in model space."""
    noise = torch.randn(x0.shape, generator=generator, dtype=torch.float32).to(x0.dtype)
    states = torch.stack([noised(x0, noise, float(s)) for s in sigmas[:-1]], dim=1)
    return Trajectories(x_t=states, x0=x0.clone(), noise=noise, sigmas=sigmas.to(torch.float32))
