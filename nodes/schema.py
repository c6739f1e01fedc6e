"""Node inputs built from EraseConfig's field metadata, so a default, a range or a help text lives in
one place (eraseanything_core/config.py)."""

from comfy_api.latest import io

from ..eraseanything_core.config import help_of


def config_input(name: str, **overrides):
    """The widget for config field `name`: Int / Float / Boolean / Combo / String (multiline for lists),
    with the field's default, min, max, step, choices and help as tooltip. `overrides` go to the input."""
    meta = help_of(name)
    default = meta["default"]
    common = dict(tooltip=meta["help"], **overrides)
    if "choices" in meta:
        value = "+".join(default) if isinstance(default, tuple) else default
        return io.Combo.Input(name, options=list(meta.get("node_choices", meta["choices"])), default=value, **common)
    if isinstance(default, bool):
        return io.Boolean.Input(name, default=default, **common)
    lo = meta.get("min", meta.get("gt"))
    limits = {k: v for k, v in (("min", lo), ("max", meta.get("max")), ("step", meta.get("step"))) if v is not None}
    if isinstance(default, int):
        return io.Int.Input(name, default=default, **limits, **common)
    if isinstance(default, float):
        return io.Float.Input(name, default=default, **limits, **common)
    if isinstance(default, tuple):  # a list: one item per line
        return io.String.Input(name, default="\n".join(map(str, default)), multiline=True, **common)
    multiline = name in ("prompt", "anchor")
    return io.String.Input(name, default="" if default is None else default, multiline=multiline, **common)


def split_list(text: str) -> tuple[str, ...]:
    """A list typed into a text box: one item per line or comma-separated (both work)."""
    return tuple(item.strip() for line in (text or "").splitlines() for item in line.split(",") if item.strip())


def split_lines(text: str) -> tuple[str, ...]:
    """A list of prompts typed into a text box: one per line (a prompt may contain commas)."""
    return tuple(line.strip() for line in (text or "").splitlines() if line.strip())
