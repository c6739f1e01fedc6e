"""Our nodes in the real ComfyUI frontend (headless Chromium): they load from a UI-format workflow, get
their widgets from /object_info, are drawn on the canvas, and our JS extension registers."""

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from tests.browser.conftest import dismiss_missing_models, visible_popups, wait_until

logger = logging.getLogger(__name__)

pytestmark = [pytest.mark.browser, pytest.mark.server]

REPO_ROOT = Path(__file__).resolve().parents[2]
PACK = "eraseanything"
WIDGET_TYPES = ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO")
OUR_NODES = ("EraseAnything_TrainErasureLoRA", "EraseAnything_ErasureOptions",
             "EraseAnything_AttentionMapInspect", "EraseAnything_ApplyErasureLoRA")

# The built workflow: (id, type, position); the frontend's floating UI covers x < 260, y < 90.
LAYOUT = [(1, "EATest_TinyFluxLoader", (300, 140)),
          (2, "EraseAnything_ErasureOptions", (300, 330)),
          (3, "EraseAnything_TrainErasureLoRA", (700, 140)),
          (4, "EraseAnything_ApplyErasureLoRA", (1130, 140)),
          (5, "EraseAnything_AttentionMapInspect", (1130, 360))]
# (from node, output name, to node, input name)
LINKS = [(1, "model", 3, "model"), (1, "clip", 3, "clip"), (2, "options", 3, "options"),
         (3, "model", 4, "model"), (3, "lora", 4, "lora"), (3, "model", 5, "model"), (1, "clip", 5, "clip")]

NODE_RECTS_JS = """
const r = app.canvas.canvas.getBoundingClientRect(), dpr = window.devicePixelRatio, s = app.canvas.ds.scale;
return app.graph._nodes.map(n => { const [x, y] = app.canvas.ds.convertOffsetToCanvas(n.pos);
  return {id: n.id, type: n.type, x: r.left + x / dpr, y: r.top + y / dpr, w: n.size[0] * s / dpr, h: n.size[1] * s / dpr}; });
"""
CANVAS_RECT_JS = "const r = app.canvas.canvas.getBoundingClientRect(); return {x: r.left, y: r.top, w: r.width, h: r.height};"


def _is_widget(spec) -> bool:
    return isinstance(spec[0], list) or spec[0] in WIDGET_TYPES


def widget_names(node_info: dict) -> list[str]:
    return [name for section in ("required", "optional")
            for name, spec in node_info["input"].get(section, {}).items() if _is_widget(spec)]


def build_ui_workflow(object_info: dict, sizes: dict[str, list[float]]) -> dict:
    """A UI-format workflow (what the frontend saves) of our nodes, built from their /object_info schemas.
    `sizes` maps node type to [w, h]. Widget values are left out, so every widget starts at its default."""
    nodes, links = {}, []
    for order, (node_id, node_type, pos) in enumerate(LAYOUT):
        info = object_info[node_type]
        link_inputs = [(name, spec[0]) for section in ("required", "optional")
                       for name, spec in info["input"].get(section, {}).items() if not _is_widget(spec)]
        nodes[node_id] = {
            "id": node_id, "type": node_type, "pos": list(pos), "size": list(sizes[node_type]),
            "flags": {}, "order": order, "mode": 0,
            "inputs": [{"name": name, "type": kind, "link": None} for name, kind in link_inputs],
            "outputs": [{"name": name, "type": kind, "links": [], "slot_index": i}
                        for i, (name, kind) in enumerate(zip(info["output_name"], info["output"]))],
            "properties": {"Node name for S&R": node_type},
        }
    for link_id, (src, out_name, dst, in_name) in enumerate(LINKS, start=1):
        out_slot = next(i for i, o in enumerate(nodes[src]["outputs"]) if o["name"] == out_name)
        in_slot = next(i for i, o in enumerate(nodes[dst]["inputs"]) if o["name"] == in_name)
        kind = nodes[src]["outputs"][out_slot]["type"]
        links.append([link_id, src, out_slot, dst, in_slot, kind])
        nodes[src]["outputs"][out_slot]["links"].append(link_id)
        nodes[dst]["inputs"][in_slot]["link"] = link_id
    return {"id": "00000000-0000-4000-8000-0000000000ea", "revision": 0, "last_node_id": len(nodes),
            "last_link_id": len(links), "nodes": list(nodes.values()), "links": links, "groups": [],
            "config": {}, "extra": {"ds": {"scale": 1.0, "offset": [0, 0]}}, "version": 0.4}


def example_workflows() -> list[Path]:
    return sorted((REPO_ROOT / "example_workflows").glob("*.json"))


def load_workflow(page, workflow: dict) -> list[dict]:
    page.execute_script("return window.app.loadGraphData(arguments[0])", workflow)  # WebDriver awaits the promise
    wait_until(lambda: page.execute_script("return app.graph._nodes.length") == len(workflow["nodes"]), 30,
               "the workflow's nodes to appear in app.graph")
    page.execute_script("app.graph.setDirtyCanvas(true, true)")
    return page.execute_script("return app.graph._nodes.map(n => ({id: n.id, type: n.type, "
                               "widgets: (n.widgets || []).map(w => w.name), links_in: n.inputs.filter(i => i.link != null).length}))")


def default_sizes(page, node_types) -> dict[str, list[float]]:
    """The size the frontend gives a fresh node of each type, at least 340 px wide so labels fit."""
    sizes = page.execute_script("return Object.fromEntries(arguments[0].map(t => [t, "
                                "Array.from(LiteGraph.createNode(t).computeSize())]))", list(node_types))
    return {t: [max(w, 340), h] for t, (w, h) in sizes.items()}


def drawn_fraction(shot, rect: dict, canvas: dict, background) -> tuple[float, int]:
    """Share of the pixels inside rect (clipped to the canvas) that differ from the empty-canvas colour."""
    left, top = max(rect["x"], canvas["x"]), max(rect["y"], canvas["y"])
    right = min(rect["x"] + rect["w"], canvas["x"] + canvas["w"])
    bottom = min(rect["y"] + rect["h"], canvas["y"] + canvas["h"])
    if right - left < 10 or bottom - top < 10:
        return 0.0, 0
    crop = np.asarray(shot.crop((int(left), int(top), int(right), int(bottom))), dtype=np.int16)  # (h, w, 3)
    differs = np.abs(crop - np.asarray(background, dtype=np.int16)).max(axis=-1) > 6  # (h, w)
    return float(differs.mean()), int(differs.size)


def screenshot_coverage(page, shot_path: Path) -> tuple[dict, float]:
    """Render, save a screenshot, and measure how much of each node's rectangle is drawn.
    Returns {"id:type": (drawn fraction, visible pixels)} and the same fraction for a strip of empty canvas."""
    from PIL import Image

    page.execute_script("app.canvas.draw(true, true)")
    wait_until(lambda: page.execute_script(
        "return new Promise(r => requestAnimationFrame(() => requestAnimationFrame(() => r(true))))"), 10,
        "two animation frames")
    rects, canvas = page.execute_script(NODE_RECTS_JS), page.execute_script(CANVAS_RECT_JS)
    assert page.save_screenshot(str(shot_path)), f"could not write {shot_path}"
    shot = Image.open(shot_path).convert("RGB")
    # The empty-canvas colour: the most common pixel in the canvas strip below all nodes.
    bottom = int(canvas["y"] + canvas["h"]) - 5
    strip_top = min(int(max(r["y"] + r["h"] for r in rects)) + 20, bottom - 15)
    strip_left = int(canvas["x"]) + 300
    strip = shot.crop((strip_left, strip_top, int(canvas["x"] + canvas["w"]) - 300, bottom))
    colours, counts = np.unique(np.asarray(strip).reshape(-1, 3), axis=0, return_counts=True)
    background = tuple(int(c) for c in colours[counts.argmax()])
    empty = {"x": strip_left, "y": strip_top, "w": 300, "h": bottom - strip_top}
    empty_fraction, _ = drawn_fraction(shot, empty, canvas, background)
    coverage = {}
    for rect in rects:
        fraction, area = drawn_fraction(shot, rect, canvas, background)
        coverage[f"{rect['id']}:{rect['type']}"] = (round(fraction, 2), area)
    logger.info("screenshot %s; background %s, empty canvas %.3f; drawn fraction per node %s",
                shot_path, background, empty_fraction, coverage)
    return coverage, empty_fraction


def test_nodes_load_from_a_ui_workflow_and_are_drawn(comfy_page, comfy_server, shots_dir):
    object_info = comfy_server.get("/object_info").json()
    sizes = default_sizes(comfy_page, {node_type for _, node_type, _ in LAYOUT})
    workflow = build_ui_workflow(object_info, sizes)
    loaded = load_workflow(comfy_page, workflow)
    assert not visible_popups(comfy_page), f"the frontend complained on load: {visible_popups(comfy_page)}"

    types = [n["type"] for n in loaded]
    assert set(OUR_NODES) <= set(types), f"our nodes missing from app.graph: {sorted(set(OUR_NODES) - set(types))}"
    for node in loaded:  # the frontend built each node's widgets from our /object_info schema
        expected = widget_names(object_info[node["type"]])
        assert set(expected) <= set(node["widgets"]), \
            f"{node['type']} lacks widgets {sorted(set(expected) - set(node['widgets']))}"
    assert sum(n["links_in"] for n in loaded) == len(LINKS), f"links were dropped on load: {loaded}"
    assert comfy_page.execute_script(
        "const l = app.graph.links; return l instanceof Map ? l.size : Object.values(l).filter(Boolean).length") \
        == len(LINKS)

    shot_path = shots_dir / "eraseanything_nodes.png"
    coverage, empty_fraction = screenshot_coverage(comfy_page, shot_path)
    assert empty_fraction < 0.1, f"the pixel check sees {empty_fraction:.0%} 'drawn' on empty canvas; see {shot_path}"
    # An undrawn node leaves only the sparse grid dots (empty canvas measured 0.03); drawn nodes measured 1.0.
    undrawn = {k: v for k, v in coverage.items() if v[1] < 2000 or v[0] < 0.3}
    assert not undrawn, f"nodes not drawn (fraction of non-background pixels, visible area): {undrawn}; see {shot_path}"


def test_our_js_extension_registers(comfy_page, comfy_server):
    web = REPO_ROOT / "web"
    js_files = [p for p in sorted(web.rglob("*.js")) if "lib" not in p.relative_to(web).parts]  # lib/: helpers
    if not js_files:
        pytest.skip("web/ has no .js extension files yet")
    loaded = comfy_page.execute_script(
        "return performance.getEntriesByType('resource').map(e => new URL(e.name).pathname)")
    for path in js_files:
        url = f"/extensions/{PACK}/{path.relative_to(REPO_ROOT / 'web').as_posix()}"
        assert url in loaded, f"the frontend did not load {url}"
    names = comfy_page.execute_script("return app.extensions.map(e => e.name)")
    ours = [n for n in names if n.lower().startswith("eraseanything")]
    assert ours, f"no registered extension is named EraseAnything.*; registered: {names}"
    errors = [e["message"] for e in comfy_page.get_log("browser")
              if e["level"] == "SEVERE" and f"/extensions/{PACK}/" in e["message"]]
    assert not errors, f"our JS logged errors: {errors}"


@pytest.mark.parametrize("path", example_workflows(), ids=lambda p: p.name)
def test_example_workflow_loads_in_frontend(comfy_page, comfy_server, path):
    """A template loads without complaint; one that names its model files gets ComfyUI's missing-models
    dialog (the test server has none of them) listing each file with a download link."""
    workflow = json.loads(path.read_text(encoding="utf-8"))
    loaded = load_workflow(comfy_page, workflow)
    models = [m for n in workflow["nodes"] for m in n.get("properties", {}).get("models", [])]
    dialog = dismiss_missing_models(comfy_page, workflow)
    if models:
        assert dialog.startswith("Missing Models"), dialog
        listed = [m for m in models if f"{m['directory']} / {m['name']}" in dialog]
        assert listed == models and dialog.count("Download") >= len(models), dialog
    assert not visible_popups(comfy_page), f"{path.name}: the frontend complained on load: {visible_popups(comfy_page)}"
    assert {n["type"] for n in loaded} & set(OUR_NODES), f"{path.name} has none of our nodes"
