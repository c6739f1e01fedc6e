"""Our nodes run by ComfyUI's own PromptExecutor, in this process: custom nodes loaded by
`nodes.load_custom_node`, prompts validated by `execution.validate_prompt`, every node executed under
inference mode exactly as the server does it. Only the websocket is replaced by a list of messages."""

import asyncio
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


class MessageSink:
    """What PromptExecutor needs of the server: somewhere to send messages."""

    def __init__(self):
        self.client_id = None
        self.last_node_id = None
        self.last_prompt_id = None
        self.messages = []

    def send_sync(self, event, data, sid=None):
        self.messages.append((event, data))


@pytest.fixture(scope="module")
def executor(tmp_path_factory):
    import execution
    import folder_paths
    import nodes

    base = tmp_path_factory.mktemp("comfy_base")
    for name in ("loras", "output", "temp"):
        (base / name).mkdir()
    saved = folder_paths.folder_names_and_paths["loras"]
    folder_paths.folder_names_and_paths["loras"] = ([str(base / "loras")], {".safetensors"})
    folder_paths.set_output_directory(str(base / "output"))
    folder_paths.set_temp_directory(str(base / "temp"))
    for pack in (REPO, REPO / "tests" / "tiny_models_pack"):
        assert asyncio.run(nodes.load_custom_node(str(pack))), f"ComfyUI failed to import {pack}"
    sink = MessageSink()
    runner = execution.PromptExecutor(sink, cache_args={"ram": 0.0})

    def run(prompt, prompt_id="p1"):
        valid = asyncio.run(execution.validate_prompt(prompt_id, prompt, None))
        assert valid[0], f"prompt does not validate: {valid[1]} {valid[3]}"
        sink.messages.clear()
        runner.execute(prompt, prompt_id, {"client_id": "in-process"}, valid[2])
        return sink.messages, runner.history_result

    yield run, base
    folder_paths.folder_names_and_paths["loras"] = saved


def _train_prompt(seed=0, steps=4, lora_name="inprocess"):
    return {
        "1": {"class_type": "EATest_TinyFluxLoader", "inputs": {"seed": 0}},
        "2": {"class_type": "EraseAnything_TrainErasureLoRA", "inputs": {
            "model": ["1", 0], "clip": ["1", 1], "concept": "nude", "prompt": "a nude girl with beautiful hair",
            "synonyms": "naked", "irrelevant": "car\ntree\nmountain", "steps": steps, "learning_rate": 0.01,
            "rank": 4, "seed": seed, "resolution": 32, "num_images": 1, "lora_name": lora_name}},
        "3": {"class_type": "EraseAnything_ApplyErasureLoRA", "inputs": {
            "model": ["1", 0], "lora_name": "(from input)", "strength": 1.0, "lora": ["2", 1]}},
        "4": {"class_type": "PreviewImage", "inputs": {"images": ["2", 3]}},
    }


def test_train_node_runs_in_the_real_executor_and_saves_a_lora(executor):
    run, base = executor
    messages, history = run(_train_prompt())
    events = [e for e, _ in messages]
    assert "execution_success" in events, [m for m in messages if m[0] == "execution_error"]
    files = sorted(p.name for p in (base / "loras").iterdir())
    assert files == ["inprocess.safetensors"]
    assert history["outputs"]["4"]["images"], "the loss chart reaches the UI"
    # Progress and loss events need the server's progress hook and websocket: tests/server checks them.


def test_same_inputs_reuse_the_cached_result_and_a_new_seed_retrains(executor):
    run, base = executor
    run(_train_prompt(lora_name="cache"))
    messages, _ = run(_train_prompt(lora_name="cache"))
    cached = [d["nodes"] for e, d in messages if e == "execution_cached"]
    assert "2" in cached[0], "same inputs: the Train node's result comes from the cache"
    messages, _ = run(_train_prompt(seed=1, lora_name="cache"))
    cached = [d["nodes"] for e, d in messages if e == "execution_cached"]
    assert "2" not in cached[0] and "execution_success" in [e for e, _ in messages], "new seed: trains again"
    assert sorted(p.name for p in (base / "loras").glob("cache*")) == ["cache.safetensors", "cache_2.safetensors"]


def test_bad_inputs_fail_with_clear_messages_and_write_nothing(executor):
    """Widget values are refused when the prompt is queued (validate_prompt), before any node runs;
    what needs the model (the concept's place in the prompt) when the node runs, before training."""
    import execution
    run, base = executor
    before = set((base / "loras").iterdir())
    for changes, needle in (({"lora_name": "../escape"}, "file name '../escape' contains '/'"),
                            ({"concept": "  "}, "concept is empty"),
                            ({"learning_rate": float("nan")}, "learning_rate must be a finite number, got nan."),
                            ({"learning_rate": 0.0}, "learning_rate must be above 0.0, got 0.0.")):
        prompt = _train_prompt()
        prompt["2"]["inputs"].update(changes)
        valid = asyncio.run(execution.validate_prompt("bad", prompt, None))
        details = [e["details"] for e in valid[3].get("2", {}).get("errors", [])]
        assert not valid[0] and details and all(needle in d for d in details), (changes, valid[3])
    prompt = _train_prompt()
    prompt["2"]["inputs"]["concept"] = "zebra"
    messages, _ = run(prompt)
    errors = [d for e, d in messages if e == "execution_error"]
    assert errors and "the concept 'zebra' does not appear in" in errors[0]["exception_message"], errors
    assert set((base / "loras").iterdir()) == before
