"""Our pack inside a real ComfyUI server: node schemas, web assets, example workflows, a training run with
websocket progress, and interrupting a run. Every test shares one server (tests/server/conftest.py)."""

import logging
import time
import urllib.parse
from pathlib import Path

import pytest

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
PACK = "eraseanything"  # the custom_nodes folder name the server fixture links to the repo root
TRAIN = "EraseAnything_TrainErasureLoRA"
WIDGET_TYPES = ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO")

# Input names are saved in every workflow: removing or renaming one breaks users' graphs, adding one does not.
# So inputs are checked as "at least these"; outputs exactly, because links address them by index.
EXPECTED_NODES = {
    TRAIN: dict(
        required={"model", "clip", "concept", "steps", "learning_rate", "rank", "seed", "resolution",
                  "num_images", "lora_name"},
        optional={"prompt", "anchor", "synonyms", "irrelevant", "options"},
        hidden={"unique_id"},
        output=["MODEL", "ERASURE_LORA", "STRING", "IMAGE"],
        output_node=True),
    "EraseAnything_ErasureOptions": dict(
        required={"lambda_esd", "lambda_attn", "lambda_fm", "lambda_rsc", "lambda_preserve_irrelevant", "eta", "targets", "reference",
                  "esd_sampling", "erase_steps_per_preserve", "gradient_checkpointing", "lora_dtype"},
        optional=set(), hidden=set(),
        output=["ERASURE_OPTIONS"],
        output_node=False),
    "EraseAnything_AttentionMapInspect": dict(
        required={"model", "clip", "prompt", "words", "sigmas", "blocks", "head_reduction", "mode",
                  "shared_scale", "seed"},
        optional={"latent", "image", "vae"},
        hidden={"unique_id"},
        output=["IMAGE", "MASK", "STRING"],
        output_node=False),
    "EraseAnything_ApplyErasureLoRA": dict(
        required={"model", "lora_name", "strength"},
        optional={"lora"},
        hidden=set(),
        output=["MODEL", "STRING"],
        output_node=False),
    "EraseAnything_LoadDemoWorld": dict(
        required=set(), optional=set(), hidden=set(),
        output=["MODEL", "CLIP", "VAE"],
        output_node=False),
}


def widget_defaults(node_info: dict) -> dict:
    """API-format values for every widget input of a node, from its /object_info defaults."""
    values = {}
    for section in ("required", "optional"):
        for name, spec in node_info["input"].get(section, {}).items():
            kind, opts = spec[0], (spec[1] if len(spec) > 1 else {})
            if isinstance(kind, list):  # V1-style combo: the options list itself
                values[name] = opts.get("default", kind[0])
            elif kind in WIDGET_TYPES:
                values[name] = opts.get("default", (opts.get("options") or [None])[0])
    return values


def train_prompt(object_info: dict, steps: int, lora_name: str) -> dict:
    """API format: tiny Flux loader -> Train Erasure LoRA (node "3"), with an Erasure Options node at defaults."""
    train_inputs = {**widget_defaults(object_info[TRAIN]),
                    "model": ["1", 0], "clip": ["1", 1], "options": ["2", 0],
                    "concept": "nude", "prompt": "a nude girl with beautiful hair",
                    "steps": steps, "rank": 4, "seed": 0, "resolution": 64, "num_images": 1, "lora_name": lora_name,
                    # Named irrelevant concepts skip the automatic pick, which encodes ~500 vocabulary prompts.
                    "irrelevant": "ice cream\nrainbow\nbookshelf"}
    return {
        "1": {"class_type": "EATest_TinyFluxLoader", "inputs": {"seed": 0}},
        "2": {"class_type": "EraseAnything_ErasureOptions",
              "inputs": widget_defaults(object_info["EraseAnything_ErasureOptions"])},
        "3": {"class_type": TRAIN, "inputs": train_inputs},
    }


def tree_snapshot(root: Path, skip: tuple[Path, ...] = ()) -> set[str]:
    """Every file under root (hidden ones included), as root-relative paths."""
    if not root.exists():
        return set()
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and p not in skip}


def assert_succeeded(messages) -> None:
    end = messages.terminal
    if end is None or end["type"] != "execution_success":
        data = (end or {}).get("data", {})
        detail = (f"{data.get('exception_type')}: {data.get('exception_message')}\n"
                  + "".join(data.get("traceback") or []) if end and end["type"] == "execution_error" else data)
        pytest.fail(f"prompt {messages.prompt_id} ended with {(end or {}).get('type')}: {detail}", pytrace=False)


@pytest.fixture(scope="module")
def object_info(comfy_server) -> dict:
    return comfy_server.get("/object_info").json()


@pytest.mark.parametrize("node_id", sorted(EXPECTED_NODES))
def test_object_info_lists_node_with_its_schema(object_info, node_id):
    assert node_id in object_info, f"{node_id} is not registered; our nodes there: " \
        f"{sorted(k for k in object_info if k.startswith('EraseAnything'))}"
    info, expected = object_info[node_id], EXPECTED_NODES[node_id]
    for section in ("required", "optional", "hidden"):
        names = set(info["input"].get(section, {}))
        assert expected[section] <= names, f"{node_id}: {section} inputs lack {sorted(expected[section] - names)}"
    assert info["output"] == expected["output"]
    assert info["output_node"] is expected["output_node"]
    assert info["category"] == "EraseAnything"
    assert info["python_module"] == f"custom_nodes.{PACK}"
    assert info["display_name"] and info["display_name"] != node_id
    for section in ("required", "optional"):  # every input and output carries a tooltip
        for name, spec in info["input"].get(section, {}).items():
            assert len(spec) > 1 and spec[1].get("tooltip"), f"{node_id}.{name} has no tooltip"
    assert len(info.get("output_tooltips", [])) == len(info["output"]) and all(info["output_tooltips"])


def test_extensions_lists_our_web_javascript(comfy_server):
    js_files = sorted((REPO_ROOT / "web").rglob("*.js"))
    if not js_files:
        pytest.skip("web/ has no .js files yet")
    listed = comfy_server.get("/extensions").json()
    for path in js_files:
        url = f"/extensions/{PACK}/" + urllib.parse.quote(path.relative_to(REPO_ROOT / "web").as_posix())
        assert url in listed, f"{url} is not in GET /extensions; ours there: {[u for u in listed if PACK in u]}"
        reply = comfy_server.get(url)
        assert reply.status_code == 200 and "javascript" in reply.headers.get("Content-Type", ""), url


def test_workflow_templates_lists_our_example_workflows(comfy_server, object_info):
    examples = sorted((REPO_ROOT / "example_workflows").glob("*.json"))
    if not examples:
        pytest.skip("example_workflows/ has no .json files yet")
    templates = comfy_server.get("/workflow_templates").json()
    assert sorted(templates.get(PACK, [])) == sorted(p.stem for p in examples)
    for path in examples:
        reply = comfy_server.get(f"/api/workflow_templates/{PACK}/{urllib.parse.quote(path.name)}")
        assert reply.status_code == 200, path.name
        workflow = reply.json()
        assert "nodes" in workflow and "links" in workflow, f"{path.name} is not a UI-format workflow"
        unknown = sorted({n["type"] for n in workflow["nodes"]} - set(object_info))
        assert not unknown, f"{path.name} uses node types the server does not know: {unknown}"
        # the templates dialog shows /api/workflow_templates/<pack>/<name>.jpg beside each template
        thumb = comfy_server.get(f"/api/workflow_templates/{PACK}/{urllib.parse.quote(path.stem)}.jpg")
        assert thumb.status_code == 200 and thumb.headers["Content-Type"] == "image/jpeg", (path.stem, thumb.status_code)


def test_train_workflow_reports_progress_and_writes_lora(comfy_server, object_info):
    before = tree_snapshot(comfy_server.loras_dir)
    started = time.monotonic()
    messages = comfy_server.run(train_prompt(object_info, steps=4, lora_name="server_test_nude"), timeout=300)
    logger.info("train workflow (4 steps) finished in %.1f s: %d JSON messages, %d binary frames",
                time.monotonic() - started, len(messages), messages.binary_frames)
    assert_succeeded(messages)

    progress = [m["data"] for m in messages.of_type("progress") if m["data"].get("node") == "3"]
    assert progress, f"no progress messages for the Train node; types seen: {sorted({m['type'] for m in messages})}"
    assert all(p["prompt_id"] == messages.prompt_id for p in progress)
    bars: list[list[dict]] = []  # consecutive messages with the same max belong to one ProgressBar
    for p in progress:
        if not bars or bars[-1][-1]["max"] != p["max"]:
            bars.append([])
        bars[-1].append(p)
    for bar in bars:  # a value may repeat: a step's binary preview comes with its own progress update
        values = [p["value"] for p in bar]
        assert values == sorted(values), f"progress values went backwards: {values} (max {bar[0]['max']})"
    assert progress[-1]["value"] == progress[-1]["max"], f"last progress {progress[-1]} did not reach its max"
    assert any(p["max"] >= 4 for p in progress), f"no progress bar covers the 4 steps: {progress}"

    new_files = sorted(tree_snapshot(comfy_server.loras_dir) - before)
    logger.info("new files in models/loras: %s", new_files)
    assert [f for f in new_files if f.endswith(".safetensors")], f"no new .safetensors in models/loras: {new_files}"
    assert all(f.endswith(".safetensors") for f in new_files), f"stray files left in models/loras: {new_files}"
    from safetensors import safe_open
    with safe_open(str(comfy_server.loras_dir / new_files[0]), framework="pt") as f:
        assert list(f.keys()), f"{new_files[0]} holds no tensors"


def test_interrupt_stops_training_quickly_and_writes_nothing(comfy_server, object_info):
    steps = 2000
    skip = (comfy_server.log_path,)
    before = tree_snapshot(comfy_server.base_dir, skip)
    interrupted_at: list[float] = []

    def interrupt_once_training(message, messages):
        data = message.get("data", {})
        if (not interrupted_at and message.get("type") == "progress" and data.get("node") == "3"
                and data.get("max", 0) >= steps and data.get("value", 0) >= 1):
            comfy_server.interrupt(messages.prompt_id)
            interrupted_at.append(time.monotonic())

    messages = comfy_server.run(train_prompt(object_info, steps=steps, lora_name="server_test_interrupt"),
                                timeout=300, on_message=interrupt_once_training)
    end = messages.terminal
    if end["type"] == "execution_error":
        assert_succeeded(messages)  # fails with the exception and traceback
    assert interrupted_at, f"the run ended ({end['type']}) before a training progress message arrived"
    latency = time.monotonic() - interrupted_at[0]
    logger.info("interrupt -> execution_interrupted in %.2f s", latency)
    assert end["type"] == "execution_interrupted", f"expected execution_interrupted, got {end}"
    assert end["data"]["node_type"] == TRAIN
    assert latency < 5.0, f"execution_interrupted came {latency:.1f} s after POST /interrupt"
    last_value = max(m["data"]["value"] for m in messages.of_type("progress") if m["data"].get("node") == "3")
    assert last_value < steps, "training ran to the end despite the interrupt"

    new_files = sorted(tree_snapshot(comfy_server.base_dir, skip) - before)
    assert not new_files, f"an interrupted run left files behind: {new_files}"
