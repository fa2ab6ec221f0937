"""The OmniGen2 adapter: Qwen2.5-VL MLLM -> OmniGen2 DiT on its last hidden states, FLUX VAE.

SGT's setting differs from upstream's training in two ways, both switchable:

* the generation loss flows back into the MLLM (its hidden states are not detached), so the dense
  proxy loss sharpens the understanding representations; ``detach_mllm=True`` restores upstream's
  frozen-MLLM conditioning;
* for the generative proxy tasks the input image reaches the model only through the MLLM
  (``pixel_values`` of Qwen2.5-VL, whose last hidden states condition the DiT), never as a VAE
  reference latent; ``vae_reference_input=True`` adds the latent. Editing samples (text-to-image
  with an input image) keep upstream's reference latents.

Time convention: OmniGen2's ``data_at_one`` (``x_t = t x1 + (1 - t) eps``, target ``x1 - eps``),
``t = sigmoid(N(0, 1))`` with the resolution-dependent shift, MSE normalised per latent element.
Randomness in ``loss`` (times, then noise) comes from the global torch RNG; ``generate`` uses its own
``torch.Generator`` seeded by ``settings.seed``. ``generate`` defaults to upstream's script
settings: 50 Euler steps (the API's default is 28), text guidance 5, image guidance 2, and the
dynamic shift ``sqrt(latent h * w) / 40``.
"""

from __future__ import annotations

import copy
import json
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, Self

import numpy as np
import torch
from numpy.typing import NDArray
from torch.nn import functional

from sgt_models.config import OmniGen2AdapterConfig
from sgt_models.omnigen2.checkpoint import OmniGen2Components, load_components
from sgt_models.omnigen2.configuration import (
    MODEL_INDEX,
    MODEL_INDEX_FILE,
    SGT_ADAPTER_FILE,
    OmniGen2CheckpointError,
)
from sgt_models.omnigen2.processor import (
    OmniGen2Batch,
    OmniGen2Processor,
    target_size,
)
from sgt_models.omnigen2.scheduler import OmniGen2Scheduler, sample_training_times
from sgt_models.protocol import GenerationSettings, LossOutput, LossWeights

__all__ = ["OmniGen2Adapter"]

logger = logging.getLogger(__name__)


class OmniGen2Adapter(torch.nn.Module):
    """OmniGen2 seen through SGT's eyes; implements ``sgt_models.UnifiedModelAdapter``.

    Load with ``OmniGen2Adapter.from_pretrained(folder)`` (an official pipeline folder or one
    ``save_pretrained`` wrote) or ``OmniGen2Adapter.from_config(config)`` (``config.model_path``).
    """

    kind: ClassVar[str] = "omnigen2"

    def __init__(self, config: OmniGen2AdapterConfig, components: OmniGen2Components) -> None:
        super().__init__()
        self.config = config
        self.mllm: Any = components.mllm
        self.transformer: Any = components.transformer
        self.vae: Any = components.vae
        self.tokenizer = components.tokenizer
        self.image_processor = components.image_processor
        self.scheduler: OmniGen2Scheduler = components.scheduler
        self._model_index = dict(components.model_index)
        self._mllm_config = dict(components.mllm_config)
        vae_cfg: Any = self.vae.config
        self.latent_channels = int(vae_cfg.latent_channels)
        self.latent_factor = 2 ** (len(vae_cfg.block_out_channels) - 1)
        self.latent_scale = float(vae_cfg.scaling_factor or 1.0)
        self.latent_shift = float(getattr(vae_cfg, "shift_factor", None) or 0.0)
        mllm_cfg: Any = self.mllm.config
        self.processor = OmniGen2Processor(
            self.tokenizer,
            self.image_processor,
            rope_index=self.mllm.model.get_rope_index,
            image_token_id=int(mllm_cfg.image_token_id),
            latent_factor=self.latent_factor,
            max_text_tokens=config.max_text_tokens,
            max_output_pixels=config.max_output_pixels,
            max_input_pixels=config.max_input_pixels,
            vae_reference_input=config.vae_reference_input,
        )
        if config.lora_rank is not None:
            from sgt_models.omnigen2.lora import (
                MLLM_LORA_TARGETS,
                TRANSFORMER_LORA_TARGETS,
                add_lora,
            )

            alpha = config.lora_alpha if config.lora_alpha is not None else config.lora_rank
            add_lora(self.transformer, config.lora_rank, alpha, TRANSFORMER_LORA_TARGETS)
            if config.lora_mllm:
                add_lora(self.mllm.model.language_model, config.lora_rank, alpha, MLLM_LORA_TARGETS)
        if config.gradient_checkpointing:
            self.transformer.enable_gradient_checkpointing()
            # transformers 5.x renamed gradient_checkpointing_enable (deprecated until v6)
            enable = getattr(self.mllm, "activation_checkpointing_enable", None)
            if enable is None:
                enable = self.mllm.gradient_checkpointing_enable
            enable()
        self.apply_freeze_policy()

    # -- construction --------------------------------------------------------------------------

    @classmethod
    def from_config(
        cls,
        config: OmniGen2AdapterConfig,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | None = None,
    ) -> Self:
        """The adapter of ``config``, with the weights of ``config.model_path``."""
        folder = Path(config.model_path)
        if dtype is None and config.dtype == "bfloat16":
            dtype = torch.bfloat16
        mllm_path = Path(config.mllm_path) if config.mllm_path else None
        # initial weights (LoRA's A matrices, the DiT's init) must not consume the caller's RNG
        with torch.random.fork_rng(devices=[]):
            components = load_components(folder, device=device, dtype=dtype, mllm_path=mllm_path)
            return cls(config, components)

    @classmethod
    def from_pretrained(
        cls, path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype | None = None
    ) -> Self:
        """Load an official pipeline folder or one ``save_pretrained`` wrote (``sgt_adapter.json``).

        Leaves the global torch RNG state untouched.
        """
        folder = Path(path)
        sgt_file = folder / SGT_ADAPTER_FILE
        if sgt_file.is_file():
            try:
                config = OmniGen2AdapterConfig.model_validate_json(
                    sgt_file.read_text(encoding="utf-8")
                )
            except ValueError as exc:
                first = str(exc).splitlines()[0]
                raise OmniGen2CheckpointError(
                    f"{sgt_file}: not a valid adapter config ({first})"
                ) from None
            # the weights come from this folder; the config keeps the path it was built from
            config_here = config.model_copy(update={"model_path": str(folder), "mllm_path": None})
            model = cls.from_config(config_here, device=device, dtype=dtype)
            model.config = config
            return model
        return cls.from_config(OmniGen2AdapterConfig(model_path=str(folder)), device, dtype)

    # -- protocol: structure -------------------------------------------------------------------

    def parameter_groups(self) -> Mapping[str, list[torch.nn.Parameter]]:
        """Parameters by group: vision_encoder (ViT), connector (patch merger), llm, generator, vae."""
        visual = self.mllm.model.visual
        merger = list(visual.merger.parameters())
        merger_ids = {id(p) for p in merger}
        seen: set[int] = set()

        def unique(params: Any) -> list[torch.nn.Parameter]:
            out = []
            for p in params:
                if id(p) not in seen:
                    seen.add(id(p))
                    out.append(p)
            return out

        vision = unique(p for p in visual.parameters() if id(p) not in merger_ids)
        connector = unique(merger)
        llm = unique(
            [*self.mllm.model.language_model.parameters(), *self.mllm.lm_head.parameters()]
        )
        return {
            "vision_encoder": vision,
            "connector": connector,
            "llm": llm,
            "generator": unique(self.transformer.parameters()),
            "vae": unique(self.vae.parameters()),
        }

    def apply_freeze_policy(self) -> None:
        """Set ``requires_grad`` from ``config.freeze`` (and LoRA); the VAE is always frozen."""
        flags = self.config.freeze.frozen_groups()
        for name, params in self.parameter_groups().items():
            for p in params:
                p.requires_grad_(not flags[name])
        if self.config.lora_rank is not None:
            # LoRA: only the adapters of the DiT (and, with lora_mllm, of the LM) train
            lora_ids = {id(p) for n, p in self.named_parameters() if ".lora_" in n}
            modules = [self.transformer] + ([self.mllm] if self.config.lora_mllm else [])
            for module in modules:
                for p in module.parameters():
                    if id(p) not in lora_ids:
                        p.requires_grad_(False)
            if self.config.freeze.generator:
                for p in self.transformer.parameters():
                    p.requires_grad_(False)
        self.vae.eval()

    def train(self, mode: bool = True) -> Self:
        """Switch train/eval mode; the VAE always stays in eval mode."""
        super().train(mode)
        self.vae.eval()
        return self

    @property
    def _device(self) -> torch.device:
        device: torch.device = self.mllm.lm_head.weight.device
        return device

    @property
    def _dtype(self) -> torch.dtype:
        dtype: torch.dtype = self.mllm.lm_head.weight.dtype
        return dtype

    def _trainable(self, module: torch.nn.Module) -> bool:
        return any(p.requires_grad for p in module.parameters())

    # -- protocol: data ------------------------------------------------------------------------

    def collate(self, samples: Sequence[Any]) -> OmniGen2Batch:
        """Tokenise and transform ``sgt_data.Sample``s into an ``OmniGen2Batch`` (on the CPU)."""
        return self.processor.collate(samples)

    # -- building blocks -----------------------------------------------------------------------

    def encode_latents(self, pixels: torch.Tensor) -> torch.Tensor:
        """``(shift-corrected, scaled)`` VAE latents (mode) of ``(B, 3, H, W)`` pixels in [-1, 1]."""
        with torch.no_grad():
            vae_dtype = next(self.vae.parameters()).dtype
            dist = self.vae.encode(pixels.to(vae_dtype)).latent_dist
            latents: torch.Tensor = (dist.mode() - self.latent_shift) * self.latent_scale
        return latents.float()

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Pixels in [-1, 1] of latents (inverse of ``encode_latents``)."""
        with torch.no_grad():
            vae_dtype = next(self.vae.parameters()).dtype
            z = latents / self.latent_scale + self.latent_shift
            pixels: torch.Tensor = self.vae.decode(z.to(vae_dtype)).sample
        return pixels.float()

    def _encode_each(self, images: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Latents of ``(3, H, W)`` images of any sizes (same-size images share a VAE call)."""
        out: list[torch.Tensor | None] = [None] * len(images)
        by_size: dict[tuple[int, ...], list[int]] = {}
        for i, image in enumerate(images):
            by_size.setdefault(tuple(image.shape), []).append(i)
        for rows in by_size.values():
            latents = self.encode_latents(torch.stack([images[i] for i in rows]))
            for k, i in enumerate(rows):
                out[i] = latents[k]
        return [x for x in out if x is not None]

    def _mllm_hidden(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor,
        pixel_values: torch.Tensor,
        image_grid_thw: torch.Tensor,
    ) -> torch.Tensor:
        has_images = pixel_values.shape[0] > 0
        out = self.mllm.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            pixel_values=pixel_values.to(self._dtype) if has_images else None,
            image_grid_thw=image_grid_thw if has_images else None,
            use_cache=False,
        )
        hidden: torch.Tensor = out.last_hidden_state
        return hidden

    def _velocity(
        self,
        latents: Sequence[torch.Tensor],
        t: torch.Tensor,
        cond: torch.Tensor,
        cond_mask: torch.Tensor,
        cond_lengths: Sequence[int],
        references: Sequence[Sequence[torch.Tensor]],
    ) -> list[torch.Tensor]:
        dtype = self.transformer.dtype
        out: list[torch.Tensor] = self.transformer(
            [x.to(dtype) for x in latents],
            t.to(dtype),
            cond.to(dtype),
            None,
            cond_mask,
            [[r.to(dtype) for r in refs] for refs in references],
            text_lengths=list(cond_lengths),
        )
        return out

    # Every trainable parameter gets a gradient in every micro-batch, zeros on a path the batch
    # does not take, so that all ranks reduce the same gradients (ZeRO 0-3). The zeros come from
    # running the idle module's own forward on a minimal constant input times 0, never from
    # reading ``.weight`` outside the owning module's forward (ZeRO-3 gathers parameters only
    # around their module's forward). These forwards draw no random numbers.

    def _idle_vision_zero(self) -> torch.Tensor:
        visual = self.mllm.model.visual
        if not self._trainable(visual):
            return torch.zeros((), device=self._device)
        cfg: Any = visual.config
        patch = int(cfg.in_channels) * int(cfg.temporal_patch_size) * int(cfg.patch_size) ** 2
        merge = int(cfg.spatial_merge_size)
        pixels = torch.zeros(merge * merge, patch, device=self._device, dtype=self._dtype)
        grid = torch.tensor([[1, merge, merge]], device=self._device)
        features: torch.Tensor = visual(pixels, grid_thw=grid).pooler_output
        return (features.float() * 0.0).sum()

    def _idle_lm_head_zero(self, hidden: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.mllm.lm_head(hidden[:0, 0].detach())
        return logits.float().sum()

    def _idle_generator_zero(self) -> torch.Tensor:
        if not self._trainable(self.transformer):
            return torch.zeros((), device=self._device)
        cfg: Any = self.transformer.config
        p, device = int(cfg.patch_size), self._device
        x = torch.zeros(int(cfg.in_channels), p, p, device=device)
        cond = torch.zeros(1, 1, int(cfg.text_feat_dim), device=device)
        mask = torch.ones(1, 1, dtype=torch.bool, device=device)
        v = self._velocity([x], torch.zeros(1, device=device), cond, mask, [1], [[]])
        return (v[0].float() * 0.0).sum()

    # -- protocol: loss ------------------------------------------------------------------------

    def forward(self, batch: OmniGen2Batch, weights: LossWeights | None = None) -> LossOutput:
        """Same as ``loss`` (so that a DeepSpeed engine can be called with the batch alone)."""
        return self.loss(batch, weights if weights is not None else LossWeights())

    def loss(self, batch: OmniGen2Batch, weights: LossWeights | None = None) -> LossOutput:
        """Cross-entropy of answer tokens plus flow-matching MSE of target latents.

        Counts and indices come from collate-time CPU data: no value is read back from the device
        before the per-task logging figures at the very end.
        """
        weights = weights if weights is not None else LossWeights()
        batch = batch.to(self._device)
        device = self._device
        idle_paths = torch.is_grad_enabled()
        hidden = self._mllm_hidden(
            batch.input_ids,
            batch.attention_mask,
            batch.position_ids,
            batch.pixel_values,
            batch.image_grid_thw,
        )
        idle = torch.zeros((), device=device)
        if idle_paths and batch.pixel_values.shape[0] == 0:
            idle = idle + self._idle_vision_zero()
        num_rows = batch.num_samples

        # cross-entropy of the answers: h[i] predicts labels[i + 1]
        ce_count = sum(batch.answer_token_counts)
        row_ce: list[torch.Tensor] = []
        if ce_count:
            width = batch.input_ids.shape[1]
            rows, cols = [], []
            for i, (length, n) in enumerate(
                zip(batch.row_lengths, batch.answer_token_counts, strict=True)
            ):
                rows += [i] * n
                cols += list(range(length - n - 1, length - 1))
            flat = torch.tensor([r * width + c for r, c in zip(rows, cols, strict=True)])
            flat = flat.to(device)
            states = hidden.reshape(-1, hidden.shape[-1]).index_select(0, flat)
            targets = batch.labels.reshape(-1).index_select(0, flat + 1)
            logits = self.mllm.lm_head(states).float()
            token_ce = functional.cross_entropy(logits, targets, reduction="none")
            ce = token_ce.sum() / ce_count
            start = 0
            for n in batch.answer_token_counts:
                row_ce.append(token_ce[start : start + n].detach().sum())
                start += n
        else:
            ce = torch.zeros((), device=device)
            if idle_paths:
                idle = idle + self._idle_lm_head_zero(hidden)

        # flow matching of the generative rows, conditioned on the MLLM's last hidden states
        gen_rows = batch.gen_row_list
        mse_count = 0
        row_mse: list[torch.Tensor] = []
        if gen_rows:
            data = self._encode_each(batch.targets)
            t = sample_training_times(batch.latent_token_counts, self.config.flow, device=device)
            noise = [torch.randn(x.shape, device=device, dtype=x.dtype) for x in data]
            x_t = [ti * x + (1.0 - ti) * e for ti, x, e in zip(t, data, noise, strict=True)]
            target = [x - e for x, e in zip(data, noise, strict=True)]
            references = [self._encode_each(refs) if refs else [] for refs in batch.references]
            index = batch.gen_rows
            cond = hidden.index_select(0, index)
            if self.config.detach_mllm:
                # upstream: the MLLM is a frozen text encoder of the DiT
                cond = cond.detach()
                if idle_paths and self._trainable(self.mllm):
                    idle = idle + (hidden.float() * 0.0).sum()
            cond_mask = batch.attention_mask.index_select(0, index).bool()
            lengths = [batch.row_lengths[i] for i in gen_rows]
            pred = self._velocity(x_t, t, cond, cond_mask, lengths, references)
            sums = [((p.float() - u.float()) ** 2).sum() for p, u in zip(pred, target, strict=True)]
            mse_count = sum(int(u.numel()) for u in target)
            mse = torch.stack(sums).sum() / mse_count
            row_mse = [s.detach() / int(u.numel()) for s, u in zip(sums, target, strict=True)]
        else:
            mse = torch.zeros((), device=device)
            if idle_paths:
                idle = idle + self._idle_generator_zero()

        total = weights.ce * ce + weights.mse * mse + idle
        return LossOutput(
            total=total,
            parts={"ce": ce, "mse": mse},
            token_counts={"ce": ce_count, "mse": mse_count},
            per_task=_per_task(batch, row_ce, row_mse, num_rows),
        )

    # -- protocol: inference -------------------------------------------------------------------

    @torch.no_grad()
    def answer(
        self,
        images: Sequence[NDArray[np.uint8]],
        questions: Sequence[str],
        max_new_tokens: int = 32,
    ) -> list[str]:
        """Greedy answers (at most ``max_new_tokens`` tokens, KV cache) to one question per image."""
        if len(images) != len(questions):
            raise ValueError(f"got {len(images)} images for {len(questions)} questions")
        proc = self.processor
        answers = []
        for image, question in zip(images, questions, strict=True):
            pixels, grid, counts = proc.mllm_images([image])
            ids = proc._encode(proc.understanding_prompt(question, proc.vision_text(counts[0])))
            input_ids = torch.tensor([ids], device=self._device)
            out = self.mllm.generate(
                input_ids=input_ids,
                attention_mask=torch.ones_like(input_ids),
                pixel_values=pixels.to(self._device, self._dtype),
                image_grid_thw=grid.to(self._device),
                mm_token_type_ids=(input_ids == proc.image_token_id).long(),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                num_beams=1,
                use_cache=True,
                eos_token_id=proc.im_end_id,
                pad_token_id=proc.pad_id,
            )
            generated = [int(x) for x in out[0, len(ids) :].tolist()]
            if proc.im_end_id in generated:
                generated = generated[: generated.index(proc.im_end_id)]
            answers.append(proc.decode(generated))
        return answers

    @torch.no_grad()
    def generate(
        self,
        instructions: Sequence[str],
        images: Sequence[NDArray[np.uint8]] | None = None,
        settings: GenerationSettings | None = None,
        *,
        edit: bool = False,
        negative_prompt: str = "",
        cfg_range: tuple[float, float] = (0.0, 1.0),
    ) -> list[NDArray[np.uint8]]:
        """Draw one HxWx3 uint8 image per instruction (Euler steps, text and image guidance).

        With ``images`` the image reaches the DiT through the MLLM (SGT's proxy route; plus a VAE
        reference latent with ``vae_reference_input``); ``edit=True`` takes upstream's editing
        route instead (MLLM text only, the image as a reference latent). Guidance is three-way
        when an image is given and both scales exceed 1 (``uncond + image (image_cond - uncond)
        + text (cond - image_cond)``), two-way otherwise, and applies in the steps whose fraction
        ``i / steps`` lies in ``cfg_range``. The output size is ``settings.height/width``, else the
        input image's size, else a square of ``max_output_pixels``.
        """
        settings = settings if settings is not None else GenerationSettings()
        if images is not None and len(images) != len(instructions):
            raise ValueError(f"got {len(images)} images for {len(instructions)} instructions")
        if not instructions:
            return []
        flow = self.config.flow
        text_scale = (
            settings.cfg_text_scale if settings.cfg_text_scale is not None else flow.cfg_text_scale
        )
        image_scale = (
            settings.cfg_image_scale
            if settings.cfg_image_scale is not None
            else flow.cfg_image_scale
        )
        steps = settings.num_steps or flow.num_inference_steps
        generator = torch.Generator().manual_seed(settings.seed)
        side = math.isqrt(self.config.max_output_pixels)

        outputs: list[NDArray[np.uint8] | None] = [None] * len(instructions)
        plans = []
        for i, text in enumerate(instructions):
            image = images[i] if images is not None else None
            if settings.height is not None or settings.width is not None:
                size = (settings.height or side, settings.width or side)
            elif image is not None:
                size = (int(image.shape[0]), int(image.shape[1]))
            else:
                size = (side, side)
            work = target_size(size[0], size[1], self.config.max_output_pixels)
            plans.append((i, text, image, size, work))
        # samples of one working size share the DiT calls (their time grids coincide)
        groups: dict[tuple[int, int], list[Any]] = {}
        for plan in plans:
            groups.setdefault(plan[4], []).append(plan)
        for work, group in groups.items():
            lat_h, lat_w = work[0] // self.latent_factor, work[1] // self.latent_factor
            noise = [
                torch.randn((self.latent_channels, lat_h, lat_w), generator=generator)
                for _ in group
            ]
            pixels = self._sample_group(
                group,
                noise,
                text_scale,
                image_scale,
                steps,
                settings.shift,
                edit,
                negative_prompt,
                cfg_range,
            )
            for (i, _text, _image, size, _work), out in zip(group, pixels, strict=True):
                if tuple(out.shape[-2:]) != size:
                    out = functional.interpolate(
                        out[None], size=size, mode="bilinear", antialias=True, align_corners=False
                    )[0]
                array = ((out.clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8)
                outputs[i] = array.permute(1, 2, 0).cpu().numpy()
        return [o for o in outputs if o is not None]

    def _sample_group(
        self,
        group: Sequence[Any],
        noise: Sequence[torch.Tensor],
        text_scale: float,
        image_scale: float,
        steps: int,
        shift: float | None,
        edit: bool,
        negative_prompt: str,
        cfg_range: tuple[float, float],
    ) -> list[torch.Tensor]:
        proc = self.processor
        device = self._device
        n = len(group)
        has_image = group[0][2] is not None
        image_guided = has_image and text_scale > 1.0 and image_scale > 1.0
        text_guided = text_scale > 1.0
        to_mllm = has_image and not edit
        as_reference = has_image and (edit or self.config.vae_reference_input)

        mllm_images = [image for (_, _, image, _, _) in group] if to_mllm else []
        pixel_values, grid, counts = proc.mllm_images(mllm_images)
        visions = [proc.vision_text(c) for c in counts] if to_mllm else [""] * n
        # rows: conditional, then (image-conditional), then unconditional
        rows = [
            proc.generation_prompt(text, v)
            for (_, text, *_), v in zip(group, visions, strict=False)
        ]
        if image_guided:
            rows += [proc.generation_prompt(negative_prompt, v) for v in visions]
        if text_guided:
            rows += [proc.generation_prompt(negative_prompt)] * n
        row_ids = [proc._encode(r) for r in rows]
        # the images appear in the conditional and image-conditional rows, in that order
        if to_mllm and image_guided:
            pixel_values = torch.cat([pixel_values, pixel_values])
            grid = torch.cat([grid, grid])
        input_ids, mask, position_ids = proc.pad_rows(row_ids, grid)
        hidden = self._mllm_hidden(
            input_ids.to(device),
            mask.to(device),
            position_ids.to(device),
            pixel_values.to(device),
            grid.to(device),
        )
        lengths = [len(r) for r in row_ids]
        cond_mask = mask.to(device).bool()

        references: list[list[torch.Tensor]] = [[] for _ in rows]
        if as_reference:
            refs = [
                self.encode_latents(proc.reference_pixels(image)[None].to(device))[0]
                for (_, _, image, _, _) in group
            ]
            for k in range(n):
                references[k] = [refs[k]]
                if image_guided:
                    references[n + k] = [refs[k]]

        lat_h, lat_w = noise[0].shape[-2:]
        times = self.scheduler.set_timesteps(steps, num_tokens=lat_h * lat_w, shift=shift)
        if shift is None and not self.config.flow.dynamic_shift:
            times = self.scheduler.set_timesteps(steps, shift=self.config.flow.inference_shift)
        x = torch.stack(list(noise)).to(device)
        k = len(rows) // n
        for step in range(steps):
            guided = cfg_range[0] <= step / steps <= cfg_range[1]
            active = k if guided else 1
            t = times[step].expand(n * active).to(device)
            latents = [x[j % n] for j in range(n * active)]
            v = torch.stack(
                self._velocity(
                    latents,
                    t,
                    hidden[: n * active],
                    cond_mask[: n * active],
                    lengths[: n * active],
                    references[: n * active],
                )
            ).float()
            chunks = v.chunk(active)
            velocity = chunks[0]
            if guided and image_guided:
                velocity = (
                    chunks[2]
                    + image_scale * (chunks[1] - chunks[2])
                    + text_scale * (chunks[0] - chunks[1])
                )
            elif guided and text_guided:
                velocity = chunks[-1] + text_scale * (chunks[0] - chunks[-1])
            x = self.scheduler.step(velocity, step, x.float())
        return list(self.decode_latents(x).float())

    # -- LoRA ----------------------------------------------------------------------------------

    def merge_lora(self) -> None:
        """Fold LoRA adapters into the base weights (the official layout); training stops on them."""
        from sgt_models.omnigen2.lora import merge_lora

        merge_lora(self.transformer)
        merge_lora(self.mllm)
        self.config = self.config.model_copy(update={"lora_rank": None, "lora_mllm": False})
        self.apply_freeze_policy()

    # -- protocol: persistence -----------------------------------------------------------------

    def save_pretrained(self, path: str | Path) -> None:
        """Write the official pipeline layout (LoRA merged in) plus ``sgt_adapter.json``."""
        from safetensors.torch import save_file

        from sgt_models.omnigen2.lora import has_lora, merged_state_dict

        folder = Path(path)
        folder.mkdir(parents=True, exist_ok=True)
        index = dict(self._model_index) if self._model_index else dict(MODEL_INDEX)
        (folder / MODEL_INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")

        mllm_dir = folder / "mllm"
        if has_lora(self.mllm):
            merged_mllm = copy.deepcopy(self.mllm)
            from sgt_models.omnigen2.lora import merge_lora

            merge_lora(merged_mllm)
            merged_mllm.save_pretrained(mllm_dir)
        else:
            self.mllm.save_pretrained(mllm_dir)
        if self._mllm_config:
            # keep the published (flat, transformers 4.x readable) config
            (mllm_dir / "config.json").write_text(json.dumps(self._mllm_config, indent=2) + "\n")

        processor_dir = folder / "processor"
        self.tokenizer.save_pretrained(processor_dir)
        self.image_processor.save_pretrained(processor_dir)

        transformer_dir = folder / "transformer"
        transformer_dir.mkdir(parents=True, exist_ok=True)
        self.transformer.save_config(transformer_dir)
        state = merged_state_dict(self.transformer) if has_lora(self.transformer) else None
        if state is None:
            state = self.transformer.state_dict()
        save_file(
            {k: v.detach().contiguous() for k, v in state.items()},
            str(transformer_dir / "diffusion_pytorch_model.safetensors"),
            metadata={"format": "pt"},
        )
        self.vae.save_pretrained(folder / "vae")
        scheduler_dir = folder / "scheduler"
        scheduler_dir.mkdir(parents=True, exist_ok=True)
        (scheduler_dir / "scheduler_config.json").write_text(
            json.dumps(self.scheduler.config_dict(), indent=2) + "\n"
        )
        (folder / SGT_ADAPTER_FILE).write_text(self.config.model_dump_json(indent=2) + "\n")
        logger.info("saved the OmniGen2 adapter to %s", folder)


def _per_task(
    batch: OmniGen2Batch,
    row_ce: Sequence[torch.Tensor],
    row_mse: Sequence[torch.Tensor],
    num_rows: int,
) -> dict[str, dict[str, float | torch.Tensor]]:
    """Per-task logging figures as detached device tensors (the trainer reads them when it
    logs, so the step never waits for the device)."""
    ce_of = dict(enumerate(t.detach().double() for t in row_ce))
    mse_of = dict(zip(batch.gen_row_list, (t.detach().double() for t in row_mse), strict=True))
    out: dict[str, dict[str, float | torch.Tensor]] = {}
    for task in sorted(set(batch.tasks)):
        rows = [i for i in range(num_rows) if batch.tasks[i] == task]
        entry: dict[str, float | torch.Tensor] = {"samples": float(len(rows))}
        tokens = sum(batch.answer_token_counts[i] for i in rows)
        ce_rows = [ce_of[i] for i in rows if i in ce_of]
        if tokens and ce_rows:
            entry["ce"] = torch.stack(ce_rows).sum() / tokens
        mse = [mse_of[i] for i in rows if i in mse_of]
        if mse:
            entry["mse"] = torch.stack(mse).mean()
        out[task] = entry
    return out
