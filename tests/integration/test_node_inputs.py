"""What a user meets at the node boundary: inputs built from EraseConfig (one home for defaults, ranges
and help), bad values refused with their exact message before any work, a model that is not a FLUX.1
named, and nothing written to models/loras."""

import math
from dataclasses import fields

import pytest
import torch

import comfy.ops
import comfy.sd
from comfy.ldm.modules.diffusionmodules.mmdit import MMDiT

from eraseanything_core.config import EraseConfig, help_of
from tests import comfy_host

CONFIG_FIELDS = {f.name for f in fields(EraseConfig)}


def _node(module: str, name: str):
    return getattr(comfy_host.import_pack_module(module), name)


def _inputs(node_cls) -> dict[str, dict]:
    schema = node_cls.GET_SCHEMA()
    return {i.id: i.as_dict() for i in schema.inputs}


@pytest.mark.parametrize("module, name", [("nodes.train", "TrainErasureLoRA"), ("nodes.options", "ErasureOptions")])
def test_node_inputs_are_the_config_fields_with_their_defaults_ranges_and_help(module, name):
    inputs = {k: v for k, v in _inputs(_node(module, name)).items() if k in CONFIG_FIELDS}
    assert len(inputs) >= 11
    for field_name, widget in inputs.items():
        meta = help_of(field_name)
        default = meta["default"]
        expected = "+".join(default) if isinstance(default, tuple) and "choices" in meta else default
        if isinstance(expected, tuple) or expected is None:
            expected = "" if not expected else expected
        assert widget.get("default") == expected, field_name
        assert widget.get("tooltip") == meta["help"], field_name
        assert widget.get("min") == meta.get("min", meta.get("gt")), field_name
        assert widget.get("max") == meta.get("max"), field_name


def _validate(node_cls, **values):
    return node_cls.validate_inputs(**values)


TRAIN_OK = dict(concept="nude", learning_rate=1e-3, lora_name="x")


@pytest.mark.parametrize("changes, message", [
    (dict(learning_rate=math.nan), "learning_rate must be a finite number, got nan."),
    (dict(learning_rate=0.0), "learning_rate must be above 0.0, got 0.0."),
    (dict(concept="🔥🔥"), "concept '🔥🔥' has no letters or digits: type the word or phrase to erase, e.g. "
                          "'fire' rather than an emoji."),
    (dict(concept=""), "concept is empty: type the word or phrase to erase, e.g. 'Van Gogh'."),
    (dict(lora_name="../escape"), "file name '../escape' contains '/', '\\\\' or ':'"),
    (dict(prompt="a nude a\na nude b", anchor="x\ny\nz", anchor_word=""),
     "anchor has 3 lines for 2 prompt lines: give one anchor prompt for all lines, or one per prompt line."),
    (dict(prompt="a nude a", anchor="a person", anchor_word="clothed"),
     "anchor and anchor_word are both set: give anchor prompts or an anchor word, not both."),
])
def test_train_node_refuses_bad_values_at_queue_time(changes, message):
    result = _validate(_node("nodes.train", "TrainErasureLoRA"), **{**TRAIN_OK, **changes})
    assert isinstance(result, str) and result.startswith(message.replace("\\\\", "\\")), result


def test_train_node_accepts_good_values_and_leaves_linked_ones_to_execution():
    node = _node("nodes.train", "TrainErasureLoRA")
    assert _validate(node, **TRAIN_OK) is True
    assert _validate(node, **{**TRAIN_OK, "concept": None}) is True  # linked: checked when the node runs


def test_options_node_offers_the_pooled_vector_target_with_the_papers():
    node = _node("nodes.options", "ErasureOptions")
    assert "txt_qk+vector_in" in _inputs(node)["targets"]["options"]
    defaults = {k: v.get("default") for k, v in _inputs(node).items()}
    options = node.execute(**{**defaults, "targets": "txt_qk+vector_in"}).args[0]
    assert EraseConfig(concept="x", **options).targets == ("txt_qk", "vector_in")


def test_options_node_refuses_a_nan_weight_at_queue_time():
    node = _node("nodes.options", "ErasureOptions")
    assert _validate(node, lambda_fm=math.nan) == "lambda_fm must be a finite number, got nan."
    assert _validate(node, eta=-1.0) == "eta must be at least 0.0, got -1.0."
    assert _validate(node, lambda_fm=0.1, eta=1.0) is True


def test_apply_refuses_non_finite_strength_at_queue_time_and_at_run_time(tiny_flux):
    node, runtime = _node("nodes.apply", "ApplyErasureLoRA"), comfy_host.import_pack_module("nodes.apply_runtime")
    assert _validate(node, strength=math.nan) == ("strength must be a finite number, got nan: 1 erases as "
                                                   "trained, 0 does nothing.")
    assert _validate(node, strength=11.0) == "strength must be between -10.0 and 10.0, got 11.0."
    assert _validate(node, strength=0.5) is True
    with pytest.raises(ValueError, match="strength must be a finite number, got inf"):
        runtime.apply(tiny_flux, runtime.FROM_INPUT, math.inf, {"state_dict": {}, "metadata": {}})


def test_inspect_refuses_words_not_in_its_prompt_at_queue_time():
    node = _node("nodes.inspect", "AttentionMapInspect")
    assert _validate(node, prompt="a red circle", words="blue", sigmas="0.5") == (
        "words: 'blue' is not in the prompt 'a red circle'. Type words that appear in the prompt "
        "(comma-separated), or leave words empty to inspect every word.")
    assert _validate(node, prompt="a red circle", words="red", sigmas="2") == (
        "sigmas: 2 is outside 0..1 (0 = clean latent, 1 = pure noise).")
    assert _validate(node, prompt="a red circle", words="red", sigmas="0.5") is True


def tiny_sd3():
    """A 2-block SD3 (ComfyUI's MMDiT, hidden 128) loaded by ComfyUI's own diffusion-model loader."""
    meta = MMDiT(input_size=None, pos_embed_scaling_factor=None, pos_embed_offset=None, pos_embed_max_size=16,
                 patch_size=2, in_channels=16, depth=2, adm_in_channels=32,
                 context_embedder_config={"target": "torch.nn.Linear", "params": {"in_features": 64, "out_features": 128}},
                 device="meta", operations=comfy.ops.disable_weight_init)
    gen = torch.Generator().manual_seed(0)
    sd = {k: torch.randn(v.shape, generator=gen) * 0.02 for k, v in meta.state_dict().items()}
    return comfy.sd.load_diffusion_model_state_dict(sd)


def test_train_refuses_a_model_that_is_not_flux_naming_it_and_writes_nothing(tiny_clip, tmp_path, monkeypatch):
    runtime = comfy_host.import_pack_module("nodes.train_runtime")
    monkeypatch.setattr(runtime.folder_paths, "get_folder_paths", lambda kind: [str(tmp_path)])
    cfg = EraseConfig(concept="nude", steps=2, resolution=32, num_images=1, irrelevant=("car", "tree", "sky"))
    with pytest.raises(TypeError) as err:
        runtime.train_in_node(tiny_sd3(), tiny_clip, cfg, "not_flux")
    assert str(err.value) == ("EraseAnything needs a FLUX.1 model (dev or schnell); got SD3 "
                              "(OpenAISignatureMMDITWrapper). Load FLUX.1-dev or FLUX.1-schnell with 'Load "
                              "Diffusion Model' or 'Load Checkpoint'.")
    assert not list(tmp_path.iterdir())


def test_a_concept_longer_than_a_concept_is_refused_before_training(tiny_flux, tiny_clip, tmp_path, monkeypatch):
    runtime = comfy_host.import_pack_module("nodes.train_runtime")
    monkeypatch.setattr(runtime.folder_paths, "get_folder_paths", lambda kind: [str(tmp_path)])
    paragraph = " ".join(["a long description of a scene with many words"] * 20)
    cfg = EraseConfig(concept=paragraph, steps=2, resolution=32, num_images=1, synonyms=("x",),
                      irrelevant=("car", "tree", "sky"))
    steps = []
    with pytest.raises(ValueError, match=r"^concept is \d+ T5 tokens long; a concept can be at most 32 \(a word"):
        runtime.flux.train(tiny_flux, runtime.ClipText(tiny_clip), cfg,
                           runtime.Callbacks(on_step=steps.append, on_data=lambda *a: steps.append(a)))
    assert not steps and not list(tmp_path.iterdir())


def test_a_flux_variant_is_named_and_refused(tiny_clip, tmp_path, monkeypatch):
    """Flux.2 and Chroma load as ComfyUI Flux classes with other blocks; their real configurations are too
    large to build here, so a tiny FLUX.1 is marked as one (ComfyUI's global_modulation flag of Flux.2)."""
    runtime = comfy_host.import_pack_module("nodes.train_runtime")
    monkeypatch.setattr(runtime.folder_paths, "get_folder_paths", lambda kind: [str(tmp_path)])
    model = comfy_host.tiny_flux(seed=0)
    monkeypatch.setattr(model.model.diffusion_model.params, "global_modulation", True, raising=False)
    cfg = EraseConfig(concept="nude", steps=2, resolution=32, num_images=1, irrelevant=("car", "tree", "sky"))
    with pytest.raises(TypeError, match=r"^EraseAnything needs a FLUX.1 model \(dev or schnell\); got Flux, a Flux "
                                        r"variant \(Flux.2, Chroma, ...\)"):
        runtime.train_in_node(model, tiny_clip, cfg, "variant")
    assert not list(tmp_path.iterdir())
