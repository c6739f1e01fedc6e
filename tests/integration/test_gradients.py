"""float64 finite-difference checks of the full erase and preserve steps through a tiny Flux.

Every LoRA tensor gets its own random direction; the analytic directional derivative must match the
central difference. Stock Flux blocks (in-place residuals) fail this under checkpointing; ours must not.
"""

import random

import pytest
import torch

from tests import comfy_host
from tests.integration.flux_fixtures import make_trainer, random_prompts, tiny_cfg


def _step_loss(trainer, phase):
    rng_state, gen_state = trainer.rng.getstate(), trainer.gen.get_state()
    sigma_last = trainer.sigma_last

    def loss():
        trainer.rng.setstate(rng_state)
        trainer.gen.set_state(gen_state)
        trainer.sigma_last = sigma_last
        value, _ = trainer.erase_step() if phase == "erase" else trainer.preserve_step()
        return value

    return loss


def _directional_check(loss, params, directions):
    for p in params:
        p.grad = None
    value = loss()  # terms the step backpropagated itself are in .grad already
    if value.requires_grad:
        value.backward()
    analytic = sum((p.grad * d).sum() for p, d in zip(params, directions)).item()
    eps = 1e-6
    with torch.no_grad():
        for p, d in zip(params, directions):
            p.add_(eps * d)
        up = loss().item()
        for p, d in zip(params, directions):
            p.sub_(2 * eps * d)
        down = loss().item()
        for p, d in zip(params, directions):
            p.add_(eps * d)
    numeric = (up - down) / (2 * eps)
    assert analytic == pytest.approx(numeric, rel=1e-5, abs=1e-10), (analytic, numeric)
    return analytic


def _trainer(phase, lines=1, retain=0, **cfg_changes):
    model = comfy_host.tiny_flux(seed=3, dtype=torch.float64)
    # Eq. 3 and Eq. 5 weights raised so they are not drowned by Eq. 2 / Eq. 4 in the check
    cfg = tiny_cfg(**{"lambda_attn": 0.05, "lambda_rsc": 0.5, "lambda_preserve_irrelevant": 0.3, "lambda_fm": 0.1,
                      **cfg_changes})
    prompts = random_prompts(dtype=torch.float64, lines=lines, retain=retain)
    trainer = make_trainer(model, cfg, prompts, lora_init_b=0.05)
    trainer.sigma_last = 0.6
    assert all(p.dtype == torch.float64 for p in trainer.lora.parameters())
    return trainer, _step_loss(trainer, phase)


@pytest.mark.parametrize("checkpointing", [False, True])
@pytest.mark.parametrize("phase", ["erase", "preserve"])
def test_lora_gradient_matches_finite_differences(phase, checkpointing):
    """The paper's targets (text-side q/k of every double block). One direction per parameter group
    (A and B of add_q_proj and of add_k_proj, across blocks), and every tensor must get gradient."""
    trainer, loss = _trainer(phase, gradient_checkpointing=checkpointing)
    lora = trainer.lora
    params = list(lora.parameters())
    gen = torch.Generator().manual_seed(7)
    for proj in ("add_q_proj", "add_k_proj"):
        for group in (lora.lora_A, lora.lora_B):
            members = {id(group[i]) for i, t in enumerate(lora.targets) if t.peft_name.endswith(proj)}
            directions = [torch.randn(p.shape, generator=gen, dtype=torch.float64) if id(p) in members
                          else torch.zeros_like(p) for p in params]
            assert abs(_directional_check(loss, params, directions)) > 1e-9, f"{proj} gets no gradient"
            silent = [i for i, p in enumerate(params) if id(p) in members and p.grad.abs().max() == 0]
            assert not silent, f"LoRA tensors {silent} of {proj} get no gradient"


@pytest.mark.parametrize("phase", ["erase", "preserve"])
def test_every_target_group_gradient_matches_finite_differences(phase):
    """Image-side, single-block and pooled-vector targets too: one joint direction, every tensor non-zero."""
    trainer, loss = _trainer(phase, targets=("all_attn", "vector_in"), gradient_checkpointing=True)
    params = list(trainer.lora.parameters())
    gen = torch.Generator().manual_seed(8)
    _directional_check(loss, params, [torch.randn(p.shape, generator=gen, dtype=torch.float64) for p in params])
    names = [t.peft_name for t in trainer.lora.targets]
    silent = [n for n, a, b in zip(names, trainer.lora.lora_A, trainer.lora.lora_B)
              if a.grad.abs().max() == 0 or b.grad.abs().max() == 0]
    assert not silent, f"no gradient reaches {silent}"


def test_stock_blocks_under_checkpointing_fail_the_same_check():
    """Negative control: ComfyUI's own blocks add residuals in place. Checkpointed per block, backward
    either raises or (with other wrappings) returns a wrong gradient; either way this
    check cannot pass on them, while ours pass it above."""
    from torch.utils.checkpoint import checkpoint

    # the flow-matching term alone: attention capture (Eq. 3, Eq. 5) lives in our blocks only
    trainer, loss = _trainer("preserve", lambda_rsc=0.0, lambda_preserve_irrelevant=0.0)

    def stock_double(block):
        def patch(args, extra):
            img, txt = checkpoint(lambda img, txt, vec, pe: block(img=img, txt=txt, vec=vec, pe=pe),
                                  args["img"], args["txt"], args["vec"], args["pe"], use_reentrant=False)
            return {"img": img, "txt": txt}
        return patch

    def stock_single(block):
        def patch(args, extra):
            return {"img": checkpoint(lambda x, vec, pe: block(x, vec=vec, pe=pe), args["img"], args["vec"], args["pe"],
                                      use_reentrant=False)}
        return patch

    dm = trainer.runner.diffusion_model
    trainer.runner.replacements = {**{("double_block", i): stock_double(b) for i, b in enumerate(dm.double_blocks)},
                                   **{("single_block", i): stock_single(b) for i, b in enumerate(dm.single_blocks)}}
    params = list(trainer.lora.parameters())
    gen = torch.Generator().manual_seed(7)
    with pytest.raises((AssertionError, RuntimeError), match="inplace|approx|=="):
        _directional_check(loss, params, [torch.randn(p.shape, generator=gen, dtype=torch.float64) for p in params])


@pytest.mark.parametrize("feature, orientation", [("head0", "released"), ("head0", "paper"), ("head_mean", "paper")])
def test_preserve_gradient_with_each_eq5_form_matches_finite_differences(feature, orientation):
    """The default pair (head_mean, released) is covered above; the others here."""
    trainer, loss = _trainer("preserve", rsc_feature=feature, rsc_orientation=orientation)
    params = list(trainer.lora.parameters())
    gen = torch.Generator().manual_seed(11)
    directions = [torch.randn(p.shape, generator=gen, dtype=torch.float64) for p in params]
    assert abs(_directional_check(loss, params, directions)) > 1e-9


def test_preserve_gradient_with_retain_distillation_matches_finite_differences():
    """The retain-set distillation (backpropagated inside the step, like D_ir) with Eq. 4, D_ir and Eq. 5."""
    trainer, loss = _trainer("preserve", retain=3, lambda_retain=2.0)
    assert trainer.retain is not None and trainer.retain.num_images == 3
    params = list(trainer.lora.parameters())
    gen = torch.Generator().manual_seed(12)
    directions = [torch.randn(p.shape, generator=gen, dtype=torch.float64) for p in params]
    assert abs(_directional_check(loss, params, directions)) > 1e-9
    _, values = trainer.preserve_step()
    assert values["retain"] >= 0 and {"fm", "fm_irrelevant", "rsc"} <= set(values)


def test_preserve_gradient_of_retain_distillation_alone_matches_finite_differences():
    """Without Eq. 4 and Eq. 5 the preserve step skips the concept's forward: its whole gradient is the
    distillation's own backward."""
    trainer, loss = _trainer("preserve", retain=2, lambda_retain=1.0, lambda_fm=0.0, lambda_rsc=0.0,
                             lambda_preserve_irrelevant=0.0)
    params = list(trainer.lora.parameters())
    gen = torch.Generator().manual_seed(13)
    directions = [torch.randn(p.shape, generator=gen, dtype=torch.float64) for p in params]
    assert abs(_directional_check(loss, params, directions)) > 1e-9


def test_erase_gradient_on_a_second_prompt_line_matches_finite_differences():
    """An erase step on a state of the second prompt line's trajectory, with that line's anchor and columns."""
    trainer, _ = _trainer("erase", lines=2, num_images=2)
    assert trainer.traj.prompt_idx.tolist() == [0, 1]
    trainer.rng.seed(next(s for s in range(100) if random.Random(s).randrange(2) == 1))  # draws trajectory 1
    loss = _step_loss(trainer, "erase")
    params = list(trainer.lora.parameters())
    gen = torch.Generator().manual_seed(14)
    directions = [torch.randn(p.shape, generator=gen, dtype=torch.float64) for p in params]
    assert abs(_directional_check(loss, params, directions)) > 1e-9
    assert trainer._last_probs[3] == 1

