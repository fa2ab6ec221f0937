"""One short GPU check: full-size BAGEL-7B-MoT, random weights, bf16, one packed 16k micro-batch.

Builds the published architecture (``llm_config.json`` / ``vit_config.json`` of
ByteDance-Seed/BAGEL-7B-MoT, the FLUX VAE) on the meta device and materialises it in bf16 on the
GPU with random weights (no checkpoint is read: 14.6B parameters, 29 GB), gradient checkpointing
per decoder layer, the VAE frozen as the recipe has it. One micro-batch packs synthetic
segmentation and VQA samples (1000 x 750 images, seg:VQA 2:1 as ``bagel-sgt`` mixes them) at the
recipe's sizes (ViT 224, VAE 512-1024) up to the token budget through the adapter's own collate;
forward+backward of the training loss is timed (no optimizer: bf16 weights and gradients take
58 GB of the H200's 141 GB; AdamW states would not fit beside them on one GPU).

Printed: peak GPU memory, tokens/s, the step's model FLOPs (6 x active parameters x tokens for
the decoder, ViT and heads, each on the tokens it sees, plus attention over the pairs each
sample's mask allows, forward 4 d per pair and backward twice that; gradient checkpointing's
recompute and the frozen VAE encode are not counted, as MFU conventions have it), the GPU's
measured peak bf16 matmul throughput (a large square matmul in the same process) and the
fraction of it achieved. The last line, ``RESULT key=value ...``, is for machines. Not part of
``nox -s bench``; run it by hand on a lent GPU:

    python packages/sgt-models/bench/gpu_check_bagel.py [--tokens 16384] [--iters 3]
    python packages/sgt-models/bench/gpu_check_bagel.py --smoke   # tiny model, CPU, seconds
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sgt_data import Sample, TaskKind
from sgt_models.bagel.configuration import (
    PUBLISHED_LLM_CONFIG,
    PUBLISHED_VIT_CONFIG,
    VaeShape,
    architecture_from_dicts,
)
from sgt_models.bagel.modeling import BagelAdapter
from sgt_models.bagel.processor import attention_mask
from sgt_models.config import BagelAdapterConfig

#: The recipe's (bagel-sgt.yaml) sizes; the smoke run uses the tiny folder's.
_RECIPE = {"vit_image_size": 224, "vit_min_size": 224, "vae_min_size": 512, "vae_max_size": 1024}
_SMOKE = {"vit_image_size": 28, "vit_min_size": 28, "vae_min_size": 32, "vae_max_size": 32}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _timed(fn: Callable[[], object], iters: int, device: torch.device) -> float:
    _sync(device)
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    _sync(device)
    return (time.perf_counter() - start) / iters


def peak_matmul_tflops(device: torch.device, n: int, iters: int) -> float:
    """Measured bf16 matmul throughput of an ``n x n x n`` product (TFLOP/s)."""
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    seconds = _timed(lambda: a @ b, iters, device)
    return 2 * n**3 / seconds / 1e12


def _samples(n: int, hw: tuple[int, int], seed: int = 0) -> list[Sample]:
    """``n`` synthetic samples in the recipe's 2:1 order (segmentation, VQA, segmentation...)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        image = rng.integers(0, 256, (*hw, 3), dtype=np.uint8)
        if i % 3 == 1:
            out.append(
                Sample(
                    sample_id=f"gpu-check:vqa-{i}",
                    source="gpu-check",
                    task=TaskKind.UNDERSTANDING,
                    instruction="How many objects are there? Where is the red cube?",
                    image=image,
                    answer="two cats and one dog, left of a blue sphere on a table",
                )
            )
        else:
            colours = rng.integers(0, 256, (12, 3), dtype=np.uint8)
            labels = rng.integers(0, 12, (-(-hw[0] // 16), -(-hw[1] // 16)))
            target = colours[np.kron(labels, np.ones((16, 16), dtype=np.int64))]
            out.append(
                Sample(
                    sample_id=f"gpu-check:seg-{i}",
                    source="gpu-check",
                    task=TaskKind.SEGMENTATION,
                    task_variant="instance",
                    instruction="Segment instances with different colors.",
                    image=image,
                    target_image=np.ascontiguousarray(target[: hw[0], : hw[1]]),
                )
            )
    return out


def _pack(model: BagelAdapter, budget: int, hw: tuple[int, int]) -> list[Sample]:
    """Samples taken in order until the pack reaches ``budget`` tokens (sgt-train's rule)."""
    pool = _samples(64, hw)
    pack: list[Sample] = []
    tokens = 0
    for sample in pool:
        if tokens >= budget:
            break
        n = model.estimate_num_tokens(sample)
        if pack and tokens + n > model.config.max_num_tokens:
            break
        pack.append(sample)
        tokens += n
    return pack


def _random_model(
    device: torch.device, tokenizer: Any, config: BagelAdapterConfig, *, tiny: bool
) -> Any:
    """The published (or, ``tiny``, the test folder's) architecture built on meta and
    materialised in bf16 on ``device`` with random weights; no checkpoint is read."""
    from sgt_models.bagel._checkpoint import _materialise, build_on_meta

    if tiny:
        from sgt_models.bagel.testing import TINY_LLM_CONFIG, TINY_VAE, TINY_VIT_CONFIG

        arch = architecture_from_dicts(
            TINY_LLM_CONFIG, TINY_VIT_CONFIG, TINY_VAE, max_latent_size=64
        )
    else:
        arch = architecture_from_dicts(
            PUBLISHED_LLM_CONFIG, PUBLISHED_VIT_CONFIG, VaeShape(), max_latent_size=64
        )
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)  # meta tensors in bf16: never an fp32 copy
    try:
        model = build_on_meta(BagelAdapter, config, arch, tokenizer, {})
    finally:
        torch.set_default_dtype(default)
    model.to_empty(device=device)
    _random_init(model)
    _materialise(model, device, torch.bfloat16)
    wrong = sorted({str(t.dtype) for t in model.state_dict().values()} - {"torch.bfloat16"})
    if wrong:
        raise RuntimeError(f"tensors outside bf16 after materialising: {wrong}")
    return model


@torch.no_grad()
def _random_init(model: torch.nn.Module, seed: int = 0) -> None:
    generator = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
    for name, p in model.named_parameters():
        if p.ndim >= 2:
            p.normal_(0.0, 0.02, generator=generator)
        elif name.endswith("weight"):  # norms
            p.fill_(1.0)
        else:
            p.zero_()


def _step_flops(model: BagelAdapter, batch: Any) -> dict[str, float]:
    """Model FLOPs of one forward+backward (see the module docstring)."""
    arch = model.arch

    def params(module: torch.nn.Module, skip: str | None = None) -> int:
        return sum(p.numel() for n, p in module.named_parameters() if skip is None or skip not in n)

    layers = model.language_model.model.layers
    per_expert = params(layers, skip="_moe_gen")  # one expert's decoder weights
    lm_tokens = batch.sequence_length
    vit_tokens = int(batch.vit_token_indexes.numel())
    ce_tokens, mse_tokens = batch.num_ce_tokens, batch.num_mse_tokens
    lm_head = model.language_model.lm_head.weight.numel()
    vit = params(model.vit_model) + params(model.connector)
    bridge = model.vae2llm.weight.numel() + params(model.time_embedder)
    linear = (
        per_expert * lm_tokens
        + vit * vit_tokens
        + lm_head * ce_tokens
        + model.llm2vae.weight.numel() * mse_tokens
        + bridge * int(batch.gen_indexes.numel())
    )
    pairs = 0
    start = 0
    hidden = batch.split_noise
    for n in batch.sample_lens:
        end = start + n
        mask = attention_mask(
            batch.split_ids[start:end], batch.split_full[start:end], hidden[start:end]
        )
        pairs += int(mask.sum())
        start = end
    vit_pairs = sum(s * s for s in batch.vit_seqlens)
    attention = 4 * pairs * arch.num_heads * arch.head_dim * arch.num_layers
    attention += 4 * vit_pairs * arch.vit_hidden_size * arch.vit_layers
    return {
        "linear": 6.0 * linear,
        "attention": 3.0 * attention,
        "active_params": float(per_expert + lm_head + vit),
    }


def _count(n: float) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.2f}M"


def main() -> None:
    """Run the check and print its figures."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tokens", type=int, default=None, help="pack budget (default 16384)")
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--smoke", action="store_true", help="tiny model on the CPU")
    parser.add_argument("--attention", choices=("auto", "sdpa", "flex"), default="auto")
    parser.add_argument("--no-checkpointing", action="store_true")
    args = parser.parse_args()
    if not args.smoke and not torch.cuda.is_available():
        raise SystemExit("gpu_check_bagel.py needs a CUDA GPU (or --smoke for the CPU smoke mode)")
    device = torch.device("cpu" if args.smoke else "cuda")
    budget = args.tokens or (256 if args.smoke else 16384)
    sizes = _SMOKE if args.smoke else _RECIPE
    config = BagelAdapterConfig(
        model_path=".",
        dtype="bfloat16",
        gradient_checkpointing=not args.no_checkpointing,
        attention_backend=args.attention,
        expected_num_tokens=budget,
        max_num_tokens=max(36864, 2 * budget),
        **sizes,
    )
    torch.manual_seed(0)
    if args.smoke:
        torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        from transformers import Qwen2Tokenizer

        from sgt_models.bagel.testing import write_tokenizer

        write_tokenizer(Path(tmp))  # no network: a local Qwen2-style tokenizer (ids < 320)
        tokenizer = Qwen2Tokenizer.from_pretrained(tmp)
    model = _random_model(device, tokenizer, config, tiny=args.smoke)
    hw = (48, 64) if args.smoke else (750, 1000)
    model.apply_freeze_policy()
    model.train()
    samples = _pack(model, budget, hw)
    batch = model.collate(samples).to(device, torch.bfloat16)
    tokens = batch.sequence_length
    kinds = [s.task.value for s in samples]

    losses: list[torch.Tensor] = []

    def step() -> None:
        model.zero_grad(set_to_none=True)
        total = model.loss(batch).total
        total.backward()
        losses[:] = [total.detach()]  # read back once, after the timing

    step()  # compiles FlexAttention on a GPU
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    step()
    seconds = _timed(step, args.iters, device)
    if device.type == "cuda":
        peak_gib = torch.cuda.max_memory_allocated() / 2**30
        memory = "peak GPU memory"
    else:
        peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        memory = "peak RSS"
    flops = _step_flops(model, batch)
    step_flops = flops["linear"] + flops["attention"]
    peak = peak_matmul_tflops(device, 512 if args.smoke else 8192, 5 if args.smoke else 20)
    achieved = step_flops / seconds / 1e12
    params = sum(p.numel() for p in model.parameters())
    name = torch.cuda.get_device_name() if device.type == "cuda" else "CPU (smoke)"
    print(f"device: {name}  torch {torch.__version__}")
    print(
        f"BAGEL {'tiny' if args.smoke else 'full-size (published configs)'}, random weights, "
        f"{_count(params)} params ({_count(flops['active_params'])} active per token), bf16, "
        f"gradient checkpointing {'off' if args.no_checkpointing else 'on'}, "
        f"attention {args.attention}"
    )
    print(
        f"one pack: {tokens} tokens, {len(samples)} samples ({kinds.count('segmentation')} seg, "
        f"{kinds.count('understanding')} VQA), ViT {sizes['vit_image_size']}, VAE "
        f"{sizes['vae_min_size']}-{sizes['vae_max_size']}, {hw[1]}x{hw[0]} images"
    )
    print(
        f"{'step ms':>9} {'tokens/s':>10} {'samples/s':>10} {memory + ' GiB':>20} "
        f"{'TFLOP/step':>11} {'attn %':>7} {'TFLOP/s':>8} {'peak TFLOP/s':>13} {'of peak':>8}"
    )
    print(
        f"{seconds * 1e3:>9.1f} {tokens / seconds:>10.0f} {len(samples) / seconds:>10.2f} "
        f"{peak_gib:>20.2f} {step_flops / 1e12:>11.4f} "
        f"{flops['attention'] / step_flops:>7.1%} {achieved:>8.2f} {peak:>13.1f} "
        f"{achieved / peak:>8.1%}"
    )
    print(
        f"RESULT tokens={tokens} step_s={seconds:.6g} tokens_per_s={tokens / seconds:.6g} "
        f"peak_memory_gib={peak_gib:.6g} step_tflop={step_flops / 1e12:.6g} "
        f"achieved_tflops={achieved:.6g} peak_tflops={peak:.6g} "
        f"fraction_of_peak={achieved / peak:.6g} loss={float(losses[0]):.6g}"
    )


if __name__ == "__main__":
    main()
