"""The demo world inside the real ComfyUI: its Flux loads through ComfyUI's loader, its text encoding is
CLIPTextEncode's, its VAE works with the stock VAE nodes, and Load Demo World runs in PromptExecutor.
Nothing here needs trained weights: an untrained world is built from a seed and written to a temp dir."""

import asyncio
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from eraseanything_core.comfy import demo_world as world_model
from eraseanything_core.comfy.flux import FluxRunner
from eraseanything_core.demo_world import shapes, training

REPO = Path(__file__).resolve().parents[2]
NODE_ID = "EraseAnything_LoadDemoWorld"


@pytest.fixture(scope="module")
def world():
    return world_model.untrained_world(seed=0)


def test_flux_loads_through_comfys_loader_with_four_heads(world):
    patcher, _, _ = world
    dm = patcher.model.diffusion_model
    assert type(patcher.model).__name__ == "Flux" and patcher.model.latent_format.latent_channels == 16
    assert dm.hidden_size == 128 and dm.num_heads == 4 and dm.params.guidance_embed
    assert len(dm.double_blocks) == 2 and len(dm.single_blocks) == 2


def test_batched_encoding_equals_clip_text_encode(world):
    _, clip, _ = world
    texts = ["a red circle", "a box painted blue", ""]
    t5_ids, clip_l_ids = world_model.tokenize(clip, texts)
    context, pooled = world_model.encode(clip.cond_stage_model, t5_ids, clip_l_ids)
    for i, text in enumerate(texts):
        ref_context, ref_pooled = clip.encode_from_tokens(clip.tokenize(text), return_pooled=True)
        assert ref_context.shape == (1, world_model.T5_TOKENS, 64) and ref_pooled.shape == (1, 32)
        assert torch.allclose(context[i:i + 1], ref_context, atol=1e-6) and torch.allclose(pooled[i:i + 1], ref_pooled, atol=1e-6)


def test_trainable_t5_gives_the_same_values_and_gradients():
    clip = world_model.make_clip(seed=3)
    t5_ids, clip_l_ids = world_model.tokenize(clip, ["a green plus", "one yellow dot"])
    with torch.no_grad():
        before, _ = world_model.encode(clip.cond_stage_model, t5_ids, clip_l_ids)
    world_model.make_t5_trainable(clip.cond_stage_model)
    after, _ = world_model.encode(clip.cond_stage_model, t5_ids, clip_l_ids)
    assert torch.equal(before, after)
    after.square().sum().backward()
    grads = {n: p.grad for n, p in clip.cond_stage_model.t5xxl.named_parameters() if n != "logit_scale"}  # unused by T5
    assert all(g is not None for g in grads.values()) and grads["transformer.shared.weight"].abs().sum() > 0


def test_flow_loss_backpropagates_into_flux_and_t5():
    import numpy as np
    run = FluxRunner(world_model.load_flux(world_model.init_flux_state_dict(1)))
    run.load()
    flux = run.diffusion_model
    flux.requires_grad_(True)
    with torch.no_grad():  # the initial final layer is 0 (v = 0), which stops gradients below it
        flux.final_layer.linear.weight.normal_(0, 0.02, generator=torch.Generator().manual_seed(0))
    clip = world_model.make_clip(seed=1)
    world_model.make_t5_trainable(clip.cond_stage_model)
    table = training.TextTable.build(clip)
    rng = np.random.default_rng(0)
    batch = shapes.sample(4, rng)
    loss = training.flow_loss(run.forward, clip.cond_stage_model, table, batch.images, shapes.captions(batch, rng),
                              torch.Generator().manual_seed(0), p_pooled_true=0.1)
    loss.backward()
    assert torch.isfinite(loss) and flux.final_layer.linear.weight.grad.abs().sum() > 0
    assert flux.txt_in.weight.grad.abs().sum() > 0
    assert clip.cond_stage_model.t5xxl.transformer.shared.weight.grad.abs().sum() > 0


def test_vae_round_trips_through_comfys_vae_object(world):
    _, _, vae = world
    import numpy as np
    images = shapes.sample(2, np.random.default_rng(0)).images.permute(0, 2, 3, 1)  # (b, 32, 32, 3) as IMAGE
    latent = vae.encode(images)
    assert latent.shape == (2, 16, 16, 16)
    assert torch.allclose(vae.decode(latent), images, atol=1e-5)


@pytest.fixture(scope="module")
def executor(tmp_path_factory):
    import execution
    import folder_paths
    import nodes

    base = tmp_path_factory.mktemp("demo_world")
    for name in ("output", "temp", "weights"):
        (base / name).mkdir()
    folder_paths.set_output_directory(str(base / "output"))
    folder_paths.set_temp_directory(str(base / "temp"))
    if "EraseAnything_ApplyErasureLoRA" not in nodes.NODE_CLASS_MAPPINGS:
        assert asyncio.run(nodes.load_custom_node(str(REPO))), f"ComfyUI failed to import {REPO}"
    extras = Path(folder_paths.base_path) / "comfy_extras"
    for name in ("nodes_flux.py", "nodes_sd3.py"):  # FluxGuidance, EmptySD3LatentImage: stock extras
        if not asyncio.run(nodes.load_custom_node(str(extras / name), module_parent="comfy_extras")):
            pytest.fail(f"ComfyUI failed to import {extras / name}")
    node_cls = nodes.NODE_CLASS_MAPPINGS[NODE_ID]
    flux_sd = world_model.init_flux_state_dict(0)
    save_file(flux_sd, str(base / "weights" / world_model.FLUX_FILE))
    clip = world_model.make_clip(seed=0)
    save_file({k: v.contiguous() for k, v in clip.cond_stage_model.state_dict().items()},
              str(base / "weights" / world_model.TEXT_FILE))
    saved_dir = node_cls.WEIGHTS_DIR
    runner = execution.PromptExecutor(_Sink(), cache_args={"ram": 0.0})

    def run(prompt, weights_dir):
        node_cls.WEIGHTS_DIR = weights_dir
        valid = asyncio.run(execution.validate_prompt("p", prompt, None))
        assert valid[0], f"prompt does not validate: {valid[1]} {valid[3]}"
        runner.server.messages.clear()
        runner.execute(prompt, "p", {"client_id": "in-process"}, valid[2])
        return runner.server.messages, runner.history_result

    yield run, base
    node_cls.WEIGHTS_DIR = saved_dir


class _Sink:
    def __init__(self):
        self.client_id, self.last_node_id, self.last_prompt_id, self.messages = None, None, None, []

    def send_sync(self, event, data, sid=None):
        self.messages.append((event, data))


def _stock_workflow(seed=0):
    """Load Demo World -> CLIP Text Encode -> FluxGuidance -> KSampler -> VAE Decode -> VAE Encode/Preview."""
    return {
        "1": {"class_type": NODE_ID, "inputs": {}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": "a red circle"}},
        "3": {"class_type": "FluxGuidance", "inputs": {"conditioning": ["2", 0], "guidance": 3.5}},
        "4": {"class_type": "EmptySD3LatentImage", "inputs": {"width": 128, "height": 128, "batch_size": 2}},
        "5": {"class_type": "KSampler", "inputs": {
            "model": ["1", 0], "positive": ["3", 0], "negative": ["3", 0], "latent_image": ["4", 0], "seed": seed,
            "steps": 4, "cfg": 1.0, "sampler_name": "euler", "scheduler": "simple", "denoise": 1.0}},
        "6": {"class_type": "VAEDecode", "inputs": {"samples": ["5", 0], "vae": ["1", 2]}},
        "7": {"class_type": "VAEEncode", "inputs": {"pixels": ["6", 0], "vae": ["1", 2]}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["7", 0], "vae": ["1", 2]}},
        "9": {"class_type": "PreviewImage", "inputs": {"images": ["8", 0]}},
    }


def test_load_demo_world_runs_a_stock_sampling_workflow(executor):
    run, base = executor
    messages, history = run(_stock_workflow(), base / "weights")
    assert "execution_success" in [e for e, _ in messages], [m for m in messages if m[0] == "execution_error"]
    images = history["outputs"]["9"]["images"]
    assert len(images) == 2
    from PIL import Image
    with Image.open(base / "temp" / images[0]["subfolder"] / images[0]["filename"]) as im:
        assert im.size == (32, 32)


def test_missing_weights_say_how_to_train_them(executor, tmp_path):
    run, _ = executor
    messages, _ = run(_stock_workflow(seed=1), tmp_path / "nowhere")
    errors = [d for e, d in messages if e == "execution_error"]
    assert errors and "train_demo_world.py" in errors[0]["exception_message"], errors


def test_latent_previews_show_the_worlds_colours():
    """The world's latent format turns a model-space latent into its picture's 2x2-averaged colours, so
    ComfyUI's latent previews and the Train node's attention preview show what the world draws."""
    import numpy as np
    from eraseanything_core.demo_world.vae import pixels_to_model_space
    from tests import comfy_host
    visual = comfy_host.import_pack_module("nodes.visual")
    gen = torch.Generator().manual_seed(0)
    image = torch.rand((1, 3, 32, 32), generator=gen)  # [0, 1]
    x0 = pixels_to_model_space(image * 2 - 1)[0]
    picture = visual.latent_picture(x0, world_model.DemoWorldLatent())
    expected = torch.nn.functional.avg_pool2d(image, 2)[0].permute(1, 2, 0).mul(255)
    assert picture.size == (16, 16)
    assert np.abs(np.asarray(picture, dtype=np.float32) - expected.numpy()).max() <= 1.0
    patcher, _, _ = world_model.untrained_world(seed=0)
    assert isinstance(patcher.model.latent_format, world_model.DemoWorldLatent)
