"""One short GPU check of OmniGen2 at full size: SGT's training step at the recipe's resolution.

A randomly initialised OmniGen2 with the published configs (Qwen2.5-VL-3B MLLM, the 4B DiT, the
FLUX VAE; no weights are loaded) in bf16 with gradient checkpointing does forward+backward of the
SGT loss on a micro-batch of 2 segmentation samples (the ``omnigen2-sgt`` recipe's micro-batch):
a 1024x1024 input image through the MLLM only, a 1024x1024 map drawn by the DiT (128x128
latents, 4096 DiT tokens), the generation loss flowing back into the MLLM. Prints the peak memory,
samples/s, the FLOPs of one step (counted by ``torch.utils.flop_counter``, gradient
checkpointing's recomputation included, and the ``6 N T`` model estimate), the GPU's measured peak
bf16 matmul throughput (a large square matmul in the same process) and the achieved fraction of
that peak. The last line repeats the figures as ``key=value`` pairs.

Not part of ``nox -s bench`` (its name does not start with ``bench_``); run it by hand on a GPU:

    python packages/sgt-models/bench/gpu_check_omnigen2.py [--batch 2] [--image 1024] [--iters 5]

``--smoke`` runs the same code on the CPU with the tiny test configs in fp32 (no CUDA needed).
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from sgt_data import Sample, TaskKind
from sgt_models import LossWeights, OmniGen2AdapterConfig
from sgt_models.omnigen2 import OmniGen2Adapter, OmniGen2Scheduler
from sgt_models.omnigen2.checkpoint import (
    OmniGen2Components,
    build_mllm,
    build_transformer,
    build_vae,
    load_image_processor,
    load_tokenizer,
)
from sgt_models.omnigen2.configuration import (
    MODEL_INDEX,
    PUBLISHED_MLLM_CONFIG,
    PUBLISHED_SCHEDULER_CONFIG,
    PUBLISHED_TRANSFORMER_CONFIG,
    PUBLISHED_VAE_CONFIG,
)
from sgt_models.omnigen2.testing import TINY_IMAGE_PIXELS, write_tiny_omnigen2_folder

#: the published processor's pixel cap (a 1024x1024 input stays 1036x1036: 37x37 merged tokens)
_PUBLISHED_MAX_PIXELS = 12845056
_TOKEN_ID_KEYS = (
    "bos_token_id",
    "eos_token_id",
    "pad_token_id",
    "vision_start_token_id",
    "vision_end_token_id",
    "vision_token_id",
    "image_token_id",
    "video_token_id",
)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _timed(fn: Callable[[], Any], iters: int, device: torch.device) -> float:
    _sync(device)
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    _sync(device)
    return (time.perf_counter() - start) / iters


def peak_matmul_tflops(device: torch.device, dtype: torch.dtype, n: int, iters: int) -> float:
    """Measured matmul throughput of an ``n x n x n`` product (TFLOP/s)."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    seconds = _timed(lambda: a @ b, iters, device)
    return 2 * n**3 / seconds / 1e12


def _folder(tmp: Path, max_pixels: int) -> Path:
    """The tiny test folder, its image processor capped at ``max_pixels``: its ``processor/``
    (a test tokenizer carrying Qwen's special tokens) serves both sizes, its configs the smoke."""
    folder = write_tiny_omnigen2_folder(tmp / "tiny")
    file = folder / "processor" / "preprocessor_config.json"
    preprocessor = json.loads(file.read_text())
    preprocessor["max_pixels"] = max_pixels
    file.write_text(json.dumps(preprocessor, indent=2) + "\n")
    return folder


def _configs(folder: Path, smoke: bool) -> dict[str, dict[str, Any]]:
    tiny = {
        name: json.loads((folder / name / "config.json").read_text())
        for name in ("mllm", "transformer", "vae")
    }
    if smoke:
        return tiny
    # the published sizes; the special-token ids of the test tokenizer (the vocabulary, and so
    # the embedding and the LM head, keeps the published size)
    ids = {k: tiny["mllm"][k] for k in _TOKEN_ID_KEYS}
    return {
        "mllm": {**PUBLISHED_MLLM_CONFIG, **ids},
        "transformer": dict(PUBLISHED_TRANSFORMER_CONFIG),
        "vae": dict(PUBLISHED_VAE_CONFIG),
    }


def build_adapter(
    smoke: bool, device: torch.device, dtype: torch.dtype, image: int, tmp: Path
) -> OmniGen2Adapter:
    """A randomly initialised OmniGen2 adapter (published or tiny configs) on ``device``."""
    folder = _folder(tmp, TINY_IMAGE_PIXELS if smoke else _PUBLISHED_MAX_PIXELS)
    processor = folder / "processor"
    configs = _configs(folder, smoke)
    torch.manual_seed(0)
    # built (and initialised) on the device in fp32, then cast: no host copy, no weights read
    with torch.device(device):
        mllm = build_mllm(configs["mllm"])
        transformer = build_transformer(configs["transformer"])
        vae = build_vae(configs["vae"])
    if dtype != torch.float32:
        mllm, transformer, vae = (m.to(dtype) for m in (mllm, transformer, vae))
    if device.type == "cuda":
        torch.cuda.empty_cache()
    components = OmniGen2Components(
        mllm=mllm,
        transformer=transformer,
        vae=vae,
        tokenizer=load_tokenizer(processor),
        image_processor=load_image_processor(processor),
        scheduler=OmniGen2Scheduler(
            num_train_timesteps=PUBLISHED_SCHEDULER_CONFIG["num_train_timesteps"]
        ),
        model_index=dict(MODEL_INDEX),
        mllm_config=configs["mllm"],
    )
    config = OmniGen2AdapterConfig(
        model_path="(random initialisation)",
        dtype="bfloat16" if dtype == torch.bfloat16 else "float32",
        max_output_pixels=image * image,
        max_input_pixels=image * image,
        gradient_checkpointing=True,
    )
    return OmniGen2Adapter(config, components)


def segmentation_samples(n: int, image: int) -> list[Sample]:
    """``n`` segmentation samples: a random ``image`` x ``image`` photo and an 8-colour map."""
    rng = np.random.default_rng(0)
    samples = []
    for i in range(n):
        colours = rng.integers(0, 256, (8, 3), dtype=np.uint8)
        labels = rng.integers(0, 8, (image // 64, image // 64))
        target = colours[np.kron(labels, np.ones((64, 64), dtype=np.int64))]
        samples.append(
            Sample(
                sample_id=f"gpu-check:seg-{i}",
                source="gpu-check",
                task=TaskKind.SEGMENTATION,
                task_variant="instance",
                instruction="Segment instances with different colors.",
                image=rng.integers(0, 256, (image, image, 3), dtype=np.uint8),
                target_image=np.ascontiguousarray(target),
            )
        )
    return samples


def main() -> None:
    """Run the check and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch", type=int, default=2, help="micro-batch (the recipe's: 2)")
    parser.add_argument("--image", type=int, default=None, help="input and output side")
    parser.add_argument("--iters", type=int, default=None)
    parser.add_argument("--smoke", action="store_true", help="tiny configs on the CPU, fp32")
    args = parser.parse_args()
    if args.smoke:
        device, dtype = torch.device("cpu"), torch.float32
        image, iters, matmul_n = args.image or 64, args.iters or 2, 256
        torch.set_num_threads(1)
    else:
        if not torch.cuda.is_available():
            raise SystemExit("gpu_check_omnigen2.py needs a CUDA GPU (or --smoke)")
        device, dtype = torch.device("cuda"), torch.bfloat16
        image, iters, matmul_n = args.image or 1024, args.iters or 5, 8192

    with tempfile.TemporaryDirectory() as tmp:
        adapter = build_adapter(args.smoke, device, dtype, image, Path(tmp))
    adapter.train()
    params = {
        "MLLM": sum(p.numel() for p in adapter.mllm.parameters()),
        "DiT": sum(p.numel() for p in adapter.transformer.parameters()),
        "VAE": sum(p.numel() for p in adapter.vae.parameters()),
    }
    batch = adapter.collate(segmentation_samples(args.batch, image)).to(device)
    mllm_tokens = int(batch.attention_mask.sum())
    vit_patches = int(batch.image_grid_thw.prod(dim=1).sum())
    dit_tokens = sum(batch.latent_token_counts)
    # the DiT's joint layers also carry each generative row's MLLM states (its context tokens)
    context_tokens = sum(batch.row_lengths[i] for i in batch.gen_row_list)
    losses: list[torch.Tensor] = []

    def step() -> None:
        adapter.zero_grad(set_to_none=True)
        out = adapter.loss(batch, LossWeights())
        out.total.backward()
        losses.append(out.total.detach().float())

    step()  # warm-up (allocator, kernels)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    step()
    counter = FlopCounterMode(display=False)
    with counter:
        step()
    counted = counter.get_total_flops()
    seconds = _timed(step, iters, device)
    if device.type == "cuda":
        peak_mem = torch.cuda.max_memory_allocated() / 2**30
        mem_label = "peak GiB"
    else:
        peak_mem = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB
        mem_label = "peak RSS GiB"
    loss = float(losses[-1])
    peak = peak_matmul_tflops(device, dtype, matmul_n, 20 if device.type == "cuda" else 3)
    achieved = counted / seconds / 1e12
    # 6 N T: forward+backward of every weight over the tokens it sees (the VAE encode: no grad)
    lm_params = sum(p.numel() for p in adapter.mllm.model.language_model.parameters())
    vit_params = sum(p.numel() for p in adapter.mllm.model.visual.parameters())
    model_flops = 6 * (
        lm_params * mllm_tokens + vit_params * vit_patches + params["DiT"] * dit_tokens
    )

    where = torch.cuda.get_device_name() if device.type == "cuda" else "CPU (smoke)"
    print(f"device: {where}  torch {torch.__version__}")
    print(
        f"OmniGen2 {'tiny configs' if args.smoke else 'published configs'}, random init: "
        f"MLLM {params['MLLM'] / 1e6:,.1f}M, DiT {params['DiT'] / 1e6:,.1f}M, "
        f"VAE {params['VAE'] / 1e6:,.2f}M params; {str(dtype).removeprefix('torch.')}, "
        "gradient checkpointing, generation loss into the MLLM (SGT)"
    )
    print(
        f"micro-batch {args.batch} segmentation samples, input {image}x{image} through the MLLM "
        f"({vit_patches} ViT patches, {mllm_tokens} MLLM tokens), output {image}x{image} "
        f"({dit_tokens} DiT latent + {context_tokens} context tokens); loss {loss:.4f}"
    )
    header = (
        f"{'step ms':>9} {'samples/s':>10} {mem_label:>12} {'TFLOP/step':>11} "
        f"{'6NT TFLOP':>10} {'TFLOP/s':>8} {'peak TFLOP/s':>13} {'of peak':>8}"
    )
    print(header)
    print(
        f"{seconds * 1e3:>9.1f} {args.batch / seconds:>10.2f} {peak_mem:>12.2f} "
        f"{counted / 1e12:>11.3f} {model_flops / 1e12:>10.3f} {achieved:>8.2f} {peak:>13.1f} "
        f"{achieved / peak:>8.1%}"
    )
    figures = {
        "step_ms": seconds * 1e3,
        "samples_per_s": args.batch / seconds,
        "peak_mem_gib": peak_mem,
        "tflop_per_step": counted / 1e12,
        "model_tflop_per_step": model_flops / 1e12,
        "achieved_tflops": achieved,
        "peak_tflops": peak,
        "fraction_of_peak": achieved / peak,
        "loss": loss,
    }
    print("RESULT " + " ".join(f"{k}={v:.6g}" for k, v in figures.items()))
    if not all(math.isfinite(v) for v in figures.values()):
        sys.exit("a figure is not finite")


if __name__ == "__main__":
    main()
