"""Algorithm 1 through the Runner port (eraseanything_core/runner.py), with no ComfyUI: a fake runner of
a few lines stands in for Flux, so the trainer's contract with a host is what is tested here."""

from contextlib import contextmanager

import torch
from torch import nn

from eraseanything_core.config import EraseConfig
from eraseanything_core.runner import PassCounter, TextCond
from eraseanything_core.trainer import Callbacks, train_erasure

C, D = 4, 8  # latent channels, text width


class FakeLoRA(nn.Module):
    def __init__(self):
        super().__init__()
        self.shift = nn.Parameter(torch.zeros(C))
        self.enabled = True

    @contextmanager
    def disabled(self):
        self.enabled = False
        try:
            yield
        finally:
            self.enabled = True


class FakeRunner:
    """v = (1 - sigma) x + proj(text) + LoRA shift; attention logits of every query on the concept columns
    move with the LoRA, so Eq. 3 and Eq. 5 have gradients."""
    double_blocks, latent_channels, device, dtype = 1, C, torch.device("cpu"), torch.float32

    def __init__(self):
        self.lora, self.counter, self.grad_samples = FakeLoRA(), PassCounter(), 0
        self.proj = torch.randn(D, C, generator=torch.Generator().manual_seed(0))

    def load(self):
        pass

    def sigmas(self, steps):
        return torch.linspace(1, 0, steps + 1)

    def velocity(self, x_t, sigma, conds, guidance, capture=None):
        shift = self.lora.shift if self.lora.enabled else torch.zeros(C)
        text = torch.cat([c.context.mean(1) for c in conds]) @ self.proj  # (b, C)
        n_img = -(-x_t.shape[2] // 2) * -(-x_t.shape[3] // 2)
        if capture is not None:
            for block in capture.blocks:
                capture.probs[block] = [torch.sigmoid(shift.sum() + torch.arange(c.context.shape[1] + n_img,
                                        dtype=torch.float32))[None, None, :, None].expand(1, 2, -1, len(idx)) / 10
                                        for c, idx in zip(conds, capture.key_idx)]
            if capture.stop_after is not None:
                self.counter.forwards += x_t.shape[0]
                return None
        self.counter.forwards += x_t.shape[0]
        self.grad_samples += x_t.shape[0] if torch.is_grad_enabled() else 0
        return (1 - sigma) * x_t + (text + shift)[:, :, None, None]

    def count_backward(self):
        self.counter.backwards, self.grad_samples = self.counter.backwards + self.grad_samples, 0


class FakeText:
    def encode(self, text, concept_word):
        words = text.split()
        gen = torch.Generator().manual_seed(sum(map(ord, text)))
        idx = [i for i, w in enumerate(words) if concept_word and w in concept_word.split()]
        return TextCond(text, torch.randn(1, 6, D, generator=gen), torch.randn(1, 3, generator=gen), torch.tensor(idx))

    def embed_pooled(self, texts):
        return torch.stack([torch.randn(5, generator=torch.Generator().manual_seed(sum(map(ord, t)))) for t in texts])


def _cfg(**changes):
    return EraseConfig(**{**dict(concept="cat", prompt="a cat on a mat", anchor="a dog on a mat", synonyms=("kitten",),
                                 irrelevant=("car", "tree", "sky"), steps=6, resolution=32, num_images=2,
                                 sample_steps=3, prompt_variants=2, learning_rate=0.05), **changes})


def test_erase_and_preserve_steps_run_through_the_port_and_train_the_lora():
    runner, data_events = FakeRunner(), []
    cfg = _cfg(lambda_rsc=0.1, lambda_preserve_irrelevant=1.0)
    result = train_erasure(cfg, runner, FakeText(), Callbacks(on_data=lambda *e: data_events.append(e)))
    assert [h["phase"] for h in result.history] == ["erase", "preserve"] * 3
    assert {"esd", "attn"} <= set(result.history[0])
    assert {"fm", "fm_irrelevant", "retain", "rsc"} <= set(result.history[1])
    assert runner.lora.shift.abs().sum() > 0, "the optimizer must have moved the LoRA"
    assert result.cost["backwards"] > 0 and result.cost["forward_equivalents"] > result.cost["data_forward_equivalents"]
    # data generation, counted in order: 1 batch of concept trajectories x 3 steps, the irrelevant samples'
    # 3 steps, and one batch of the 4 retain prompts (each irrelevant concept and the anchor in the prompt) x 3
    assert [e[1:] for e in data_events] == [(i, 9) for i in range(1, 10)]
    assert result.concepts.retain == ("a car on a mat", "a tree on a mat", "a sky on a mat", "a dog on a mat")


def test_same_seed_same_lora_through_the_port():
    a, b = FakeRunner(), FakeRunner()
    train_erasure(_cfg(), a, FakeText())
    train_erasure(_cfg(), b, FakeText())
    assert torch.equal(a.lora.shift, b.lora.shift)
    c = FakeRunner()
    train_erasure(_cfg(seed=1), c, FakeText())
    assert not torch.equal(a.lora.shift, c.lora.shift)


def test_previews_come_on_the_first_and_every_nth_erase_step():
    seen = []
    cb = Callbacks(on_step=lambda r: seen.append(r.step) if r.preview is not None else None, preview_every=2)
    train_erasure(_cfg(steps=12), FakeRunner(), FakeText(), cb)
    # erase steps are 1, 3, 5, 7, 9, 11 (one erase per preserve): previews on erase steps #1, #2, #4, #6
    assert seen == [1, 3, 7, 11]


def test_eq5_feature_and_orientation_options_change_the_run():
    """Every Eq. 5 form trains through the port; the two orientations give different LoRAs (the fake
    runner's heads are equal, so the features only differ on a real model)."""
    shifts = {}
    for feature in ("head0", "head_mean"):
        for orientation in ("released", "paper"):
            runner = FakeRunner()
            result = train_erasure(_cfg(lambda_rsc=0.5, rsc_feature=feature, rsc_orientation=orientation), runner,
                                   FakeText())
            assert all("rsc" in h for h in result.history if h["phase"] == "preserve")
            shifts[feature, orientation] = runner.lora.shift.detach().clone()
    assert not torch.equal(shifts["head0", "released"], shifts["head0", "paper"])


def test_each_erase_step_uses_the_anchor_of_the_line_its_state_was_sampled_with():
    """Two prompt lines with an anchor word: the frozen anchor pass of every erase step is followed by the
    LoRA pass on a rewording of the same line (words compared as sets: the augmentation shuffles them)."""
    runner, calls = FakeRunner(), []
    forward = runner.velocity

    def velocity(x_t, sigma, conds, guidance, capture=None):
        calls.append([c.text for c in conds])
        return forward(x_t, sigma, conds, guidance, capture)

    runner.velocity = velocity
    cfg = _cfg(prompt="a cat on a mat\na cat in a box", anchor=None, anchor_word="dog", steps=16, num_images=4,
               prompt_variants=8)
    result = train_erasure(cfg, runner, FakeText())
    assert result.concepts.anchors == ("a dog on a mat", "a dog in a box")
    words = lambda text: sorted(text.replace("kitten", "cat").replace("dog", "cat").split())
    erase_pairs = [(a[0], b[0]) for a, b in zip(calls, calls[1:]) if a[0] in result.concepts.anchors and len(b) == 1
                   and b[0] not in result.concepts.retain]
    assert {anchor for anchor, _ in erase_pairs} == set(result.concepts.anchors)  # both lines trained
    assert all(words(anchor) == words(variant) for anchor, variant in erase_pairs), erase_pairs
