"""One short GPU check (<= 3 minutes): the ``small`` reference model in bf16, forward+backward.

Prints samples/s and tokens/s of forward+backward of a mixed batch, the FLOPs of one step (counted
by ``torch.utils.flop_counter``), the GPU's measured peak bf16 matmul throughput (a large square
matmul in the same process) and the achieved fraction of that peak. Not part of ``nox -s bench``
(its name does not start with ``bench_``); run it by hand on a lent GPU:

    python packages/sgt-models/bench/gpu_check.py [--batch 16] [--image 256]
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from sgt_models import ReferenceAdapterConfig
from sgt_models.reference import ReferenceAdapter
from sgt_models.testing import contract_samples


def _timed(fn: object, iters: int) -> float:
    assert callable(fn)
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / iters


def peak_matmul_tflops(n: int = 8192, iters: int = 20) -> float:
    """Measured bf16 matmul throughput of an ``n x n x n`` product (TFLOP/s)."""
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    seconds = _timed(lambda: a @ b, iters)
    return 2 * n**3 / seconds / 1e12


def main() -> None:
    """Run the check and print a table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--image", type=int, default=256)
    parser.add_argument("--iters", type=int, default=10)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("gpu_check.py needs a CUDA GPU")
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.manual_seed(0)
    config = ReferenceAdapterConfig(size="small", image_size=args.image, dtype="bfloat16")
    adapter = ReferenceAdapter(config).cuda()
    pool = contract_samples(args.image)
    samples = [pool[0] if i % 2 == 0 else pool[1] for i in range(args.batch)]
    batch = adapter.collate(samples).to("cuda")
    tokens = int(batch.attention_mask.sum())

    def step() -> None:
        adapter.zero_grad(set_to_none=True)
        adapter(batch).total.backward()

    for _ in range(3):
        step()
    counter = FlopCounterMode(display=False)
    with counter:
        step()
    flops = counter.get_total_flops()
    seconds = _timed(step, args.iters)
    peak = peak_matmul_tflops()
    achieved = flops / seconds / 1e12
    params = sum(p.numel() for p in adapter.parameters()) / 1e6
    print(f"device: {torch.cuda.get_device_name()}  torch {torch.__version__}")
    print(
        f"small reference model, {params:.1f}M params, bf16, image {args.image}, "
        f"batch {args.batch} (half understanding, half segmentation), {tokens} LM tokens"
    )
    print(
        f"{'step ms':>9} {'samples/s':>10} {'tokens/s':>10} {'TFLOP/step':>11} "
        f"{'TFLOP/s':>8} {'peak TFLOP/s':>13} {'of peak':>8}"
    )
    print(
        f"{seconds * 1e3:>9.1f} {args.batch / seconds:>10.1f} {tokens / seconds:>10.0f} "
        f"{flops / 1e12:>11.3f} {achieved:>8.1f} {peak:>13.1f} {achieved / peak:>8.1%}"
    )


if __name__ == "__main__":
    main()
