"""tools/train_demo_world.py end to end on a few steps: it writes the world's files, logs the Inspect node's
maps at every eval, and only watches them: a run that scores the maps and one that does not end with the
same weights, bit for bit."""

import importlib.util
import logging
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def train_script():
    spec = importlib.util.spec_from_file_location("ea_train_demo_world", REPO / "tools" / "train_demo_world.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    root, threads = logging.getLogger(), torch.get_num_threads()
    handlers, level = list(root.handlers), root.level
    yield module
    for handler in root.handlers:  # main() points the root logger at its train_log.txt
        if handler not in handlers:
            handler.close()
    root.handlers[:], root.level = handlers, level
    torch.set_num_threads(threads)


def _run(script, out: Path, map_probes: int, judge_from: Path | None = None):
    argv = ["--out", str(out), "--max-steps", "4", "--eval-every", "2", "--map-probes", str(map_probes),
            "--judge-steps", "3", "--threads", str(torch.get_num_threads())]
    if judge_from is not None:
        out.mkdir()
        (out / "judge.safetensors").write_bytes((judge_from / "judge.safetensors").read_bytes())
        argv.append("--reuse-judge")
    script.main(argv)
    return {f: load_file(str(out / f)) for f in ("flux.safetensors", "text_encoders.safetensors")}


def test_training_logs_the_maps_at_every_eval_and_they_do_not_change_the_weights(train_script, tmp_path):
    watched = _run(train_script, tmp_path / "maps", map_probes=1)
    log_text = (tmp_path / "maps" / "train_log.txt").read_text()
    map_lines = re.findall(r"eval step (\d+): Inspect mIoU .*: (.*); (\d) of 8 words >= 0.5", log_text)
    assert [int(step) for step, _, _ in map_lines] == [2, 4, 4], log_text  # two evals and the final one
    words = re.findall(r"(\w+) ([\d.]+)/([\d.]+)", map_lines[-1][1])
    assert [w for w, _, _ in words] == ["circle", "square", "triangle", "cross", "red", "green", "blue", "yellow"]
    assert all(0.0 <= float(v) <= 1.0 for _, raw, out_space in words for v in (raw, out_space))

    unwatched = _run(train_script, tmp_path / "plain", map_probes=0, judge_from=tmp_path / "maps")
    assert "Inspect mIoU" not in (tmp_path / "plain" / "train_log.txt").read_text()
    for file, tensors in watched.items():
        assert tensors.keys() == unwatched[file].keys()
        for key, value in tensors.items():
            assert torch.equal(value, unwatched[file][key]), (file, key)


def test_a_world_with_a_t5_of_no_layers_loads_as_trained_and_reads_each_word_on_its_own_token(train_script, tmp_path):
    from eraseanything_core.comfy import demo_world as world_model
    from eraseanything_core.demo_world import text as world_text

    out = tmp_path / "local"
    train_script.main(["--out", str(out), "--max-steps", "2", "--eval-every", "2", "--map-probes", "1",
                       "--judge-steps", "3", "--t5-layers", "0", "--threads", str(torch.get_num_threads())])
    trained = load_file(str(out / "text_encoders.safetensors"))
    assert world_model.t5_depth(trained) == 0
    assert world_model.t5_depth(world_model.make_clip(seed=0).cond_stage_model.state_dict()) == world_model.T5["num_layers"]

    _, clip, _ = world_model.load_world(out)  # the loader reads the depth from the weights
    for key, value in clip.cond_stage_model.state_dict().items():
        assert torch.equal(value, trained[key]), key
    prompts = ["a red circle", "a blue circle"]
    t5_ids, clip_l_ids = world_text.tokenize(clip, prompts)
    with torch.no_grad():
        context, _ = world_text.encode(clip.cond_stage_model, t5_ids, clip_l_ids)  # (2, 16, 64)
    differs = (context[0] - context[1]).abs().amax(-1) > 0
    assert differs.tolist() == [a != b for a, b in zip(*t5_ids)]  # only the colour word's own tokens change


def test_a_negative_t5_depth_is_refused_before_any_work(train_script, tmp_path, capsys):
    with pytest.raises(SystemExit):
        train_script.main(["--out", str(tmp_path / "w"), "--t5-layers", "-1"])
    assert "--t5-layers must be 0 or more" in capsys.readouterr().err
    assert not (tmp_path / "w").exists()
