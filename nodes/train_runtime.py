"""What Train Erasure LoRA does inside ComfyUI: progress, live events, saving, the erased model."""

import logging
from dataclasses import dataclass

import torch

import comfy.model_management
import comfy.sd
import comfy.utils
import folder_paths

from ..eraseanything_core import __version__, lora_file
from ..eraseanything_core.comfy_flux import ClipText, FluxRunner
from ..eraseanything_core.config import EraseConfig
from ..eraseanything_core.lora import ErasureLoRA, flux_targets
from ..eraseanything_core.trainer import Callbacks, NonFiniteLossError, StepReport, train_erasure
from . import visual

log = logging.getLogger(__name__)

EVENT_LOSS = "eraseanything.loss"


@dataclass
class NodeResult:
    model: object
    lora: dict
    file_name: str
    loss_image: torch.Tensor


def _send(event: str, data: dict):
    try:
        from server import PromptServer
    except ImportError:  # in-process use without the server
        return
    instance = getattr(PromptServer, "instance", None)
    if instance is not None:
        instance.send_sync(event, data)


def _callbacks(cfg: EraseConfig, node_id) -> Callbacks:
    pbar = comfy.utils.ProgressBar(cfg.steps, node_id=node_id)

    def on_step(report: StepReport):
        _send(EVENT_LOSS, {"node": node_id, "step": report.step, "total": report.total,
                           "phase": report.phase, "values": report.values})
        # The attention preview rides on the progress update: ComfyUI shows it under the node.
        preview = None if report.preview is None else ("JPEG", visual.heatmap(report.preview), 256)
        pbar.update_absolute(report.step, report.total, preview)

    return Callbacks(on_step=on_step,
                     check_interrupt=comfy.model_management.throw_exception_if_processing_interrupted,
                     preview_every=max(1, min(10, cfg.steps // 10)))


def _metadata(cfg: EraseConfig, result, model) -> dict:
    return {"config": cfg.to_metadata(),
            "concepts": {"concept": result.concepts.concept, "anchor": result.concepts.anchor,
                         "synonyms": list(result.concepts.synonyms), "irrelevant": list(result.concepts.irrelevant)},
            "cost": result.cost, "pathway": result.pathway, "seconds": round(result.seconds, 2), "version": __version__,
            "base_model": lora_file.model_fingerprint(model.model.diffusion_model.state_dict().items())}


def new_lora(cfg: EraseConfig, model) -> ErasureLoRA:
    p = model.model.diffusion_model.params
    targets = flux_targets(cfg.targets, p.hidden_size, p.depth, p.depth_single_blocks, p.vec_in_dim)
    dtype = torch.float32 if cfg.lora_dtype == "float32" else torch.bfloat16
    return ErasureLoRA(targets, cfg.rank, generator=torch.Generator().manual_seed(cfg.seed), dtype=dtype)


def train_in_node(model, clip, cfg: EraseConfig, lora_name: str, node_id=None, latents=None) -> NodeResult:
    folder = folder_paths.get_folder_paths("loras")[0]
    lora_file.safe_lora_path(folder, lora_name)  # refuse a bad name before hours of training
    with torch.inference_mode(False), torch.enable_grad():  # the executor runs nodes in inference mode
        lora = new_lora(cfg, model)
        runner = FluxRunner(model, lora, cfg.gradient_checkpointing)
        try:
            concept_latents = None if latents is None else model.model.process_latent_in(latents.clone())
            result = train_erasure(cfg, runner, ClipText(clip), _callbacks(cfg, node_id), concept_latents)
        except NonFiniteLossError as err:
            kept = lora_file.save_lora_file(lora_file.peft_state_dict(lora, torch.float32), folder,
                                            f"{lora_name}_lastgood_step{err.step - 1}", {"config": cfg.to_metadata()})
            raise RuntimeError(f"{err} Saved as {kept.name}.") from err
        except comfy.model_management.InterruptProcessingException:
            log.info("Train Erasure LoRA interrupted: nothing was written to models/loras.")
            raise
    state_dict = lora_file.peft_state_dict(lora, torch.float32)
    metadata = _metadata(cfg, result, model)
    path = lora_file.save_lora_file(state_dict, folder, lora_name, metadata)
    log.info("saved %s (%d tensors) after %.1f s; %.0f forward-equivalents", path, len(state_dict),
             result.seconds, result.cost["forward_equivalents"])
    erased, _ = comfy.sd.load_lora_for_models(model, None, state_dict, 1.0, 0)
    chart = visual.to_image_tensor(visual.loss_chart(result.history))
    # the in-graph LoRA carries the same metadata as the file header, so Apply describes both alike
    return NodeResult(erased, {"state_dict": state_dict, "metadata": lora_file.encode_metadata(metadata)}, path.name, chart)
