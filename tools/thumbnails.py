"""Thumbnails for the templates dialog (example_workflows/<name>.jpg), from pictures the tests and the demo
wrote: the demo world's from a real run (`make demo`: demo-output/before_after.png, the same erasure the
template runs); the FLUX.1-dev ones, which need model files this project cannot download, from the
browser tests' screenshots of each template loaded in the real frontend (test-output/browser/).

    make demo && make test && python tools/thumbnails.py
"""

import sys
from pathlib import Path

from PIL import Image

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "example_workflows"
SIZE = (400, 300)  # what the templates dialog shows (4:3 cards)


def fit(image: Image.Image) -> Image.Image:
    """Scale to fit inside SIZE, centred on the frontend's dark background."""
    scale = min(SIZE[0] / image.width, SIZE[1] / image.height)
    resized = image.convert("RGB").resize((round(image.width * scale), round(image.height * scale)), Image.LANCZOS)
    card = Image.new("RGB", SIZE, (24, 24, 24))
    card.paste(resized, ((SIZE[0] - resized.width) // 2, (SIZE[1] - resized.height) // 2))
    return card


def graph_area(shot: Image.Image) -> Image.Image:
    """The canvas part of a frontend screenshot (without the side bar and the top bar)."""
    return shot.crop((60, 40, shot.width, shot.height))


def main() -> int:
    sources = {}
    for workflow in sorted(EXAMPLES.glob("*.json")):
        if workflow.stem.startswith("demo_world"):
            sources[workflow] = Image.open(REPO / "demo-output" / "before_after.png")
        else:
            sources[workflow] = graph_area(Image.open(REPO / "test-output" / "browser" / f"example_{workflow.stem}.png"))
    for workflow, image in sources.items():
        fit(image).save(workflow.with_suffix(".jpg"), quality=88)
        print("wrote", workflow.with_suffix(".jpg").relative_to(REPO))
    return 0


if __name__ == "__main__":
    sys.exit(main())
