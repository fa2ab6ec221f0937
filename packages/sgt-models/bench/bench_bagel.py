"""BAGEL on the CPU: the MoT decoder against a plain Qwen2, and the collator's packing rate.

(a) Forward+backward of a tiny-but-not-trivial BAGEL (hidden 256, 4 MoT layers, 8 heads) on one
packed micro-batch of segmentation and VQA samples, against ``transformers`` Qwen2 of the same
width and depth on the same number of tokens, in the same process, repeats interleaved: the
``x Qwen2`` column is what BAGEL's two-expert routing (index_select / index_copy per projection
and norm), qk-norm and per-sample masks cost on top of a plain decoder. Rows: the decoder alone
(``PackedQwen2Model`` on ready embeddings) against ``Qwen2Model`` on the whole pack, causal, and
on each sample alone (BAGEL's attention pattern); the whole training loss (ViT, connector, VAE
encode of the latents, embedders, CE and MSE heads) against ``Qwen2ForCausalLM`` with labels. The
VAE encode's share is timed on its own.

(b) The collator at the ``bagel-sgt`` recipe's resolutions (ViT long side 224, VAE 512-1024):
segmentation samples with 1000 x 750 images and palette targets, and VQA samples with 1000 x 750
images, mixed 2:1 as the recipe mixes them. ``collate`` plans (tokenise, compute sizes) and packs
(resize, patchify, index building); the VAE encode is not part of it: it runs inside the model's
forward on the training device. The rate is per core (one thread, one process); what one GPU
consumes per step is an assumption stated in the table (``--gpu-tokens-per-s``), from which the
cores needed per GPU follow.

    python packages/sgt-models/bench/bench_bagel.py [--threads 1] [--repeats 7]
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sgt_data import Sample, TaskKind
from sgt_models.bagel.modeling import BagelAdapter
from sgt_models.bagel.testing import tiny_bagel_config, write_tiny_bagel_folder

#: (a): width and depth of the tiny-but-not-trivial model (Qwen2 fields of llm_config.json)
_LLM = {
    "hidden_size": 256,
    "intermediate_size": 1024,
    "num_hidden_layers": 4,
    "num_attention_heads": 8,
    "num_key_value_heads": 2,
    "max_window_layers": 4,
}
#: (a): image sizes of the packed micro-batch (64 ViT tokens, 64 latent tokens per image)
_TINY_SIZES = {"vit_image_size": 112, "vit_min_size": 112, "vae_min_size": 128, "vae_max_size": 128}
#: (b): the recipe (bagel-sgt.yaml) sizes and a mid-sized source image
_RECIPE_SIZES = {
    "vit_image_size": 224,
    "vit_min_size": 224,
    "vae_min_size": 512,
    "vae_max_size": 1024,
    "expected_num_tokens": 16384,
    "max_num_tokens": 36864,
}
_IMAGE_HW = (750, 1000)
#: (b): BAGEL-7B-MoT's active parameters per token (one expert of 7.6B in the LLM path)
_ACTIVE_PARAMS = 7.6e9


def _measure(fns: dict[str, Callable[[], object]], repeats: int, warmup: int) -> dict[str, Any]:
    """Median wall and CPU seconds of each function, repeats interleaved across functions."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    wall: dict[str, list[float]] = {k: [] for k in fns}
    cpu: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            w, c = time.perf_counter(), time.process_time()
            fn()
            cpu[name].append(time.process_time() - c)
            wall[name].append(time.perf_counter() - w)
    return {k: (statistics.median(wall[k]), statistics.median(cpu[k])) for k in fns}


def _image(rng: np.random.Generator, hw: tuple[int, int]) -> np.ndarray[Any, Any]:
    out: np.ndarray[Any, Any] = rng.integers(0, 256, (*hw, 3), dtype=np.uint8)
    return out


def _palette(rng: np.random.Generator, hw: tuple[int, int]) -> np.ndarray[Any, Any]:
    """A rendered segmentation map: flat colour blocks of 16 x 16 pixels."""
    colours = rng.integers(0, 256, (12, 3), dtype=np.uint8)
    labels = rng.integers(0, 12, (-(-hw[0] // 16), -(-hw[1] // 16)))
    blocks = colours[np.kron(labels, np.ones((16, 16), dtype=np.int64))]
    out: np.ndarray[Any, Any] = np.ascontiguousarray(blocks[: hw[0], : hw[1]])
    return out


def _samples(n: int, hw: tuple[int, int], seed: int = 0) -> list[Sample]:
    """``n`` samples in the recipe's 2:1 order: segmentation, VQA, segmentation, ..."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        if i % 3 == 1:
            out.append(
                Sample(
                    sample_id=f"bench:vqa-{i}",
                    source="bench",
                    task=TaskKind.UNDERSTANDING,
                    instruction="How many objects are there? Where is the red cube?",
                    image=_image(rng, hw),
                    answer="two cats and one dog, left of a blue sphere on a table",
                )
            )
        else:
            out.append(
                Sample(
                    sample_id=f"bench:seg-{i}",
                    source="bench",
                    task=TaskKind.SEGMENTATION,
                    task_variant="instance",
                    instruction="Segment instances with different colors.",
                    image=_image(rng, hw),
                    target_image=_palette(rng, hw),
                )
            )
    return out


def _decoder_inputs(model: BagelAdapter, batch: Any) -> tuple[Any, ...]:
    """Ready embeddings, RoPE positions, expert routing and the per-sample attention plan."""
    from sgt_models.bagel._layers import Routing

    h = model.arch.hidden_size
    x = torch.randn(batch.sequence_length, h, requires_grad=True)
    routing = Routing(und=batch.und_indexes, gen=batch.gen_indexes)
    plan = model._training_plan(batch, batch.split_noise, torch.device("cpu"))
    return x, batch.position_ids, routing, plan


def bench_decoder(folder: Path, repeats: int) -> list[dict[str, Any]]:
    """(a): BAGEL against Qwen2 of the same width and depth on the same packed tokens."""
    from transformers import Qwen2Config, Qwen2ForCausalLM, Qwen2Model

    torch.manual_seed(0)
    model = BagelAdapter.from_pretrained(folder, config=tiny_bagel_config(folder, **_TINY_SIZES))
    model.train()
    batch = model.collate(_samples(9, (96, 128)))
    n = batch.sequence_length
    qwen_config = Qwen2Config(**model.arch.qwen2_config().to_dict())
    qwen_config._attn_implementation = "sdpa"
    plain = Qwen2Model(qwen_config)
    plain_lm = Qwen2ForCausalLM(qwen_config)
    x, positions, routing, plan = _decoder_inputs(model, batch)
    x_plain = torch.randn(1, n, model.arch.hidden_size, requires_grad=True)
    ids = torch.randint(0, qwen_config.vocab_size, (1, n))

    def bagel_decoder() -> None:
        model.zero_grad(set_to_none=True)
        out, _ = model.language_model.model(x, positions, routing, plan)
        out.square().mean().backward()

    def qwen_decoder() -> None:
        plain.zero_grad(set_to_none=True)
        plain(inputs_embeds=x_plain).last_hidden_state.square().mean().backward()

    bounds = np.cumsum([0, *batch.sample_lens]).tolist()

    def qwen_per_sample() -> None:  # BAGEL's attention pattern: no token sees another sample
        plain.zero_grad(set_to_none=True)
        total = x_plain.new_zeros(())
        for a, b in itertools.pairwise(bounds):
            total = total + plain(inputs_embeds=x_plain[:, a:b]).last_hidden_state.square().sum()
        (total / (n * model.arch.hidden_size)).backward()

    def bagel_loss() -> None:
        model.zero_grad(set_to_none=True)
        model.loss(batch).total.backward()

    def qwen_loss() -> None:
        plain_lm.zero_grad(set_to_none=True)
        plain_lm(input_ids=ids, labels=ids).loss.backward()

    def vae_encode() -> None:
        model._clean_tokens(batch.vae_images)

    t = _measure(
        {
            "bagel_decoder": bagel_decoder,
            "qwen_decoder": qwen_decoder,
            "qwen_per_sample": qwen_per_sample,
            "bagel_loss": bagel_loss,
            "qwen_loss": qwen_loss,
            "vae": vae_encode,
        },
        repeats,
        warmup=2,
    )
    decoder_params = sum(p.numel() for p in model.language_model.model.layers.parameters())
    plain_params = sum(p.numel() for p in plain.layers.parameters())
    common = {"tokens": n, "samples": batch.num_samples}
    return [
        {
            **common,
            "what": "decoder (vs Qwen2Model, causal pack)",
            "params_m": decoder_params / 1e6,
            "ref_params_m": plain_params / 1e6,
            "wall": t["bagel_decoder"][0],
            "cpu": t["bagel_decoder"][1],
            "ref_wall": t["qwen_decoder"][0],
            "vae": None,
        },
        {
            **common,
            "what": "decoder (vs Qwen2Model per sample)",
            "params_m": decoder_params / 1e6,
            "ref_params_m": plain_params / 1e6,
            "wall": t["bagel_decoder"][0],
            "cpu": t["bagel_decoder"][1],
            "ref_wall": t["qwen_per_sample"][0],
            "vae": None,
        },
        {
            **common,
            "what": "training loss (vs Qwen2ForCausalLM)",
            "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
            "ref_params_m": sum(p.numel() for p in plain_lm.parameters()) / 1e6,
            "wall": t["bagel_loss"][0],
            "cpu": t["bagel_loss"][1],
            "ref_wall": t["qwen_loss"][0],
            "vae": t["vae"][0],
        },
    ]


def bench_collate(folder: Path, repeats: int, pack_samples: int) -> dict[str, Any]:
    """(b): the collator's rate at the recipe's sizes, planning and packing timed apart."""
    model = BagelAdapter.from_pretrained(folder, config=tiny_bagel_config(folder, **_RECIPE_SIZES))
    processor = model.processor
    samples = _samples(pack_samples, _IMAGE_HW, seed=1)
    plans: list[Sequence[Any]] = []
    tasks = tuple(s.task.value for s in samples)

    def plan() -> None:
        plans[:] = [processor.plan(s) for s in samples]

    def pack() -> None:
        processor.pack(plans, tasks)

    plan()
    t = _measure({"plan": plan, "pack": pack}, repeats, warmup=1)
    batch = processor.pack(plans, tasks)
    per_kind = {
        kind: statistics.mean(
            processor.estimate_num_tokens(s) for s in samples if s.task.value == kind
        )
        for kind in ("segmentation", "understanding")
    }
    return {
        "samples": pack_samples,
        "tokens": batch.sequence_length,
        "plan": t["plan"],
        "pack": t["pack"],
        "seg_tokens": per_kind["segmentation"],
        "vqa_tokens": per_kind["understanding"],
    }


def main() -> None:
    """Print both tables."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument(
        "--pack-samples", type=int, default=8, help="(b): samples per pack (~16k tokens)"
    )
    parser.add_argument(
        "--gpu-tokens-per-s",
        type=float,
        default=None,
        help="(b): packed tokens one GPU trains per second (default: an assumed 40%% of an "
        "H200's 790 TFLOP/s bf16 over 6 x 7.6B active FLOPs per token)",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        folder = write_tiny_bagel_folder(Path(tmp) / "bagel", **_LLM)
        rows = bench_decoder(folder, args.repeats)
        col = bench_collate(folder, max(3, args.repeats // 2), args.pack_samples)

    print(
        f"(a) BAGEL forward+backward on the CPU ({torch.get_num_threads()} thread(s), fp32, "
        f"median of {args.repeats} interleaved repeats; hidden {_LLM['hidden_size']}, "
        f"{_LLM['num_hidden_layers']} layers, one pack of {rows[0]['samples']} seg/VQA samples)"
    )
    header = (
        f"{'what':<37} {'params':>8} {'tokens':>6} {'wall ms':>8} {'cpu ms':>8} "
        f"{'tokens/s':>9} {'Qwen2 ms':>9} {'x Qwen2':>8} {'VAE ms':>7}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        vae = f"{r['vae'] * 1e3:>7.1f}" if r["vae"] is not None else f"{'-':>7}"
        print(
            f"{r['what']:<37} {r['params_m']:>7.2f}M {r['tokens']:>6} {r['wall'] * 1e3:>8.1f} "
            f"{r['cpu'] * 1e3:>8.1f} {r['tokens'] / r['wall']:>9.0f} {r['ref_wall'] * 1e3:>9.1f} "
            f"{r['wall'] / r['ref_wall']:>8.2f} {vae}"
        )
    print(
        f"x Qwen2: BAGEL's step time over transformers Qwen2 of the same width and depth "
        f"({rows[0]['ref_params_m']:.2f}M decoder params, BAGEL's MoT layers hold two experts: "
        f"{rows[0]['params_m']:.2f}M) on the same token count; VAE ms: the loss's latent encode "
        "(no grad), included in its wall ms. The causal-pack references attend across the "
        "whole pack; BAGEL attends within each sample, as the per-sample reference does."
    )

    gpu_tps = args.gpu_tokens_per_s
    assumed = gpu_tps is None
    if gpu_tps is None:
        gpu_tps = 0.40 * 790e12 / (6 * _ACTIVE_PARAMS)
    per_sample_tokens = col["tokens"] / col["samples"]
    gpu_sps = gpu_tps / per_sample_tokens
    plan_w, plan_c = col["plan"]
    pack_w, pack_c = col["pack"]
    total_w = plan_w + pack_w
    core_sps = col["samples"] / total_w
    print()
    print(
        f"(b) collator at the recipe's sizes (ViT 224, VAE 512-1024, {_IMAGE_HW[1]}x{_IMAGE_HW[0]} "
        f"images, seg:VQA 2:1), one core, median of {max(3, args.repeats // 2)} repeats"
    )
    print(
        f"    a seg sample packs {col['seg_tokens']:.0f} tokens, a VQA sample "
        f"{col['vqa_tokens']:.0f}; a pack of {col['samples']} samples is {col['tokens']} tokens"
    )
    header = (
        f"{'stage':<38} {'wall ms':>8} {'cpu ms':>8} {'samples/s/core':>15} {'tokens/s/core':>14}"
    )
    print(header)
    print("-" * len(header))
    for name, w, c in (
        ("plan (tokenise, sizes)", plan_w, plan_c),
        ("pack (resize, patchify, indexes)", pack_w, pack_c),
        ("collate = plan + pack (no VAE encode)", total_w, plan_c + pack_c),
    ):
        print(
            f"{name:<38} {w * 1e3:>8.1f} {c * 1e3:>8.1f} {col['samples'] / w:>15.1f} "
            f"{col['tokens'] / w:>14.0f}"
        )
    source = "assumed: 40% of 790 TFLOP/s over 6 x 7.6B FLOPs/token" if assumed else "given"
    print(
        f"one GPU consumes {gpu_tps:.0f} tokens/s ({source}) = {gpu_sps:.2f} samples/s; "
        f"one core packs {core_sps:.1f} samples/s = {core_sps / gpu_sps:.1f}x one GPU's need; "
        f"cores needed per GPU: {gpu_sps / core_sps:.2f} (per 100 samples/s: "
        f"{100 / core_sps:.1f})"
    )
    print(
        "Not included: reading and decoding the store (sgt-data) and the VAE encode, which runs "
        "in the forward on the GPU."
    )


if __name__ == "__main__":
    main()
