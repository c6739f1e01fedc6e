"""Training in the real frontend (headless Chromium): a tiny-model Train Erasure LoRA workflow is queued
from the page, its loss chart widget fills from the `eraseanything.loss` websocket events and is drawn
on the canvas; and the frontend turns every example workflow into the same prompt as our converter."""

import json
import logging
import time
from pathlib import Path

import numpy as np
import pytest

from tests.browser.conftest import dismiss_missing_models, visible_popups, wait_until
from tests.workflows.ui_to_api import ui_to_api, widget_specs

logger = logging.getLogger(__name__)

pytestmark = [pytest.mark.browser, pytest.mark.server]

REPO_ROOT = Path(__file__).resolve().parents[2]
TRAIN = "EraseAnything_TrainErasureLoRA"
STEPS = 6
TRAIN_VALUES = {"concept": "Van Gogh", "steps": STEPS, "learning_rate": 0.001, "rank": 4, "seed": 0,
                "resolution": 64, "num_images": 1, "lora_name": "browser_van_gogh",
                "prompt": "a painting of a starry night, in the style of Van Gogh", "anchor": "",
                # Named synonyms and irrelevant concepts skip the automatic picks (vocabulary ranking).
                "synonyms": "Vincent van Gogh", "irrelevant": "ice cream\nrainbow\nbookshelf", "anchor_word": "", "keep": ""}
# Same colours as web/lib/loss_chart.js, per loss term.
TERM_RGB = {"esd": (230, 85, 13), "attn": (49, 130, 189), "fm": (49, 163, 84), "fm_irrelevant": (161, 217, 155),
            "retain": (253, 174, 107), "rsc": (117, 107, 177),
            "total": (220, 220, 220)}

CHART_JS = """
const node = app.graph.getNodeById(arguments[0]);
const chart = node && node.widgets.find(w => w.name === 'loss_chart');
if (!chart) return null;
const r = app.canvas.canvas.getBoundingClientRect(), dpr = window.devicePixelRatio, s = app.canvas.ds.scale;
const plot = chart.plotRect && app.canvas.ds.convertOffsetToCanvas(
    [node.pos[0] + chart.plotRect.x, node.pos[1] + chart.plotRect.y]);
return {data: JSON.parse(JSON.stringify(chart.data)), imgs: (node.imgs || []).length,
        plot: plot && {x: r.left + plot[0] / dpr, y: r.top + plot[1] / dpr,
                       w: chart.plotRect.w * s / dpr, h: chart.plotRect.h * s / dpr}};
"""


def tiny_training_workflow(object_info: dict) -> dict:
    """UI format, as the frontend saves it: tiny Flux loader -> Train Erasure LoRA -> Preview (loss curve)."""
    values = [TRAIN_VALUES[name] for name, _ in widget_specs(object_info[TRAIN])]
    return {
        "id": "00000000-0000-4000-8000-0000000000eb", "revision": 0, "last_node_id": 3, "last_link_id": 3,
        "nodes": [
            {"id": 1, "type": "EATest_TinyFluxLoader", "pos": [380, 160], "size": [300, 80], "flags": {}, "order": 0,
             "mode": 0, "inputs": [], "properties": {}, "widgets_values": [0],
             "outputs": [{"name": "model", "type": "MODEL", "links": [1]}, {"name": "clip", "type": "CLIP", "links": [2]}]},
            {"id": 2, "type": TRAIN, "pos": [720, 160], "size": [400, 700], "flags": {}, "order": 1, "mode": 0,
             "inputs": [{"name": "model", "type": "MODEL", "link": 1}, {"name": "clip", "type": "CLIP", "link": 2}],
             "outputs": [{"name": "model", "type": "MODEL", "links": []},
                         {"name": "lora", "type": "ERASURE_LORA", "links": []},
                         {"name": "lora_file", "type": "STRING", "links": []},
                         {"name": "loss_curve", "type": "IMAGE", "links": [3]}],
             "properties": {}, "widgets_values": values},
            {"id": 3, "type": "PreviewImage", "pos": [1160, 160], "size": [400, 420], "flags": {}, "order": 2,
             "mode": 0, "inputs": [{"name": "images", "type": "IMAGE", "link": 3}], "outputs": [], "properties": {}},
        ],
        "links": [[1, 1, 0, 2, 0, "MODEL"], [2, 1, 1, 2, 1, "CLIP"], [3, 2, 3, 3, 0, "IMAGE"]],
        "groups": [], "config": {}, "extra": {"ds": {"scale": 0.75, "offset": [0, 0]}}, "version": 0.4,
    }


@pytest.fixture(scope="module")
def object_info(comfy_server) -> dict:
    return comfy_server.get("/object_info").json()


def load(page, workflow: dict) -> None:
    page.execute_script("return window.app.loadGraphData(arguments[0])", workflow)  # WebDriver awaits the promise
    wait_until(lambda: page.execute_script("return app.graph._nodes.length") == len(workflow["nodes"]), 30,
               "the workflow's nodes to appear in app.graph")


def frontend_prompt(page, object_info: dict) -> tuple[dict, list[str]]:
    """app.graphToPrompt()'s API prompt, minus inputs the server does not declare (frontend-only widgets,
    such as PreviewAny's text box); returns it and the names dropped."""
    prompt = page.execute_script("return app.graphToPrompt().then(p => JSON.parse(JSON.stringify(p.output)))")
    dropped = []
    for node_id, node in prompt.items():
        declared = {**object_info[node["class_type"]]["input"].get("required", {}),
                    **object_info[node["class_type"]]["input"].get("optional", {})}
        for name in [n for n in node["inputs"] if n not in declared]:
            dropped.append(f"{node['class_type']}.{name}")
            del node["inputs"][name]
    return prompt, dropped


@pytest.mark.parametrize("path", sorted((REPO_ROOT / "example_workflows").glob("*.json")), ids=lambda p: p.stem)
def test_frontend_and_converter_give_the_same_prompt(comfy_page, object_info, shots_dir, path):
    workflow = json.loads(path.read_text(encoding="utf-8"))
    load(comfy_page, workflow)
    dismiss_missing_models(comfy_page, workflow)  # the FLUX.1-dev template names files this server lacks
    comfy_page.execute_script("app.canvas.draw(true, true)")
    comfy_page.save_screenshot(str(shots_dir / f"example_{path.stem}.png"))  # for the README and by-eye review
    got, dropped = frontend_prompt(comfy_page, object_info)
    logger.info("%s: frontend-only inputs ignored: %s", path.name, dropped)
    assert got == ui_to_api(workflow, object_info)
    assert got == json.loads((REPO_ROOT / "tests" / "workflows" / f"{path.stem}.api.json").read_text(encoding="utf-8"))


def term_pixels(shot, rect: dict) -> dict[str, int]:
    """Per loss term, how many pixels inside rect are (nearly) the term's line colour."""
    crop = np.asarray(shot.crop((int(rect["x"]), int(rect["y"]), int(rect["x"] + rect["w"]),
                                 int(rect["y"] + rect["h"]))), dtype=np.int16)  # (h, w, 3)
    return {term: int((np.abs(crop - np.asarray(rgb, dtype=np.int16)).max(axis=-1) < 40).sum())
            for term, rgb in TERM_RGB.items()}


def test_training_fills_and_draws_the_live_loss_chart(comfy_page, comfy_server, object_info, shots_dir):
    from PIL import Image

    page = comfy_page
    workflow = tiny_training_workflow(object_info)
    load(page, workflow)
    assert not visible_popups(page), f"the frontend complained on load: {visible_popups(page)}"
    empty = page.execute_script(CHART_JS, 2)
    assert empty is not None, "Train Erasure LoRA has no loss_chart widget: web/eraseanything.js did not run"
    assert empty["data"]["points"] == []

    page.execute_script("""window.__eaDone = null; window.__eaLossEvents = [];
        const api = comfyAPI.api.api;
        api.addEventListener('eraseanything.loss', e => window.__eaLossEvents.push(e.detail));
        api.addEventListener('execution_success', e => window.__eaDone = {ok: e.detail});
        api.addEventListener('execution_error', e => window.__eaDone = {error: e.detail});""")
    started = time.monotonic()
    page.execute_script("return app.queuePrompt(0, 1)")  # returns false even on success: wait for the events
    done = wait_until(lambda: page.execute_script("return window.__eaDone"), 300, "execution_success")
    logger.info("queued -> execution_success in %.1f s", time.monotonic() - started)
    assert "ok" in done, f"the run failed: {done}"
    assert not visible_popups(page), visible_popups(page)

    events = page.execute_script("return window.__eaLossEvents")
    chart = wait_until(lambda: (lambda c: c if c["imgs"] and c["plot"] else None)(page.execute_script(CHART_JS, 2)),
                       15, "the chart to be drawn and the attention preview to arrive")
    points = chart["data"]["points"]
    assert [p["step"] for p in points] == list(range(1, STEPS + 1)), points
    assert chart["data"]["total"] == STEPS and not chart["data"]["stale"]
    assert [p["values"] for p in points] == [e["values"] for e in events if e["node"] == "2"]
    assert chart["data"]["previewStep"] is not None, "the attention preview was never matched to the node"

    wait_until(lambda: page.execute_script("const n = app.graph.getNodeById(3);"
                                           " return !!(n && n.imgs && n.imgs[0] && n.imgs[0].complete)"),
               15, "the loss_curve image in the Preview Image node")
    shot_path = shots_dir / "training.png"
    page.execute_script("app.canvas.draw(true, true)")
    wait_until(lambda: page.execute_script(
        "return new Promise(r => requestAnimationFrame(() => requestAnimationFrame(() => r(true))))"), 10,
        "two animation frames")
    chart = page.execute_script(CHART_JS, 2)
    assert page.save_screenshot(str(shot_path)), f"could not write {shot_path}"
    shot = Image.open(shot_path).convert("RGB")
    counts = term_pixels(shot, chart["plot"])
    logger.info("chart plot area %s; pixels per term colour %s", chart["plot"], counts)
    terms = {t for p in points for t in p["values"]}
    faint = {t: n for t, n in counts.items() if t in terms and n < 15}
    assert not faint, f"loss lines missing from the chart in {shot_path}: {faint} (all: {counts})"


def test_chart_dims_on_a_new_run_and_restarts_at_step_one(comfy_page, object_info):
    """Synthetic events through the frontend's own api object: no server run needed."""
    page = comfy_page
    load(page, tiny_training_workflow(object_info))
    state = page.execute_script("""
        const api = comfyAPI.api.api, node = app.graph._nodes.find(n => n.type === arguments[0]);
        const data = () => JSON.parse(JSON.stringify(node.widgets.find(w => w.name === 'loss_chart').data));
        const loss = (id, step) => api.dispatchCustomEvent('eraseanything.loss',
            {node: String(id), step, total: 3, phase: 'erase', values: {esd: 1 / step, attn: step, total: 2}});
        loss(node.id, 1); loss(node.id, 2);
        const before = data();
        api.dispatchCustomEvent('execution_start', {prompt_id: 'synthetic'});
        const started = data();
        loss(node.id + 1000, 1);  // another node's events are ignored
        const ignored = data();
        loss(node.id, 1); loss(node.id, 2);
        return {before, started, ignored, restarted: data()};""", TRAIN)
    assert [p["step"] for p in state["before"]["points"]] == [1, 2] and not state["before"]["stale"]
    assert state["started"]["stale"] and state["started"]["points"] == state["before"]["points"]
    assert state["ignored"] == state["started"]
    assert [p["step"] for p in state["restarted"]["points"]] == [1, 2]
    assert not state["restarted"]["stale"] and state["restarted"]["total"] == 3
