"""Turn a UI-format workflow (what the frontend saves, and what example_workflows/ holds) into the API
format that POST /prompt takes, using the node schemas of a running server's /object_info.

    python tests/workflows/ui_to_api.py example_workflows/erase_a_concept_from_FLUX.1-dev_with_before-after_images_and_attention_maps.json \
        --object-info http://127.0.0.1:8188 -o tests/workflows/erase_a_concept_from_FLUX.1-dev_with_before-after_images_and_attention_maps.api.json

`--object-info` is a server URL or a saved /object_info JSON file. The rules are the frontend's
(`graphToPrompt`, frontend 1.32), and tests/browser/test_browser_training.py checks that this script
and the real frontend give the same prompt for every example workflow:

* `widgets_values` holds one value per widget input, in /object_info `input_order` (required, then
  optional), plus one extra "control after generate" value ("fixed", "randomize", ...) after each INT
  or COMBO widget that has one: INT inputs with `control_after_generate` true, or unset and named
  `seed`/`noise_seed`; COMBO inputs with it true. The extra values are not sent to the server.
* A widget input with a link takes the link, not its widget value.
* Frontend-only nodes (notes) are skipped. Bypassed or muted nodes, reroutes and primitive widgets of
  the frontend are refused: our examples don't use them, and converting them needs graph rewiring.
"""

import argparse
import json
import sys
from pathlib import Path

WIDGET_TYPES = ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO")
FRONTEND_ONLY = ("Note", "MarkdownNote")
UNSUPPORTED = ("Reroute", "PrimitiveNode")
SEED_NAMES = ("seed", "noise_seed")
MODE_ALWAYS = 0


def is_widget(spec) -> bool:
    return isinstance(spec[0], list) or spec[0] in WIDGET_TYPES


def widget_specs(node_info: dict) -> list[tuple[str, list]]:
    """(name, spec) of every widget input of a node type, in the order the frontend creates them."""
    order = node_info.get("input_order") or {s: list(node_info["input"].get(s, {})) for s in ("required", "optional")}
    specs = []
    for section in ("required", "optional"):
        for name in order.get(section, []):
            spec = node_info["input"][section][name]
            if is_widget(spec):
                specs.append((name, spec))
    return specs


def has_control_widget(name: str, spec) -> bool:
    """Whether the frontend adds a "control after generate" widget (one more widgets_values entry)."""
    options = spec[1] if len(spec) > 1 else {}
    if spec[0] == "INT":
        flag = options.get("control_after_generate")
        return bool(flag) if flag is not None else name in SEED_NAMES
    if isinstance(spec[0], list) or spec[0] == "COMBO":
        return bool(options.get("control_after_generate"))
    return False


def _node_label(node: dict) -> str:
    return f"node {node['id']} ({node['type']})"


def _links(workflow: dict) -> dict[int, tuple[int, int]]:
    """link id -> (source node id, source output slot)."""
    links = {}
    for link in workflow["links"]:
        link_id, src, src_slot = (link["id"], link["origin_id"], link["origin_slot"]) if isinstance(link, dict) \
            else link[:3]
        links[link_id] = (src, src_slot)
    return links


def convert_node(node: dict, node_info: dict, links: dict, frontend_nodes: dict) -> dict:
    """One UI node -> {"class_type", "inputs", "_meta"}."""
    linked = {}
    for slot in node.get("inputs", []):
        if slot.get("link") is None:
            continue
        src, src_slot = links[slot["link"]]
        if src in frontend_nodes:
            raise ValueError(f"{_node_label(node)}: input {slot['name']!r} comes from a "
                             f"{frontend_nodes[src]} node, which this converter does not resolve.")
        linked[slot["name"]] = [str(src), src_slot]

    values = list(node.get("widgets_values") or [])
    if isinstance(node.get("widgets_values"), dict):
        raise ValueError(f"{_node_label(node)}: widgets_values is a dict; only list-style nodes are supported.")
    inputs, pos = {}, 0
    for name, spec in widget_specs(node_info):
        if pos >= len(values):
            raise ValueError(f"{_node_label(node)}: widgets_values has {len(values)} entries but the node's "
                             f"widgets need more (missing {name!r}); was it saved with another node version?")
        inputs[name] = values[pos]
        pos += 2 if has_control_widget(name, spec) else 1
    if pos != len(values):
        raise ValueError(f"{_node_label(node)}: widgets_values has {len(values)} entries, the node's widgets "
                         f"take {pos}: {values}")
    inputs.update(linked)  # a linked widget input takes the link
    return {"inputs": inputs, "class_type": node["type"],
            "_meta": {"title": node.get("title") or node_info.get("display_name") or node["type"]}}


def ui_to_api(workflow: dict, object_info: dict) -> dict:
    """The API-format prompt of a UI-format workflow: {"<node id>": {"class_type", "inputs", "_meta"}}."""
    links = _links(workflow)
    frontend_nodes = {n["id"]: n["type"] for n in workflow["nodes"] if n["type"] in FRONTEND_ONLY + UNSUPPORTED}
    prompt = {}
    for node in sorted(workflow["nodes"], key=lambda n: n["id"]):
        if node["type"] in FRONTEND_ONLY:
            continue
        if node["type"] in UNSUPPORTED:
            raise ValueError(f"{_node_label(node)} is frontend-only; connect its target directly.")
        if node.get("mode", MODE_ALWAYS) != MODE_ALWAYS:
            raise ValueError(f"{_node_label(node)} is bypassed or muted (mode {node['mode']}); "
                             "enable it or delete it before converting.")
        if node["type"] not in object_info:
            raise ValueError(f"{_node_label(node)}: the server does not know this node type.")
        prompt[str(node["id"])] = convert_node(node, object_info[node["type"]], links, frontend_nodes)
    return prompt


def load_object_info(source: str) -> dict:
    if source.startswith(("http://", "https://")):
        import requests
        reply = requests.get(source.rstrip("/") + "/object_info", timeout=60)
        reply.raise_for_status()
        return reply.json()
    return json.loads(Path(source).read_text(encoding="utf-8"))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("workflow", type=Path, help="UI-format workflow JSON")
    parser.add_argument("--object-info", required=True, help="server URL, or a saved /object_info JSON file")
    parser.add_argument("-o", "--output", type=Path, help="where to write the API JSON (default: stdout)")
    args = parser.parse_args(argv)
    prompt = ui_to_api(json.loads(args.workflow.read_text(encoding="utf-8")), load_object_info(args.object_info))
    text = json.dumps(prompt, indent=2, ensure_ascii=False) + "\n"
    if args.output:
        args.output.write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
