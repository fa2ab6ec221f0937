"""Forward+backward throughput of the reference model on the CPU, against a plain Qwen2 LM.

For each size, a mixed batch (half understanding, half segmentation) runs forward+backward of the
full loss; the reference is ``transformers.Qwen2ForCausalLM`` of the same LM size doing
forward+backward with labels on the same number of text+image tokens in the same process, so the
``x LM`` column says how much the vision encoder, connector and generator cost on top of the LM.

    python packages/sgt-models/bench/bench_models.py [--threads N] [--small-iters N]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch

from sgt_models import ReferenceAdapterConfig
from sgt_models.reference import ReferenceAdapter
from sgt_models.testing import contract_samples


def _best(fn: Callable[[], None], iters: int, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def _row(size: str, image_size: int, batch_size: int, iters: int, warmup: int) -> dict[str, float]:
    from transformers import Qwen2ForCausalLM

    torch.manual_seed(0)
    config = ReferenceAdapterConfig(size=size, image_size=image_size)  # type: ignore[arg-type]
    adapter = ReferenceAdapter(config)
    pool = contract_samples(image_size)
    und, seg = pool[0], pool[1]
    samples = [und if i % 2 == 0 else seg for i in range(batch_size)]
    batch = adapter.collate(samples)
    tokens = int(batch.attention_mask.sum())

    def step() -> None:
        adapter.zero_grad(set_to_none=True)
        adapter(batch).total.backward()

    model_s = _best(step, iters, warmup)

    lm = Qwen2ForCausalLM(adapter.llm.config)
    ids = torch.randint(0, adapter.llm.config.vocab_size, batch.input_ids.shape)

    def lm_step() -> None:
        lm.zero_grad(set_to_none=True)
        lm(input_ids=ids, attention_mask=batch.attention_mask, labels=ids).loss.backward()

    lm_s = _best(lm_step, iters, warmup)
    return {
        "params_m": sum(p.numel() for p in adapter.parameters()) / 1e6,
        "lm_params_m": sum(p.numel() for p in lm.parameters()) / 1e6,
        "tokens": tokens,
        "batch": batch_size,
        "step_ms": model_s * 1e3,
        "tokens_s": tokens / model_s,
        "samples_s": batch_size / model_s,
        "lm_ms": lm_s * 1e3,
        "ratio": model_s / lm_s,
    }


def main() -> None:
    """Print the throughput table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--tiny-iters", type=int, default=10)
    parser.add_argument("--small-iters", type=int, default=3)
    parser.add_argument("--small-image", type=int, default=128)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = [
        ("tiny", 64, 4, _row("tiny", 64, 4, args.tiny_iters, 2)),
        ("small", args.small_image, 2, _row("small", args.small_image, 2, args.small_iters, 1)),
    ]
    print(
        f"reference model forward+backward on the CPU ({torch.get_num_threads()} thread(s), fp32,"
    )
    print("best of N; batch alternates understanding and segmentation samples)")
    header = (
        f"{'size':<6} {'image':>5} {'params':>8} {'batch':>5} {'tokens':>6} {'step ms':>9} "
        f"{'tokens/s':>9} {'samples/s':>9} {'Qwen2 LM ms':>11} {'x LM':>6}"
    )
    print(header)
    print("-" * len(header))
    for size, image, batch, r in rows:
        print(
            f"{size:<6} {image:>5} {r['params_m']:>7.1f}M {batch:>5} {r['tokens']:>6.0f} "
            f"{r['step_ms']:>9.1f} {r['tokens_s']:>9.0f} {r['samples_s']:>9.2f} "
            f"{r['lm_ms']:>11.1f} {r['ratio']:>6.2f}"
        )
    print(
        "x LM: step time over a plain transformers Qwen2ForCausalLM of the same LM size "
        f"(tiny LM {rows[0][3]['lm_params_m']:.2f}M, small LM {rows[1][3]['lm_params_m']:.1f}M "
        "params) on the same token count."
    )


if __name__ == "__main__":
    main()
