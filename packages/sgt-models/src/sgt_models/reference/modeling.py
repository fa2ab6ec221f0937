"""The reference unified model: SigLIP -> connector -> Qwen2 LM -> Lumina-2 DiT on LM hidden states.

Built only from library blocks: ``transformers.SiglipVisionModel`` (understanding encoder),
``transformers.Qwen2ForCausalLM`` (the LM, answers by cross-entropy), and
``diffusers.Lumina2Transformer2DModel`` (the generator, OmniGen2's DiT family) that predicts the
flow-matching velocity of image latents conditioned on the LM's last hidden states of the whole
row, image tokens included. Latents are patchified pixels (space-to-depth) or the latents of a
frozen diffusers ``AutoencoderKL``.

With ``spatial_condition`` the generator also gets the LM's last hidden states at the image-token
positions laid out on the latent grid (a linear layer per token, pixel-shuffled from the token grid
to the latent grid) as its reference channels. The input image then reaches the generator in two
forms, both only through the understanding encoder and the LM: as caption tokens (1-D positions) and
as a spatially aligned map. The map is zero wherever the image condition is dropped (rows without
an image, condition dropout, the unconditional branch of classifier-free guidance).

Time convention: OmniGen2's ``data_at_one`` (``x_t = t x0 + (1 - t) eps``, target ``x0 - eps``);
the DiT receives ``1000 t``. Randomness in ``loss`` (times, noise, condition dropout, in that
order) comes from the global torch RNG, so a trainer reproduces a step by restoring
``torch.get_rng_state()``; ``generate`` uses its own generator seeded by ``settings.seed``.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, Self

import numpy as np
import torch
from numpy.typing import NDArray
from tokenizers import Tokenizer
from torch.nn import functional

from sgt_models.config import ReferenceAdapterConfig
from sgt_models.flow import (
    TimeConvention,
    cfg_combine,
    euler_sample,
    inference_timesteps,
    resolution_shift,
    training_pair,
)
from sgt_models.protocol import GenerationSettings, LossOutput, LossWeights
from sgt_models.reference.configuration import architecture_for, check_geometry
from sgt_models.reference.processor import (
    SPECIAL_TOKENS,
    ReferenceBatch,
    ReferenceProcessor,
    build_tokenizer,
    images_to_tensor,
)

__all__ = ["ReferenceAdapter", "ReferenceCheckpointError"]

logger = logging.getLogger(__name__)

_CONVENTION: TimeConvention = "data_at_one"
_TIMESTEP_SCALE = 1000.0
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
TOKENIZER_FILE = "tokenizer.json"
VAE_CONFIG_FILE = "vae_config.json"


class ReferenceCheckpointError(ValueError):
    """A checkpoint folder or VAE path that cannot be loaded; the message names the file."""


#: Channels of the first stage of the convolutional stem; later stages use twice as many.
CONV_STEM_WIDTH = 32


class ConvStem(torch.nn.Module):
    """``vision_stem='conv'``: the SigLIP patch embedding replaced by a small CNN.

    ``log2(patch)`` stages of ``3x3 conv -> GELU -> 2x2 max pool`` (``CONV_STEM_WIDTH`` channels,
    then twice as many), one more ``3x3 conv -> GELU`` and a ``1x1`` projection to the ViT width:
    ``(B, 3, S, S) -> (B, width, S / patch, S / patch)``, the shape of the patch embedding.
    Full-resolution 3x3 filters with max pooling find small shapes anywhere in the image, which a
    linear map of each 8x8 patch learns slowly from scratch.
    """

    def __init__(self, patch: int, width: int) -> None:
        super().__init__()
        layers: list[torch.nn.Module] = []
        c_in = 3
        for stage in range(int(math.log2(patch))):
            c_out = CONV_STEM_WIDTH * min(2**stage, 2)
            layers += [
                torch.nn.Conv2d(c_in, c_out, 3, padding=1),
                torch.nn.GELU(),
                torch.nn.MaxPool2d(2),
            ]
            c_in = c_out
        layers += [torch.nn.Conv2d(c_in, c_in, 3, padding=1), torch.nn.GELU()]
        layers.append(torch.nn.Conv2d(c_in, width, 1))
        self.layers = torch.nn.Sequential(*layers)

    @property
    def weight(self) -> torch.Tensor:
        """The first convolution's weight (SigLIP reads the input dtype from it)."""
        first = self.layers[0]
        assert isinstance(first, torch.nn.Conv2d)
        return first.weight

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """Token grid features of ``pixels``."""
        out: torch.Tensor = self.layers(pixels)
        return out


def _load_vae(path: str) -> torch.nn.Module:
    from diffusers import AutoencoderKL

    folder = Path(path)
    if not (folder / "config.json").is_file():
        raise ReferenceCheckpointError(
            f"vae_path {str(folder)!r} is not a diffusers AutoencoderKL folder "
            f"(missing {folder / 'config.json'})"
        )
    vae: torch.nn.Module = AutoencoderKL.from_pretrained(str(folder))  # type: ignore[no-untyped-call]
    return vae


class ReferenceAdapter(torch.nn.Module):
    """The reference unified model; implements ``sgt_models.UnifiedModelAdapter``.

    Build with ``ReferenceAdapter(config)`` (weights from the global torch RNG; seed it first) or
    load with ``ReferenceAdapter.from_pretrained(path)``.
    """

    kind: ClassVar[str] = "reference"

    def __init__(
        self,
        config: ReferenceAdapterConfig,
        *,
        tokenizer: Tokenizer | None = None,
        vae: torch.nn.Module | None = None,
    ) -> None:
        super().__init__()
        from diffusers import Lumina2Transformer2DModel
        from transformers import (
            Qwen2Config,
            Qwen2ForCausalLM,
            SiglipVisionConfig,
            SiglipVisionModel,
        )

        self.config = config
        arch = architecture_for(config.size)
        self.arch = arch
        if config.latent_source == "vae":
            if vae is None:
                assert config.vae_path is not None  # enforced by the config validator
                vae = _load_vae(config.vae_path)
            vae_cfg: Any = vae.config
            self.latent_channels = int(vae_cfg.latent_channels)
            self.latent_factor = 2 ** (len(vae_cfg.block_out_channels) - 1)
            self.latent_scale = float(vae_cfg.scaling_factor)
            self.latent_shift = float(getattr(vae_cfg, "shift_factor", None) or 0.0)
        else:
            vae = None
            self.latent_channels = 3 * arch.pixel_patch**2
            self.latent_factor = arch.pixel_patch
            self.latent_scale, self.latent_shift = 1.0, 0.0
        check_geometry(config, self.latent_factor)

        num_image_tokens = (config.image_size // arch.vit_patch) ** 2
        max_positions = num_image_tokens + 3 * config.max_text_tokens + 16
        self.vision_encoder = SiglipVisionModel(
            SiglipVisionConfig(**arch.siglip_config(config.image_size), vision_use_head=False)
        )
        if config.vision_stem == "conv":
            embeddings: Any = self.vision_encoder.embeddings
            embeddings.patch_embedding = ConvStem(arch.vit_patch, arch.vit_hidden)
        self.connector = torch.nn.Sequential(
            torch.nn.LayerNorm(arch.vit_hidden),
            torch.nn.Linear(arch.vit_hidden, arch.lm_hidden),
            torch.nn.GELU(approximate="tanh"),
            torch.nn.Linear(arch.lm_hidden, arch.lm_hidden),
        )
        self.llm: Any = Qwen2ForCausalLM(Qwen2Config(**arch.qwen2_config(max_positions)))
        reference_channels = config.vae_reference_input or config.spatial_condition
        self.generator: Any = Lumina2Transformer2DModel(  # type: ignore[no-untyped-call]
            **arch.lumina2_config(self.latent_channels, reference_channels)
        )
        self.token_grid = config.image_size // arch.vit_patch
        self.spatial_upscale = arch.vit_patch // self.latent_factor
        self.spatial_projection: torch.nn.Linear | None = None
        if config.spatial_condition:
            self.spatial_projection = torch.nn.Linear(
                arch.lm_hidden, self.latent_channels * self.spatial_upscale**2
            )
        self.question_film: torch.nn.Sequential | None = None
        if config.question_film:
            self.question_film = torch.nn.Sequential(
                torch.nn.LayerNorm(arch.lm_hidden),
                torch.nn.Linear(arch.lm_hidden, 2 * arch.lm_hidden),
            )
            last = self.question_film[1]
            assert isinstance(last, torch.nn.Linear)
            torch.nn.init.zeros_(last.weight)  # identity at initialisation
            torch.nn.init.zeros_(last.bias)
        self.vae: Any = vae
        self.tokenizer = tokenizer if tokenizer is not None else build_tokenizer(arch.vocab_size)
        self.processor = ReferenceProcessor(
            self.tokenizer,
            image_size=config.image_size,
            num_image_tokens=num_image_tokens,
            max_text_tokens=config.max_text_tokens,
            reference_input=config.vae_reference_input,
        )
        self.apply_freeze_policy()
        if config.dtype == "bfloat16":
            self.to(torch.bfloat16)

    # -- protocol: structure ------------------------------------------------------------------

    def parameter_groups(self) -> Mapping[str, list[torch.nn.Parameter]]:
        """Parameters by group: vision_encoder, connector, llm, generator, vae.

        The spatial projection (``spatial_condition``) belongs to the generator group, the prompt
        FiLM (``question_film``) to the connector group.
        """
        spatial = self.spatial_projection
        film = self.question_film
        return {
            "vision_encoder": list(self.vision_encoder.parameters()),
            "connector": [
                *self.connector.parameters(),
                *(film.parameters() if film is not None else ()),
            ],
            "llm": list(self.llm.parameters()),
            "generator": [
                *self.generator.parameters(),
                *(spatial.parameters() if spatial is not None else ()),
            ],
            "vae": list(self.vae.parameters()) if self.vae is not None else [],
        }

    def apply_freeze_policy(self) -> None:
        """Set ``requires_grad`` from ``config.freeze``; the VAE is always frozen."""
        flags = self.config.freeze.frozen_groups()
        for name, params in self.parameter_groups().items():
            for p in params:
                p.requires_grad_(not flags[name])
        if self.vae is not None:
            self.vae.eval()

    def train(self, mode: bool = True) -> Self:
        """Switch train/eval mode; the VAE always stays in eval mode."""
        super().train(mode)
        if self.vae is not None:
            self.vae.eval()
        return self

    @property
    def _device(self) -> torch.device:
        device: torch.device = self.llm.lm_head.weight.device
        return device

    @property
    def _dtype(self) -> torch.dtype:
        dtype: torch.dtype = self.llm.lm_head.weight.dtype
        return dtype

    # -- protocol: data -----------------------------------------------------------------------

    def collate(self, samples: Sequence[Any]) -> ReferenceBatch:
        """Tokenise and transform ``sgt_data.Sample``s into a ``ReferenceBatch`` (on the CPU)."""
        return self.processor.collate(samples)

    # -- building blocks ----------------------------------------------------------------------

    def encode_latents(self, pixels: torch.Tensor) -> torch.Tensor:
        """Latents of ``(B, 3, H, W)`` pixels in [-1, 1] (VAE mode latents or space-to-depth)."""
        if self.vae is None:
            return functional.pixel_unshuffle(pixels, self.latent_factor)
        with torch.no_grad():
            dist = self.vae.encode(pixels.to(next(self.vae.parameters()).dtype)).latent_dist
            latents = dist.mode()
        scaled: torch.Tensor = (latents - self.latent_shift) * self.latent_scale
        return scaled.to(pixels.dtype)

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Pixels in [-1, 1] of latents (inverse of ``encode_latents``)."""
        if self.vae is None:
            return functional.pixel_shuffle(latents, self.latent_factor)
        with torch.no_grad():
            z = latents / self.latent_scale + self.latent_shift
            pixels: torch.Tensor = self.vae.decode(z.to(next(self.vae.parameters()).dtype)).sample
        return pixels.float()

    def _embed(self, input_ids: torch.Tensor, pixel_values: torch.Tensor) -> torch.Tensor:
        embeds: torch.Tensor = self.llm.get_input_embeddings()(input_ids)
        if pixel_values.shape[0]:
            features = self.vision_encoder(pixel_values=pixel_values.to(self._dtype))
            image_embeds = self.connector(features.last_hidden_state).to(embeds.dtype)
            slots = (input_ids == self.processor.image_id).unsqueeze(-1)
            if int(slots.sum()) != image_embeds.shape[0] * image_embeds.shape[1]:
                raise ValueError(
                    f"batch has {int(slots.sum())} image slots for {image_embeds.shape[0]} images "
                    f"of {image_embeds.shape[1]} tokens"
                )
            embeds = embeds.masked_scatter(slots, image_embeds)
            if self.question_film is not None:
                embeds = self._film_image_tokens(input_ids, embeds)
        return embeds

    def _film_image_tokens(self, input_ids: torch.Tensor, embeds: torch.Tensor) -> torch.Tensor:
        """``question_film``: image tokens of understanding rows scaled and shifted by the prompt.

        The prompt is the mean embedding of a row's text tokens before ``<answer>`` (special tokens
        excluded). Rows that end in ``<generate>`` are left as they are, so a generative row's
        ``<bos> [image]`` prefix stays free of its instruction (condition dropout and CFG rely on it).
        """
        proc = self.processor
        answer = input_ids == proc.answer_id
        understanding = answer.any(dim=1)
        text = (input_ids >= len(SPECIAL_TOKENS)) & (answer.cumsum(dim=1) == 0)
        weights = text.to(embeds.dtype).unsqueeze(-1)
        prompt = (embeds * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)
        assert self.question_film is not None
        scale, shift = self.question_film(prompt).chunk(2, dim=-1)
        image = (input_ids == proc.image_id) & understanding.unsqueeze(1)
        filmed = embeds * (1.0 + scale.unsqueeze(1)) + shift.unsqueeze(1)
        return torch.where(image.unsqueeze(-1), filmed, embeds)

    def _hidden(self, batch: ReferenceBatch) -> torch.Tensor:
        embeds = self._embed(batch.input_ids, batch.pixel_values)
        out = self.llm.model(inputs_embeds=embeds, attention_mask=batch.attention_mask)
        hidden: torch.Tensor = out.last_hidden_state
        return hidden

    def spatial_reference(
        self, hidden: torch.Tensor, image_on: torch.Tensor, latent_hw: tuple[int, int]
    ) -> torch.Tensor:
        """The ``spatial_condition`` reference of rows of LM hidden states ``(B, L, D)``.

        Row ``i`` reads its hidden states at the image-token positions (``<bos> <vision_start>``
        come first), maps each token to ``latent_channels * up^2`` values, pixel-shuffles the token
        grid up to the latent grid (nearest resize if ``latent_hw`` differs) and is multiplied by
        ``image_on[i]``: zero for rows whose image condition is absent or dropped.
        """
        if self.spatial_projection is None:
            raise ValueError("spatial_reference needs a model built with spatial_condition=True")
        grid, up = self.token_grid, self.spatial_upscale
        start = 2
        count = grid * grid
        rows = hidden.shape[0]
        feats = hidden[:, start : start + count]
        if feats.shape[1] < count:  # rows shorter than an image prefix hold no image
            pad = hidden.new_zeros(rows, count - feats.shape[1], hidden.shape[2])
            feats = torch.cat([feats, pad], dim=1)
        on = image_on.to(feats.dtype).reshape(rows, 1, 1)
        values: torch.Tensor = self.spatial_projection(feats * on) * on
        ref = values.transpose(1, 2).reshape(rows, -1, grid, grid)
        if up > 1:
            ref = functional.pixel_shuffle(ref, up)
        if tuple(ref.shape[-2:]) != tuple(latent_hw):
            ref = functional.interpolate(ref, size=latent_hw, mode="nearest")
        return ref

    def _velocity(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        cond: torch.Tensor,
        cond_len: torch.Tensor,
        reference: torch.Tensor | None,
    ) -> torch.Tensor:
        mask = torch.arange(cond.shape[1], device=cond.device)[None, :] < cond_len[:, None]
        length = int(cond_len.max())
        inputs = x if reference is None else torch.cat([x, reference], dim=1)
        out = self.generator(
            inputs.to(self._dtype),
            (t * _TIMESTEP_SCALE).to(self._dtype),
            cond[:, :length],
            mask[:, :length],
            return_dict=False,
        )
        velocity: torch.Tensor = out[0]
        return velocity

    # Every trainable parameter gets a gradient in every micro-batch, zeros on a path the batch
    # does not take, so that all ranks reduce the same gradients and every optimizer (ZeRO 0-3)
    # updates the same parameters. The zeros come from running the idle path's own modules on a
    # minimal constant input scaled by 0, never from reading ``.weight`` outside the owning
    # module's forward: ZeRO-3 gathers a module's parameters only around its own forward (and
    # its backward) and leaves them at size 0 elsewhere. These forwards draw no random numbers.

    def _idle_vision_zero(self) -> torch.Tensor:
        """0 with zero gradients for the vision encoder and connector (batch without images)."""
        film = self.question_film
        modules = (self.vision_encoder, self.connector, *((film,) if film is not None else ()))
        if not any(p.requires_grad for m in modules for p in m.parameters()):
            return torch.zeros((), device=self._device)
        size = self.config.image_size
        pixels = torch.zeros(1, 3, size, size, device=self._device, dtype=self._dtype)
        features = self.vision_encoder(pixel_values=pixels).last_hidden_state
        embeds: torch.Tensor = self.connector(features)
        if self.question_film is not None:
            embeds = embeds + self.question_film(embeds[:, 0]).sum()
        return (embeds.float() * 0.0).sum()

    def _idle_lm_head_zero(self, hidden: torch.Tensor) -> torch.Tensor:
        """0 with zero gradients for ``lm_head`` (batch without answer tokens): zero rows."""
        logits: torch.Tensor = self.llm.lm_head(hidden[:0, 0].detach())
        return logits.float().sum()

    def _idle_generator_zero(self) -> torch.Tensor:
        """0 with zero gradients for the generator (batch without target images): one token."""
        if not any(p.requires_grad for p in self.generator.parameters()):
            return torch.zeros((), device=self._device)
        p, device = self.arch.dit_patch, self._device
        x = torch.zeros(1, self.latent_channels, p, p, device=device, dtype=self._dtype)
        reference = torch.zeros_like(x) if self.config.vae_reference_input else None
        cond = torch.zeros(1, 1, self.arch.lm_hidden, device=device, dtype=self._dtype)
        one = torch.ones(1, dtype=torch.long, device=device)
        if self.spatial_projection is not None:
            off = torch.zeros(1, dtype=torch.bool, device=device)
            reference = self.spatial_reference(cond, off, (p, p))
        velocity = self._velocity(x, torch.zeros(1, device=device), cond, one, reference)
        return (velocity.float() * 0.0).sum()

    # -- protocol: loss -----------------------------------------------------------------------

    def forward(self, batch: ReferenceBatch, weights: LossWeights | None = None) -> LossOutput:
        """Same as ``loss`` (so that a DeepSpeed engine can be called with the batch alone)."""
        return self.loss(batch, weights if weights is not None else LossWeights())

    def loss(self, batch: ReferenceBatch, weights: LossWeights | None = None) -> LossOutput:
        """Cross-entropy of answer tokens plus flow-matching MSE of target latents."""
        weights = weights if weights is not None else LossWeights()
        batch = batch.to(self._device)
        hidden = self._hidden(batch)
        num_rows = batch.num_samples
        idle = torch.zeros((), device=hidden.device)
        idle_paths = torch.is_grad_enabled()  # the zero gradients matter only for a backward
        if idle_paths and batch.pixel_values.shape[0] == 0:
            idle = idle + self._idle_vision_zero()

        # cross-entropy: h[i] predicts labels[i + 1]
        labels = batch.labels[:, 1:]
        selected = labels != -100
        ce_count = int(selected.sum())
        row_ce = torch.zeros(num_rows, dtype=torch.float64)
        row_tokens = torch.zeros(num_rows, dtype=torch.float64)
        if ce_count:
            logits = self.llm.lm_head(hidden[:, :-1][selected]).float()
            token_ce = functional.cross_entropy(logits, labels[selected], reduction="none")
            ce = token_ce.sum() / ce_count
            rows = selected.nonzero()[:, 0].cpu()
            row_ce.index_add_(0, rows, token_ce.detach().double().cpu())
            row_tokens.index_add_(0, rows, torch.ones_like(rows, dtype=torch.float64))
        else:
            ce = torch.zeros((), device=hidden.device)
            if idle_paths:
                idle = idle + self._idle_lm_head_zero(hidden)

        # flow matching on the generative rows
        gen_rows = batch.gen_rows
        row_mse = torch.zeros(num_rows, dtype=torch.float64)
        mse_count = 0
        if gen_rows.numel():
            data = self.encode_latents(batch.target_pixels.float())
            num_tokens = (data.shape[2] // self.arch.dit_patch) * (
                data.shape[3] // self.arch.dit_patch
            )
            x_t, t, target = training_pair(
                data, self.config.flow, _CONVENTION, num_tokens=num_tokens
            )
            cond_len = batch.attention_mask[gen_rows].sum(dim=1)
            reference = None
            if batch.reference_pixels is not None:
                reference = self.encode_latents(batch.reference_pixels.float())
            elif self.spatial_projection is not None:
                reference = self.spatial_reference(
                    hidden[gen_rows], batch.has_image[gen_rows], (data.shape[2], data.shape[3])
                )
            cond_len, reference = self._condition_dropout(
                cond_len, batch.cond_prefix[gen_rows], reference
            )
            pred = self._velocity(x_t, t, hidden[gen_rows], cond_len, reference)
            err = (pred.float() - target.float()) ** 2
            mse = err.mean()
            mse_count = int(gen_rows.numel()) * data.shape[2] * data.shape[3]
            row_mse[gen_rows.cpu()] = err.detach().mean(dim=(1, 2, 3)).double().cpu()
        else:
            mse = torch.zeros((), device=hidden.device)
            if idle_paths:
                idle = idle + self._idle_generator_zero()

        total = weights.ce * ce + weights.mse * mse + idle.to(hidden.device)
        return LossOutput(
            total=total,
            parts={"ce": ce, "mse": mse},
            token_counts={"ce": ce_count, "mse": mse_count},
            per_task=self._per_task(batch, row_ce, row_tokens, row_mse),
        )

    def _condition_dropout(
        self, cond_len: torch.Tensor, prefix: torch.Tensor, reference: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Drop the text (keep ``<bos> [image]``) or every condition (keep ``<bos>``) at random."""
        p_text, p_all = self.config.text_cond_dropout, self.config.uncond_dropout
        if p_text == 0.0 and p_all == 0.0:
            return cond_len, reference
        u = torch.rand(cond_len.shape[0]).to(cond_len.device)  # drawn in eval mode too
        if not self.training:
            return cond_len, reference
        drop_all = u < p_all
        drop_text = (u >= p_all) & (u < p_all + p_text)
        cond_len = torch.where(drop_text, prefix, cond_len)
        cond_len = torch.where(drop_all, torch.ones_like(cond_len), cond_len)
        if reference is not None:
            keep = (~drop_all).to(reference.dtype).reshape(-1, 1, 1, 1)
            reference = reference * keep
        return cond_len, reference

    @staticmethod
    def _per_task(
        batch: ReferenceBatch,
        row_ce: torch.Tensor,
        row_tokens: torch.Tensor,
        row_mse: torch.Tensor,
    ) -> dict[str, dict[str, float]]:
        out: dict[str, dict[str, float]] = {}
        gen = set(batch.gen_rows.tolist())
        for task in sorted(set(batch.tasks)):
            rows = [i for i, name in enumerate(batch.tasks) if name == task]
            entry: dict[str, float] = {"samples": float(len(rows))}
            tokens = float(row_tokens[rows].sum())
            if tokens:
                entry["ce"] = float(row_ce[rows].sum()) / tokens
            gen_rows = [i for i in rows if i in gen]
            if gen_rows:
                entry["mse"] = float(row_mse[gen_rows].mean())
            out[task] = entry
        return out

    # -- protocol: inference ------------------------------------------------------------------

    @torch.no_grad()
    def answer(
        self,
        images: Sequence[NDArray[np.uint8]],
        questions: Sequence[str],
        max_new_tokens: int = 32,
    ) -> list[str]:
        """Greedy answers (at most ``max_new_tokens`` tokens) to one question per image."""
        if len(images) != len(questions):
            raise ValueError(f"got {len(images)} images for {len(questions)} questions")
        proc = self.processor
        size = (self.config.image_size, self.config.image_size)
        answers = []
        for image, question in zip(images, questions, strict=True):
            ids, _ = proc.prompt_ids(question, True, proc.answer_id)
            input_ids = torch.tensor([ids], device=self._device)
            pixels = images_to_tensor([image], size).to(self._device)
            out = self.llm(inputs_embeds=self._embed(input_ids, pixels), use_cache=True)
            generated: list[int] = []
            for _ in range(max_new_tokens):
                token = int(out.logits[0, -1].argmax())
                if token == proc.eos_id:
                    break
                generated.append(token)
                # transformers >= 5.2x names the KV cache ``cache``, older ones ``past_key_values``
                cache_kw = "cache" if hasattr(out, "cache") else "past_key_values"
                out = self.llm(
                    input_ids=torch.tensor([[token]], device=self._device),
                    use_cache=True,
                    **{cache_kw: getattr(out, cache_kw)},
                )
            answers.append(proc.decode(generated))
        return answers

    @torch.no_grad()
    def generate(
        self,
        instructions: Sequence[str],
        images: Sequence[NDArray[np.uint8]] | None = None,
        settings: GenerationSettings | None = None,
    ) -> list[NDArray[np.uint8]]:
        """Draw one HxWx3 uint8 image per instruction (Euler sampling with text/image CFG)."""
        settings = settings if settings is not None else GenerationSettings()
        if images is not None and len(images) != len(instructions):
            raise ValueError(f"got {len(images)} images for {len(instructions)} instructions")
        if not instructions:
            return []
        flow = self.config.flow
        height = settings.height or self.config.image_size
        width = settings.width or self.config.image_size
        unit = self.latent_factor * self.arch.dit_patch
        grid_h, grid_w = math.ceil(height / unit) * unit, math.ceil(width / unit) * unit
        proc = self.processor
        size = (self.config.image_size, self.config.image_size)

        rows, prefixes = [], []
        for text in instructions:
            ids, prefix = proc.prompt_ids(text, images is not None, proc.generate_id)
            rows.append(ids)
            prefixes.append(prefix)
        length = max(len(r) for r in rows)
        input_ids = torch.full((len(rows), length), proc.pad_id, dtype=torch.long)
        mask = torch.zeros_like(input_ids)
        for i, ids in enumerate(rows):
            input_ids[i, : len(ids)] = torch.tensor(ids)
            mask[i, : len(ids)] = 1
        input_ids, mask = input_ids.to(self._device), mask.to(self._device)
        pixels = (
            images_to_tensor(images, size).to(self._device)
            if images is not None
            else torch.zeros(0, 3, *size, device=self._device)
        )
        embeds = self._embed(input_ids, pixels)
        hidden = self.llm.model(inputs_embeds=embeds, attention_mask=mask).last_hidden_state

        n = len(rows)
        full = mask.sum(dim=1)
        null = torch.ones_like(full)
        image_only = torch.tensor(prefixes, device=self._device)
        reference = None
        latent_hw = (grid_h // self.latent_factor, grid_w // self.latent_factor)
        if self.spatial_projection is not None:
            on = torch.full((n,), images is not None, dtype=torch.bool, device=self._device)
            reference = self.spatial_reference(hidden, on, latent_hw)
        elif self.config.vae_reference_input:
            if images is not None:
                ref_pixels = images_to_tensor(images, (grid_h, grid_w)).to(self._device)
                reference = self.encode_latents(ref_pixels)
            else:
                reference = torch.zeros(
                    n,
                    self.latent_channels,
                    grid_h // self.latent_factor,
                    grid_w // self.latent_factor,
                    device=self._device,
                )

        text_scale = (
            settings.cfg_text_scale if settings.cfg_text_scale is not None else flow.cfg_text_scale
        )
        image_scale = (
            settings.cfg_image_scale
            if settings.cfg_image_scale is not None
            else flow.cfg_image_scale
        )
        use_image_cfg = images is not None and image_scale != 1.0
        guided = text_scale != 1.0 or use_image_cfg
        lengths = [full, null] + ([image_only] if use_image_cfg else []) if guided else [full]
        cond = hidden.repeat(len(lengths), 1, 1)
        cond_len = torch.cat(lengths)
        refs = None
        if reference is not None:
            parts = [reference] + ([torch.zeros_like(reference)] if guided else [])
            parts += [reference] if use_image_cfg else []
            refs = torch.cat(parts)

        def velocity(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            k = len(lengths)
            v = self._velocity(x.repeat(k, 1, 1, 1), t.repeat(k), cond, cond_len, refs).float()
            if not guided:
                return v
            chunks = v.chunk(k)
            return cfg_combine(
                chunks[0],
                chunks[1],
                text_scale,
                image_cond=chunks[2] if use_image_cfg else None,
                image_scale=image_scale,
            )

        if settings.shift is not None:
            shift = settings.shift
        elif flow.dynamic_shift:
            p = self.arch.dit_patch
            shift = resolution_shift(
                (latent_hw[0] // p) * (latent_hw[1] // p),
                base_seq_len=flow.base_seq_len,
                max_seq_len=flow.max_seq_len,
                base_shift=flow.base_shift,
                max_shift=flow.max_shift,
            )
        else:
            shift = flow.inference_shift
        generator = torch.Generator().manual_seed(settings.seed)
        noise = torch.randn((n, self.latent_channels, *latent_hw), generator=generator)
        steps = settings.num_steps or flow.num_inference_steps
        latents = euler_sample(
            velocity,
            noise.to(self._device),
            inference_timesteps(steps, shift, _CONVENTION),
        )
        out = self.decode_latents(latents).float()
        if (grid_h, grid_w) != (height, width):
            out = functional.interpolate(
                out, size=(height, width), mode="bilinear", antialias=True, align_corners=False
            )
        arrays = ((out.clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8)
        return [a.permute(1, 2, 0).cpu().numpy() for a in arrays]

    # -- protocol: persistence ----------------------------------------------------------------

    def save_pretrained(self, path: str | Path) -> None:
        """Write config.json, model.safetensors, tokenizer.json (and vae_config.json) to ``path``."""
        from safetensors.torch import save_model

        folder = Path(path)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / CONFIG_FILE).write_text(self.config.model_dump_json(indent=2) + "\n")
        save_model(self, str(folder / WEIGHTS_FILE), metadata={"format": "pt", "kind": self.kind})
        self.tokenizer.save(str(folder / TOKENIZER_FILE))
        if self.vae is not None:
            vae_config = {k: v for k, v in dict(self.vae.config).items() if not k.startswith("_")}
            (folder / VAE_CONFIG_FILE).write_text(json.dumps(vae_config, indent=2, default=list))
        logger.info("saved the reference model to %s", folder)

    @classmethod
    def from_pretrained(
        cls, path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype | None = None
    ) -> Self:
        """Load what ``save_pretrained`` wrote (leaves the global torch RNG state untouched)."""
        from safetensors.torch import load_model

        folder = Path(path)
        for name in (CONFIG_FILE, WEIGHTS_FILE, TOKENIZER_FILE):
            if not (folder / name).is_file():
                raise ReferenceCheckpointError(f"checkpoint file {folder / name} is missing")
        try:
            config = ReferenceAdapterConfig.model_validate_json((folder / CONFIG_FILE).read_text())
        except ValueError as exc:
            raise ReferenceCheckpointError(f"{folder / CONFIG_FILE}: {exc}") from exc
        tokenizer = Tokenizer.from_file(str(folder / TOKENIZER_FILE))
        vae_file = folder / VAE_CONFIG_FILE
        if config.latent_source == "vae" and not vae_file.is_file():
            raise ReferenceCheckpointError(f"checkpoint file {vae_file} is missing")
        with torch.random.fork_rng(devices=[]):  # initial weights are overwritten below
            vae = None
            if config.latent_source == "vae":
                from diffusers import AutoencoderKL

                vae = AutoencoderKL.from_config(  # type: ignore[no-untyped-call]
                    json.loads(vae_file.read_text())
                )
            model = cls(config, tokenizer=tokenizer, vae=vae)
        load_model(model, str(folder / WEIGHTS_FILE), strict=True, device=str(device))
        model.to(device=device, dtype=dtype)
        return model
