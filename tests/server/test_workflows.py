"""The example workflows against the live server: their API twins (tests/workflows/*.api.json) are what
the UI files convert to, and validate against /object_info; tiny-model variants of them run.

FLUX.1-dev's files (flux1-dev.safetensors, t5xxl_fp16, clip_l, ae) are not on test machines, so POST /prompt
of the real twins must fail, and only on those file names: the server still checks every other node,
value and link in the same request. ComfyUI 0.3.75 does not check V3 COMBO values (ours), so the
twins are also checked against /object_info here. The runnable variants swap the loaders for
EATest_TinyFluxLoader and drop what needs the VAE (VAELoader and everything downstream of it). The demo
world's example needs no files the pack does not ship, so it runs unchanged, and the world's judge reads
the pictures it saves.
"""

import copy
import json
import logging
import math
import time
from pathlib import Path

import pytest

from tests.server.test_server import assert_succeeded, tree_snapshot
from tests.workflows.ui_to_api import is_widget, ui_to_api

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = REPO_ROOT / "example_workflows"
TWINS = REPO_ROOT / "tests" / "workflows"
FLUX_NAMES = ("erase_a_concept_from_FLUX.1-dev_with_before-after_images_and_attention_maps", "apply_a_shared_erasure_LoRA_to_FLUX.1-dev")  # need FLUX.1-dev's files
DEMO = "demo_world_erase_red_on_any_CPU_with_nothing_to_download"  # runs as it is: the demo world ships with the pack
NAMES = FLUX_NAMES + (DEMO,)
TRAIN, APPLY = "EraseAnything_TrainErasureLoRA", "EraseAnything_ApplyErasureLoRA"
# Inputs that name model files; their values are the files the workflow expects the user to have.
MODEL_FILE_INPUTS = {("UNETLoader", "unet_name"), ("DualCLIPLoader", "clip_name1"), ("DualCLIPLoader", "clip_name2"),
                     ("VAELoader", "vae_name"), (APPLY, "lora_name")}
TINY_TRAIN = {"steps": 6, "resolution": 64, "num_images": 1, "rank": 4,
              # Named synonyms and irrelevant concepts skip the automatic picks (vocabulary ranking).
              "synonyms": "Vincent van Gogh", "irrelevant": "ice cream\nrainbow\nbookshelf"}
LOSS_TERMS = {"erase": {"esd", "attn", "total"}, "preserve": {"retain", "total"}}  # the defaults


def ui_workflow(name: str) -> dict:
    return json.loads((EXAMPLES / f"{name}.json").read_text(encoding="utf-8"))


def api_twin(name: str) -> dict:
    return json.loads((TWINS / f"{name}.api.json").read_text(encoding="utf-8"))


def node_ids(prompt: dict, class_type: str) -> list[str]:
    return sorted((i for i, n in prompt.items() if n["class_type"] == class_type), key=int)


@pytest.fixture(scope="module")
def object_info(comfy_server) -> dict:
    return comfy_server.get("/object_info").json()


def test_example_workflows_are_consistent_ui_files():
    """Every link is recorded at both ends with the source output's type, and every node has a size."""
    assert sorted(p.stem for p in EXAMPLES.glob("*.json")) == sorted(NAMES)
    for name in NAMES:
        wf = ui_workflow(name)
        nodes = {n["id"]: n for n in wf["nodes"]}
        for node in wf["nodes"]:
            assert len(node.get("size", [])) == 2, f"{name}: node {node['id']} has no size (the frontend rejects it)"
        for link_id, src, src_slot, dst, dst_slot, kind in wf["links"]:
            assert nodes[dst]["inputs"][dst_slot]["link"] == link_id, f"{name}: link {link_id} not on its input"
            assert link_id in nodes[src]["outputs"][src_slot]["links"], f"{name}: link {link_id} not on its output"
            assert kind in (nodes[src]["outputs"][src_slot]["type"], "*"), f"{name}: link {link_id} type {kind}"
        linked = [i["link"] for n in wf["nodes"] for i in n.get("inputs", []) if i.get("link") is not None]
        assert sorted(linked) == sorted(link[0] for link in wf["links"]), f"{name}: dangling input links"
        assert wf["last_node_id"] >= max(nodes) and wf["last_link_id"] >= max(link[0] for link in wf["links"])


@pytest.mark.parametrize("name", NAMES)
def test_api_twin_is_the_ui_workflow_converted(object_info, name):
    converted = ui_to_api(ui_workflow(name), object_info)
    assert converted == api_twin(name), (
        f"tests/workflows/{name}.api.json is out of date with example_workflows/{name}.json; regenerate it with "
        f"tests/workflows/ui_to_api.py example_workflows/{name}.json --object-info <server> -o <twin>")


def _link_problem(prompt, value, spec, object_info) -> str | None:
    src_id, slot = value
    if src_id not in prompt:
        return f"links to missing node {src_id}"
    outputs = object_info[prompt[src_id]["class_type"]]["output"]
    if not 0 <= slot < len(outputs):
        return f"links to output {slot} of {src_id}, which has {len(outputs)} outputs"
    accepted = "COMBO" if isinstance(spec[0], list) else spec[0]
    got = outputs[slot]
    if "*" in (accepted, got) or got in accepted.split(",") or (is_widget(spec) and got in ("STRING", "COMBO")):
        return None
    return f"gets {got} from {src_id}:{slot} but takes {accepted}"


def _value_problem(class_type, name, value, spec) -> str | None:
    kind, opts = spec[0], (spec[1] if len(spec) > 1 else {})
    if isinstance(kind, list) or kind == "COMBO":
        options = kind if isinstance(kind, list) else opts.get("options", [])
        if (class_type, name) in MODEL_FILE_INPUTS:
            return None if isinstance(value, str) and value.endswith(".safetensors") else f"{value!r} is not a file name"
        return None if value in options else f"{value!r} not in {options}"
    checks = {"INT": lambda v: isinstance(v, int) and not isinstance(v, bool),
              "FLOAT": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v),
              "BOOLEAN": lambda v: isinstance(v, bool), "STRING": lambda v: isinstance(v, str)}
    if not checks.get(kind, lambda v: True)(value):
        return f"{value!r} is not a {kind}"
    if kind in ("INT", "FLOAT") and not opts.get("min", -math.inf) <= value <= opts.get("max", math.inf):
        return f"{value} outside [{opts.get('min')}, {opts.get('max')}]"
    return None


def prompt_problems(prompt: dict, object_info: dict) -> list[str]:
    """Node types, input names, required inputs, link types and widget values, against /object_info."""
    problems = []
    for node_id, node in prompt.items():
        info = object_info.get(node["class_type"])
        if info is None:
            problems.append(f"{node_id}: unknown node type {node['class_type']}")
            continue
        declared = {**info["input"].get("required", {}), **info["input"].get("optional", {})}
        missing = set(info["input"].get("required", {})) - set(node["inputs"])
        unknown = set(node["inputs"]) - set(declared)
        problems += [f"{node_id} {node['class_type']}: required input {m!r} missing" for m in sorted(missing)]
        problems += [f"{node_id} {node['class_type']}: unknown input {u!r}" for u in sorted(unknown)]
        for input_name, value in node["inputs"].items():
            if input_name not in declared:
                continue
            spec = declared[input_name]
            problem = (_link_problem(prompt, value, spec, object_info) if isinstance(value, list)
                       else _value_problem(node["class_type"], input_name, value, spec))
            if problem:
                problems.append(f"{node_id} {node['class_type']}.{input_name}: {problem}")
    if not any(object_info[n["class_type"]]["output_node"] for n in prompt.values() if n["class_type"] in object_info):
        problems.append("no output node")
    return problems


@pytest.mark.parametrize("name", NAMES)
def test_api_twin_matches_object_info(object_info, name):
    problems = prompt_problems(api_twin(name), object_info)
    assert not problems, "\n".join(problems)


def test_object_info_check_finds_each_kind_of_mistake(object_info):
    """Positive control for the check above (ComfyUI 0.3.75 itself would let the COMBO one through)."""
    prompt = api_twin("erase_a_concept_from_FLUX.1-dev_with_before-after_images_and_attention_maps")
    (train,), (inspect, _) = node_ids(prompt, TRAIN), node_ids(prompt, "EraseAnything_AttentionMapInspect")
    (sampler, _) = node_ids(prompt, "KSampler")
    prompt[inspect]["inputs"]["head_reduction"] = "median"             # not a COMBO option
    prompt[train]["inputs"]["steps"] = 0                                # below min
    prompt[train]["inputs"]["no_such_input"] = 1                        # unknown input
    del prompt[train]["inputs"]["concept"]                              # required input missing
    prompt[sampler]["inputs"]["positive"] = prompt[sampler]["inputs"]["latent_image"]  # LATENT into CONDITIONING
    problems = "\n".join(prompt_problems(prompt, object_info))
    for expected in ("'median' not in", "steps: 0 outside", "unknown input 'no_such_input'",
                     "required input 'concept' missing", "gets LATENT"):
        assert expected in problems, f"{expected!r} not reported; got:\n{problems}"


@pytest.mark.parametrize("name", FLUX_NAMES)
def test_server_validation_fails_only_on_missing_flux_files(comfy_server, name):
    prompt = api_twin(name)
    reply = comfy_server.post("/prompt", json={"prompt": prompt, "client_id": comfy_server.client_id})
    assert reply.status_code == 400, f"expected a validation error for missing model files, got {reply.status_code}: " \
                                     f"{reply.text[:500]}"
    errors = [(node_id, node["class_type"], e) for node_id, node in reply.json()["node_errors"].items()
              for e in node["errors"]]
    other = [(i, c, e["type"], e["details"]) for i, c, e in errors
             if e["type"] != "value_not_in_list" or (c, e["extra_info"]["input_name"]) not in MODEL_FILE_INPUTS]
    assert not other, f"{name}: the server rejects more than the missing model files: {other}"
    complained = {(c, e["extra_info"]["input_name"]) for _, c, e in errors}
    expected = {(n["class_type"], k) for n in prompt.values() for k in n["inputs"]
                if (n["class_type"], k) in MODEL_FILE_INPUTS and n["class_type"] != APPLY}
    assert complained == expected, f"{name}: missing-file errors for {complained}, expected {expected}"


def tiny_variant(prompt: dict, changes: dict[str, dict]) -> dict:
    """The prompt on the tiny Flux: UNETLoader -> EATest_TinyFluxLoader (model and clip), DualCLIPLoader
    removed, VAELoader and everything downstream of it removed; then `changes` {node id: {input: value}}."""
    prompt = copy.deepcopy(prompt)
    (unet,), (clip,) = node_ids(prompt, "UNETLoader"), node_ids(prompt, "DualCLIPLoader")
    prompt[unet] = {"class_type": "EATest_TinyFluxLoader", "inputs": {"seed": 0}, "_meta": {"title": "Tiny Flux"}}
    del prompt[clip]
    for node in prompt.values():
        for key, value in node["inputs"].items():
            if value == [clip, 0]:
                node["inputs"][key] = [unet, 1]
    dropped = set(node_ids(prompt, "VAELoader"))
    while True:
        more = {i for i, n in prompt.items() if i not in dropped
                and any(isinstance(v, list) and v[0] in dropped for v in n["inputs"].values())}
        if not more:
            break
        dropped |= more
    for node_id in dropped:
        del prompt[node_id]
    for node_id, inputs in changes.items():
        assert set(inputs) <= set(prompt[node_id]["inputs"]), f"node {node_id} has no inputs {set(inputs)}"
        prompt[node_id]["inputs"].update(inputs)
    return prompt


@pytest.fixture(scope="module")
def tiny_training_run(comfy_server):
    """The erase example on the tiny Flux: train 6 steps, sample before/after, inspect both."""
    prompt = api_twin("erase_a_concept_from_FLUX.1-dev_with_before-after_images_and_attention_maps")
    (train,) = node_ids(prompt, TRAIN)
    changes = {train: {**TINY_TRAIN, "lora_name": "server_example_van_gogh"}}
    changes.update({i: {"width": 64, "height": 64} for i in node_ids(prompt, "EmptySD3LatentImage")})
    changes.update({i: {"steps": 2} for i in node_ids(prompt, "KSampler")})
    tiny = tiny_variant(prompt, changes)
    before = tree_snapshot(comfy_server.loras_dir)
    started = time.monotonic()
    messages = comfy_server.run(tiny, timeout=400)
    logger.info("tiny erase workflow ran in %.1f s: %d JSON messages, %d binary frames",
                time.monotonic() - started, len(messages), messages.binary_frames)
    new_files = sorted(tree_snapshot(comfy_server.loras_dir) - before)
    return tiny, train, messages, new_files


def test_tiny_erase_workflow_streams_losses_in_step_order_then_outputs(tiny_training_run):
    prompt, train, messages, new_files = tiny_training_run
    assert_succeeded(messages)
    kinds = [m["type"] for m in messages]
    loss_at = [i for i, k in enumerate(kinds) if k == "eraseanything.loss"]
    losses = [messages[i]["data"] for i in loss_at]
    steps = TINY_TRAIN["steps"]
    assert [d["step"] for d in losses] == list(range(1, steps + 1)), f"loss events out of order: {losses}"
    assert {d["node"] for d in losses} == {train} and {d["total"] for d in losses} == {steps}
    assert [d["phase"] for d in losses] == ["erase", "preserve"] * (steps // 2)  # erase_steps_per_preserve = 1
    for d in losses:
        assert set(d["values"]) == LOSS_TERMS[d["phase"]], d
        assert all(isinstance(v, float) and math.isfinite(v) for v in d["values"].values()), d

    executing_train = next(i for i, m in enumerate(messages)
                           if m["type"] == "executing" and m["data"].get("node") == train)
    assert executing_train < loss_at[0], "loss events arrived before the Train node started"
    executed = {m["data"]["node"]: i for i, m in enumerate(messages) if m["type"] == "executed"}
    previews = node_ids(prompt, "PreviewImage")
    assert set(previews) <= set(executed), f"no executed message for previews {sorted(set(previews) - set(executed))}"
    assert min(executed[p] for p in previews) > loss_at[-1], "a result arrived before training finished"
    for p in previews:  # loss curve and both attention-map grids
        images = messages[executed[p]]["data"]["output"]["images"]
        assert images and images[0]["type"] == "temp", images
    assert [f for f in new_files if f.startswith("server_example_van_gogh")], f"no LoRA written: {new_files}"


def test_apply_example_loads_the_freshly_trained_file(comfy_server, tiny_training_run):
    _, _, messages, new_files = tiny_training_run
    assert_succeeded(messages)
    (lora_file,) = [f for f in new_files if f.startswith("server_example_van_gogh")]
    options = comfy_server.get(f"/object_info/{APPLY}").json()[APPLY]["input"]["required"]["lora_name"][1]["options"]
    assert lora_file in options, f"{lora_file} is not offered by Apply Erasure LoRA: {options}"

    prompt = api_twin("apply_a_shared_erasure_LoRA_to_FLUX.1-dev")
    (apply,) = node_ids(prompt, APPLY)
    (shown,) = node_ids(prompt, "PreviewAny")
    assert prompt[shown]["inputs"]["source"] == [apply, 1], "the example no longer shows the LoRA's info"
    run = comfy_server.run(tiny_variant(prompt, {apply: {"lora_name": lora_file}}), timeout=120)
    assert_succeeded(run)
    (info,) = [m["data"]["output"]["text"][0] for m in run.of_type("executed") if m["data"]["node"] == shown]
    assert "erases 'Van Gogh'" in info and "6 steps" in info, info


def test_demo_world_example_runs_unchanged_and_its_pictures_lose_the_red(comfy_server):
    import numpy as np
    import torch
    from PIL import Image

    from eraseanything_core.demo_world import judge as judge_lib
    from eraseanything_core.demo_world import shapes

    prompt = api_twin(DEMO)
    started = time.monotonic()
    run = comfy_server.run(prompt, timeout=600)
    assert_succeeded(run)
    logger.info("demo world example ran in %.1f s", time.monotonic() - started)
    saved = {}
    for m in run.of_type("executed"):
        node = prompt[m["data"]["node"]]
        if node["class_type"] == "SaveImage":
            files = [comfy_server.base_dir / "output" / i["subfolder"] / i["filename"] for i in m["data"]["output"]["images"]]
            # the template shows the 32 px pictures enlarged 8x, nearest-neighbour: every 8th pixel is the picture
            saved[node["_meta"]["title"]] = torch.stack([torch.from_numpy(np.array(Image.open(f).convert("RGB"))[::8, ::8])
                                                         for f in files])
    assert set(saved) == {"Before", "After"} and saved["Before"].shape == (8, 32, 32, 3), {k: v.shape for k, v in saved.items()}
    judge = judge_lib.load(REPO_ROOT / "models" / "demo_world" / "judge.safetensors")
    # the example erases "red" from one prompt line per shape, each anchored to the line without the word
    # (anchor_word empty, the node's default: "a triangle", which the world draws white), and draws
    # "a red triangle" before and after: the red goes, the triangle stays
    train = next(n for n in prompt.values() if n["class_type"] == "EraseAnything_TrainErasureLoRA")
    assert len(train["inputs"]["prompt"].splitlines()) >= 2 and train["inputs"]["anchor_word"] == ""
    red, triangle = shapes.COLOUR_NAMES.index("red"), shapes.SHAPES.index("triangle")
    predicted = {k: judge.predict(v.permute(0, 3, 1, 2).float() / 255) for k, v in saved.items()}
    rate = {k: (colour == red).float().mean().item() for k, (_, colour) in predicted.items()}
    triangles = {k: (shape == triangle).float().mean().item() for k, (shape, _) in predicted.items()}
    assert rate["Before"] >= 0.75 and rate["After"] <= 0.25, rate
    assert triangles["After"] >= 0.5 * triangles["Before"] > 0, triangles
