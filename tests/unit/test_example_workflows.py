"""The templates as a user meets them in ComfyUI's templates dialog: a thumbnail beside each workflow,
and for the FLUX.1-dev one, the model files with where to download them (ComfyUI's missing-models
dialog reads `properties.models` of the loader nodes)."""

import json
from pathlib import Path

import pytest

EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "example_workflows").glob("*.json"))
LOADER_DIRECTORIES = {"UNETLoader": "diffusion_models", "DualCLIPLoader": "text_encoders", "VAELoader": "vae"}


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_every_template_has_a_jpeg_thumbnail(path):
    thumb = path.with_suffix(".jpg")
    assert thumb.is_file(), f"ComfyUI looks for {thumb.name} next to {path.name}"
    assert thumb.read_bytes()[:3] == b"\xff\xd8\xff", f"{thumb.name} is not a JPEG"


@pytest.mark.parametrize("path", [p for p in EXAMPLES if "FLUX.1-dev" in p.stem], ids=lambda p: p.stem)
def test_flux_dev_templates_name_their_model_files_and_download_sources(path):
    workflow = json.loads(path.read_text())
    loaders = [n for n in workflow["nodes"] if n["type"] in LOADER_DIRECTORIES]
    assert {n["type"] for n in loaders} == set(LOADER_DIRECTORIES)
    for node in loaders:
        files = {v for v in node["widgets_values"] if isinstance(v, str) and v.endswith(".safetensors")}
        models = node["properties"].get("models", [])
        assert {m["name"] for m in models} == files, node["type"]
        for m in models:
            assert m["url"].startswith("https://huggingface.co/") and m["url"].endswith("/" + m["name"]), m
            assert m["directory"] == LOADER_DIRECTORIES[node["type"]], m
