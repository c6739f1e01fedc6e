"""The three nodes together in the real frontend (headless Chromium): the tiny Flux is erased by Train
Erasure LoRA, the LoRA is patched in by Apply Erasure LoRA, and Attention Map Inspect runs on the base
and on the erased model with the same latent and seed. The run is queued from the page; the test checks
that both heat-map grids reach their Preview Image nodes, differ (the LoRA changed the attention) and are
drawn on the canvas, and that Apply's info reaches a Preview as Text node. It saves a screenshot of the
whole graph and crops framed on the nodes (test-output/browser/inspect.png, node_*.png); with
EA_UPDATE_DOC_IMAGES=1, and only when every check passed, the crops also replace the README pictures
docs/images/node_{train,inspect,apply}.png."""

import io
import logging
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from tests.browser.conftest import close_dialogs, visible_popups, wait_until
from tests.workflows.ui_to_api import is_widget, widget_specs

logger = logging.getLogger(__name__)

pytestmark = [pytest.mark.browser, pytest.mark.server]

REPO_ROOT = Path(__file__).resolve().parents[2]
DOC_IMAGES = REPO_ROOT / "docs" / "images"
TRAIN, APPLY, INSPECT = ("EraseAnything_TrainErasureLoRA", "EraseAnything_ApplyErasureLoRA",
                         "EraseAnything_AttentionMapInspect")
LATENT_NODE, TEXT_NODE = "EmptySD3LatentImage", "PreviewAny"  # stock ComfyUI nodes
STEPS = 6
PROMPT = "a painting of a starry night, in the style of Van Gogh"
WORDS = "Van Gogh, night"
# 256 px: a 16x16 grid of image tokens; the grid's tiles are drawn 1:1 in the Preview Image nodes.
LATENT_PX = 256
TRAIN_VALUES = {"concept": "Van Gogh", "steps": STEPS, "learning_rate": 0.001, "rank": 4, "seed": 0,
                "resolution": 64, "num_images": 1,
                # Not the training test's name: ComfyUI would serve that run's Train node from its cache.
                "lora_name": "browser_inspect_van_gogh",
                "prompt": PROMPT, "anchor": "", "synonyms": "Vincent van Gogh",
                "irrelevant": "ice cream\nrainbow\nbookshelf", "anchor_word": "", "keep": ""}
INSPECT_VALUES = {"prompt": PROMPT, "words": WORDS, "sigmas": "0.9, 0.7, 0.5", "blocks": "-1",
                  "head_reduction": "mean", "mode": "attention", "shared_scale": False, "seed": 7}
MAX_PNG_BYTES = 300_000
DOC_CROPS = ("node_train.png", "node_inspect.png", "node_apply.png")
UPDATE_DOCS_ENV = "EA_UPDATE_DOC_IMAGES"

# Node rectangles (title bar included, badges not) in page CSS pixels, for crops and pixel checks.
RECTS_JS = """
const r = app.canvas.canvas.getBoundingClientRect(), dpr = window.devicePixelRatio, s = app.canvas.ds.scale;
const out = {};
for (const id of arguments[0]) {
  const n = app.graph.getNodeById(id), b = n.getBounding();
  const [x, y] = app.canvas.ds.convertOffsetToCanvas([b[0], b[1]]);
  out[id] = {x: r.left + x / dpr, y: r.top + y / dpr, w: b[2] * s / dpr, h: b[3] * s / dpr};
}
return out;
"""

# Frame the union of some nodes in the free part of the page (away from the sidebar, the top bars and
# the bottom toolbars), at most at scale arguments[1]; returns the scale used.
FRAME_JS = """
const ids = arguments[0], maxScale = arguments[1], pad = arguments[2];
const free = {x0: 130, y0: 140, x1: window.innerWidth - 30, y1: window.innerHeight - 80};
let x0 = Infinity, y0 = Infinity, x1 = -Infinity, y1 = -Infinity;
for (const id of ids) {
  const b = app.graph.getNodeById(id).getBounding();
  x0 = Math.min(x0, b[0]); y0 = Math.min(y0, b[1]); x1 = Math.max(x1, b[0] + b[2]); y1 = Math.max(y1, b[1] + b[3]);
}
x0 -= pad; y0 -= pad + 20; x1 += pad; y1 += pad;  // +20 above: the node-source badges
const dpr = window.devicePixelRatio;
const scale = Math.min(maxScale, (free.x1 - free.x0) / (x1 - x0), (free.y1 - free.y0) / (y1 - y0));
const ds = app.canvas.ds;
ds.scale = scale;
const cx = (free.x0 + free.x1) / 2 * dpr, cy = (free.y0 + free.y1) / 2 * dpr;
ds.offset[0] = cx / scale - (x0 + x1) / 2;
ds.offset[1] = cy / scale - (y0 + y1) / 2;
app.canvas.setDirty(true, true);
app.canvas.draw(true, true);
return scale;
"""

# What an image element holds: its natural size and the share of "colourful" pixels (the heat map:
# a viridis colour blended on grey), read back through a canvas (same origin, so not tainted).
IMAGE_STATS_JS = """
const n = app.graph.getNodeById(arguments[0]), img = n && n.imgs && n.imgs[0];
if (!img || !img.complete || !img.naturalWidth) return null;
const c = document.createElement('canvas');
c.width = img.naturalWidth; c.height = img.naturalHeight;
const ctx = c.getContext('2d');
ctx.drawImage(img, 0, 0);
const d = ctx.getImageData(0, 0, c.width, c.height).data;
let colourful = 0;
for (let i = 0; i < d.length; i += 4) {
  const mx = Math.max(d[i], d[i + 1], d[i + 2]), mn = Math.min(d[i], d[i + 1], d[i + 2]);
  if (mx - mn > 30) colourful++;
}
return {w: img.naturalWidth, h: img.naturalHeight, colourful: colourful / (c.width * c.height), src: img.src};
"""

# How many pixels of two same-size preview images differ by more than 8 in some channel.
DIFF_JS = """
const pixels = id => {
  const img = app.graph.getNodeById(id).imgs[0], c = document.createElement('canvas');
  c.width = img.naturalWidth; c.height = img.naturalHeight;
  const ctx = c.getContext('2d');
  ctx.drawImage(img, 0, 0);
  return ctx.getImageData(0, 0, c.width, c.height).data;
};
const a = pixels(arguments[0]), b = pixels(arguments[1]);
let changed = 0;
for (let i = 0; i < a.length; i += 4)
  if (Math.max(Math.abs(a[i] - b[i]), Math.abs(a[i + 1] - b[i + 1]), Math.abs(a[i + 2] - b[i + 2])) > 8) changed++;
return changed;
"""


def ui_node(object_info: dict, node_id: int, node_type: str, pos, size, values: dict, title: str | None = None) -> dict:
    """A UI-format node: its sockets and outputs from /object_info, its widget values by name."""
    info = object_info[node_type]
    names = [name for name, _ in widget_specs(info)]
    assert sorted(names) == sorted(values), f"{node_type} widgets are {names}, the test sets {sorted(values)}"
    order = info.get("input_order") or {s: list(info["input"].get(s, {})) for s in ("required", "optional")}
    sockets = [(name, info["input"][section][name][0]) for section in ("required", "optional")
               for name in order.get(section, []) if not is_widget(info["input"][section][name])]
    node = {"id": node_id, "type": node_type, "pos": list(pos), "size": list(size), "flags": {}, "order": node_id,
            "mode": 0, "properties": {}, "widgets_values": [values[name] for name in names],
            "inputs": [{"name": name, "type": kind, "link": None} for name, kind in sockets],
            "outputs": [{"name": name, "type": kind, "links": []}
                        for name, kind in zip(info.get("output_name") or info["output"], info["output"])]}
    if title:
        node["title"] = title
    return node


def connect(workflow: dict, src: int, src_slot: int, dst: int, dst_input: str) -> None:
    nodes = {n["id"]: n for n in workflow["nodes"]}
    link_id = len(workflow["links"]) + 1
    output = nodes[src]["outputs"][src_slot]
    slot = next(i for i, s in enumerate(nodes[dst]["inputs"]) if s["name"] == dst_input)
    nodes[dst]["inputs"][slot]["link"] = link_id
    output["links"].append(link_id)
    workflow["links"].append([link_id, src, src_slot, dst, slot, output["type"]])
    workflow["last_link_id"] = link_id


def erase_and_inspect_workflow(object_info: dict) -> dict:
    """Loader -> Train -> Apply (lora input) -> Inspect on the base and on the erased model -> previews."""
    node = lambda *args, **kw: ui_node(object_info, *args, **kw)  # noqa: E731
    nodes = [
        node(1, "EATest_TinyFluxLoader", (0, 0), (300, 82), {"seed": 0}),
        node(2, LATENT_NODE, (0, 150), (300, 110), {"width": LATENT_PX, "height": LATENT_PX, "batch_size": 1}),
        node(3, TRAIN, (350, 0), (440, 1000), TRAIN_VALUES),
        node(4, APPLY, (840, 0), (340, 110), {"lora_name": "(from input)", "strength": 1.0}),
        node(6, INSPECT, (1230, 0), (400, 330), INSPECT_VALUES, title="Attention Map Inspect (base model)"),
        node(7, INSPECT, (1230, 400), (400, 330), INSPECT_VALUES, title="Attention Map Inspect (erased model)"),
        node(8, "PreviewImage", (840, 800), (530, 320), {}, title="Attention before erasure (base model)"),
        node(9, "PreviewImage", (1410, 800), (530, 320), {}, title="Attention after erasure (erased model)"),
    ]
    if TEXT_NODE in object_info:
        nodes.append(node(5, TEXT_NODE, (840, 160), (340, 150), {}, title="Apply Erasure LoRA: info"))
    workflow = {"id": "00000000-0000-4000-8000-0000000000ec", "revision": 0, "last_node_id": 9, "last_link_id": 0,
                "nodes": nodes, "links": [], "groups": [], "config": {},
                "extra": {"ds": {"scale": 0.5, "offset": [0, 0]}}, "version": 0.4}
    for src, src_slot, dst, name in [(1, 0, 3, "model"), (1, 1, 3, "clip"), (1, 0, 4, "model"), (3, 1, 4, "lora"),
                                     (1, 0, 6, "model"), (1, 1, 6, "clip"), (2, 0, 6, "latent"),
                                     (4, 0, 7, "model"), (1, 1, 7, "clip"), (2, 0, 7, "latent"),
                                     (6, 0, 8, "images"), (7, 0, 9, "images")]:
        connect(workflow, src, src_slot, dst, name)
    if TEXT_NODE in object_info:
        connect(workflow, 4, 1, 5, "source")
    return workflow


@pytest.fixture(scope="module")
def object_info(comfy_server) -> dict:
    return comfy_server.get("/object_info").json()


def settle(page) -> None:
    """Redraw, then let two animation frames pass (DOM widgets follow the canvas on the next frame)."""
    page.execute_script("app.canvas.setDirty(true, true); app.canvas.draw(true, true)")
    page.execute_script("return new Promise(r => requestAnimationFrame(() => requestAnimationFrame(() => r(true))))")
    time.sleep(0.15)
    page.execute_script("app.canvas.draw(true, true)")


def screenshot(page):
    from PIL import Image

    return Image.open(io.BytesIO(page.get_screenshot_as_png())).convert("RGB")


def colourful_pixels(shot, rect: dict) -> int:
    """Pixels inside rect whose channels spread by more than 30 (node chrome and canvas are grey)."""
    crop = np.asarray(shot.crop((int(rect["x"]), int(rect["y"]), int(rect["x"] + rect["w"]),
                                 int(rect["y"] + rect["h"]))), dtype=np.int16)
    return int((crop.max(axis=-1) - crop.min(axis=-1) > 30).sum())


def save_crop(page, node_ids: list[int], path: Path, max_scale: float, pad: float = 12) -> dict:
    """Frame node_ids, screenshot, crop to their union (plus pad) and save a PNG under MAX_PNG_BYTES."""
    scale = page.execute_script(FRAME_JS, node_ids, max_scale, pad)
    settle(page)
    rects = page.execute_script(RECTS_JS, node_ids).values()
    m = pad * scale
    box = (int(min(r["x"] for r in rects) - m), int(min(r["y"] for r in rects) - m - 20 * scale),
           int(max(r["x"] + r["w"] for r in rects) + m), int(max(r["y"] + r["h"] for r in rects) + m))
    image = screenshot(page).crop(box)
    image.save(path, optimize=True)
    if path.stat().st_size > MAX_PNG_BYTES:  # fall back to a 256-colour palette
        image.quantize(colors=256, method=2, dither=0).save(path, optimize=True)
    logger.info("%s: scale %.2f, %dx%d px, %d bytes", path.name, scale, image.width, image.height, path.stat().st_size)
    return {"scale": scale, "size": image.size, "bytes": path.stat().st_size}


def test_erase_then_inspect_before_and_after(comfy_page, object_info, shots_dir):
    page = comfy_page
    assert LATENT_NODE in object_info, f"the stock {LATENT_NODE} node is missing from /object_info"
    logger.info("%s in /object_info: %s", TEXT_NODE, TEXT_NODE in object_info)
    timings = {}
    started = time.monotonic()

    workflow = erase_and_inspect_workflow(object_info)
    if visible_popups(page):  # a missing-models dialog left by an earlier template test
        close_dialogs(page)
    page.execute_script("return window.app.loadGraphData(arguments[0])", workflow)
    wait_until(lambda: page.execute_script("return app.graph._nodes.length") == len(workflow["nodes"]), 30,
               "the workflow's nodes to appear in app.graph")
    assert not visible_popups(page), f"the frontend complained on load: {visible_popups(page)}"

    page.execute_script("""window.__eaDone = null;
        const api = comfyAPI.api.api;
        api.addEventListener('execution_success', e => window.__eaDone = {ok: e.detail});
        api.addEventListener('execution_error', e => window.__eaDone = {error: e.detail});""")
    queued = time.monotonic()
    page.execute_script("return app.queuePrompt(0, 1)")  # returns false even on success: wait for the events
    done = wait_until(lambda: page.execute_script("return window.__eaDone"), 300, "execution_success")
    timings["run"] = time.monotonic() - queued
    assert "ok" in done, f"the run failed: {done}"
    assert not visible_popups(page), visible_popups(page)

    # Train: the live chart holds every step and the attention preview arrived under the node.
    train = wait_until(lambda: page.execute_script(
        "const n = app.graph.getNodeById(3), c = n.widgets.find(w => w.name === 'loss_chart');"
        " return n.imgs && n.imgs[0] && n.imgs[0].complete ? JSON.parse(JSON.stringify(c.data)) : null"),
        15, "the Train node's attention preview")
    assert [p["step"] for p in train["points"]] == list(range(1, STEPS + 1)), train
    assert train["previewStep"] is not None

    # Inspect: both grids loaded in their Preview Image nodes: one tile per word, heat-map colours.
    stats = {nid: wait_until(lambda nid=nid: page.execute_script(IMAGE_STATS_JS, nid), 15,
                             f"the Inspect grid in Preview Image node {nid}") for nid in (8, 9)}
    logger.info("Inspect grids: %s", stats)
    n_words = len(WORDS.split(","))
    for nid, s in stats.items():
        assert (s["w"], s["h"]) == (n_words * LATENT_PX, LATENT_PX), f"node {nid}: unexpected grid size {s}"
        assert s["colourful"] > 0.6, f"node {nid}: the grid is mostly background: {s}"
    assert stats[8]["src"] != stats[9]["src"], "both previews show the same file"
    # Same latent, seed and words: only the LoRA differs, so an Apply that patched nothing shows up here.
    changed = page.execute_script(DIFF_JS, 8, 9)
    logger.info("pixels that differ between the base and erased grids: %d of %d", changed,
                n_words * LATENT_PX * LATENT_PX)
    assert changed > 0, "the erased model's attention grid is identical to the base model's"

    info = None
    if TEXT_NODE in object_info:
        info = wait_until(lambda: page.execute_script(
            "const w = app.graph.getNodeById(5).widgets.find(w => w.name === 'preview');"
            " return w && (w.value || (w.element && w.element.value)) || null"), 15, "Apply's info text")
        logger.info("Apply info: %r", info)

    # Screenshots in a taller window: the whole graph above LiteGraph's low-quality zoom (no text below
    # 0.6x), and Train at 1.25x for the README. The window is put back for the other tests.
    size = page.get_window_size()
    page.set_window_size(1600, 1500)
    try:
        # The whole graph, and the heat maps drawn on the canvas (not only loaded).
        scale = page.execute_script(FRAME_JS, [n["id"] for n in workflow["nodes"]], 1.0, 10)
        settle(page)
        shot_path = shots_dir / "inspect.png"
        shot = screenshot(page)
        shot.save(shot_path)
        rects = page.execute_script(RECTS_JS, [8, 9])
        drawn = {nid: colourful_pixels(shot, rects[str(nid)]) for nid in (8, 9)}
        logger.info("whole graph at scale %.2f; colourful pixels in the preview nodes: %s", scale, drawn)
        for nid, count in drawn.items():
            expected = n_words * LATENT_PX * LATENT_PX * scale * scale  # the grid's area on screen
            assert count > 0.5 * expected, f"Preview Image node {nid} shows no heat map in {shot_path}: {drawn}"

        crops = {"node_train.png": save_crop(page, [3], shots_dir / "node_train.png", 1.25),
                 "node_inspect.png": save_crop(page, [8, 9], shots_dir / "node_inspect.png", 1.25),
                 "node_apply.png": save_crop(page, [4, 5] if TEXT_NODE in object_info else [4],
                                             shots_dir / "node_apply.png", 1.5)}
    finally:
        page.set_window_size(size["width"], size["height"])
    for name, crop in crops.items():
        assert crop["bytes"] <= MAX_PNG_BYTES, f"{name} is {crop['bytes']} bytes"
    timings["total"] = time.monotonic() - started
    # Last, so that the pictures above exist to look at when it fails.
    if info is not None:
        assert "erases 'Van Gogh'" in info and f"{STEPS} steps" in info, \
            f"Apply Erasure LoRA's info for the LoRA from Train Erasure LoRA's lora output: {info!r}"
    if os.environ.get(UPDATE_DOCS_ENV) == "1":
        DOC_IMAGES.mkdir(parents=True, exist_ok=True)
        for name in DOC_CROPS:
            shutil.copyfile(shots_dir / name, DOC_IMAGES / name)
        logger.info("%s=1: copied %s to %s", UPDATE_DOCS_ENV, ", ".join(DOC_CROPS), DOC_IMAGES)
    logger.info("timings: %s", {k: round(v, 1) for k, v in timings.items()})
