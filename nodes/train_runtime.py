"""What Train Erasure LoRA does inside ComfyUI: progress, live events, saving, the erased model."""

import logging
from dataclasses import dataclass

import torch

import comfy.model_management
import comfy.utils
import folder_paths

from ..eraseanything_core import __version__, lora_file
from ..eraseanything_core.comfy import flux
from ..eraseanything_core.comfy.text import ClipText
from ..eraseanything_core.config import EraseConfig
from ..eraseanything_core.trainer import Callbacks, NonFiniteLossError, StepReport
from . import visual

log = logging.getLogger(__name__)

EVENT_LOSS = "eraseanything.loss"
EVENT_PHASE = "eraseanything.phase"


@dataclass
class NodeResult:
    model: object
    lora: dict
    file_name: str
    loss_image: torch.Tensor


def _send(event: str, data: dict):
    """To the client that queued the prompt only, tagged with its prompt id; nothing for a prompt queued
    without a client id (an API call), as ComfyUI does with its own execution events."""
    try:
        from server import PromptServer
    except ImportError:  # in-process use without the server
        return
    instance = getattr(PromptServer, "instance", None)
    client = getattr(instance, "client_id", None)
    if client is not None:
        instance.send_sync(event, {**data, "prompt_id": getattr(instance, "last_prompt_id", None)}, client)


def _callbacks(cfg: EraseConfig, node_id, latent_format=None) -> Callbacks:
    """One progress bar over data generation then training (data passes first, then steps), so it moves
    from the first second and never goes back; the chart's header names the data phase."""
    pbar = comfy.utils.ProgressBar(cfg.steps, node_id=node_id)
    data_total = 0

    def on_data(label: str, done: int, total: int):
        nonlocal data_total
        data_total = total
        _send(EVENT_PHASE, {"node": node_id, "label": label, "done": done, "total": total})
        pbar.update_absolute(done, total + cfg.steps)

    def on_step(report: StepReport):
        _send(EVENT_LOSS, {"node": node_id, "step": report.step, "total": report.total,
                           "phase": report.phase, "values": report.values})
        # The attention preview rides on the progress update: ComfyUI shows it under the node, as the map
        # over the concept picture whose trajectory the step trained on.
        preview = None
        if report.preview is not None:
            picture = visual.latent_picture(report.preview_latent, latent_format)
            preview = ("JPEG", visual.overlay(report.preview, picture), 256)
        pbar.update_absolute(data_total + report.step, data_total + report.total, preview)

    erase_steps = cfg.steps * cfg.erase_steps_per_preserve // (cfg.erase_steps_per_preserve + 1)
    return Callbacks(on_step=on_step, on_data=on_data,
                     check_interrupt=comfy.model_management.throw_exception_if_processing_interrupted,
                     preview_every=max(1, min(10, erase_steps // 10)))


def _metadata(cfg: EraseConfig, result, model) -> dict:
    return {"config": cfg.to_metadata(),
            "concepts": {"concept": result.concepts.concept, "preset": cfg.preset,
                         "prompts": list(result.concepts.prompts), "anchors": list(result.concepts.anchors),
                         "synonyms": list(result.concepts.synonyms), "irrelevant": list(result.concepts.irrelevant),
                         "retain": list(result.concepts.retain)},
            "cost": result.cost, "pathway": result.pathway, "seconds": round(result.seconds, 2), "version": __version__,
            "base_model": lora_file.model_fingerprint(model.model.diffusion_model.state_dict().items())}


def check_lora_name(lora_name: str):
    """Refuse a file name that could leave models/loras (ValueError naming what to type)."""
    lora_file.safe_lora_path(folder_paths.get_folder_paths("loras")[0], lora_name)


def train_in_node(model, clip, cfg: EraseConfig, lora_name: str, node_id=None, latents=None) -> NodeResult:
    folder = folder_paths.get_folder_paths("loras")[0]
    check_lora_name(lora_name)  # refuse a bad name before hours of training
    runner = flux.build_runner(model, cfg)  # refuses a model that is not a FLUX.1
    try:
        callbacks = _callbacks(cfg, node_id, model.model.latent_format)
        erasure = flux.train(model, ClipText(clip), cfg, callbacks, latents, runner=runner)
    except NonFiniteLossError as err:
        kept = lora_file.save_lora_file(lora_file.peft_state_dict(runner.lora, torch.float32), folder,
                                        f"{lora_name}_lastgood_step{err.step - 1}", {"config": cfg.to_metadata()})
        raise RuntimeError(f"{err} Saved as {kept.name}.") from err
    except comfy.model_management.InterruptProcessingException:
        log.info("Train Erasure LoRA interrupted: nothing was written to models/loras.")
        raise
    result = erasure.result
    metadata = _metadata(cfg, result, model)
    path = lora_file.save_lora_file(erasure.state_dict, folder, lora_name, metadata)
    log.info("saved %s (%d tensors) after %.1f s; %.0f forward-equivalents", path, len(erasure.state_dict),
             result.seconds, result.cost["forward_equivalents"])
    chart = visual.to_image_tensor(visual.loss_chart(result.history))
    # the in-graph LoRA carries the same metadata as the file header, so Apply describes both alike
    return NodeResult(erasure.model, {"state_dict": erasure.state_dict, "metadata": lora_file.encode_metadata(metadata)},
                      path.name, chart)
