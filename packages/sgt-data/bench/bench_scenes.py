"""Scene-world generation speed, as ratios against PNG-encoding the same images (same process).

Run: ``python packages/sgt-data/bench/bench_scenes.py [num_scenes]``. Prints one table.
"""

from __future__ import annotations

import io
import sys
import tempfile
import time
from collections.abc import Callable

from PIL import Image

from sgt_data.scenes import (
    SceneConfig,
    coco_annotations,
    generate_scene,
    scene_prompt,
    scene_questions,
    write_world,
)


def _best_of(repeats: int, fn: Callable[[], object]) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    cfg = SceneConfig()
    generate_scene(0, cfg)  # compile / load the RLE kernels outside the timings
    coco_annotations(generate_scene(1, cfg), 1, 1)
    scenes = [generate_scene(s, cfg) for s in range(n)]

    def png_reference() -> None:
        for scene in scenes:
            Image.fromarray(scene.image).save(io.BytesIO(), format="PNG", compress_level=1)

    def scenes_only() -> None:
        for s in range(n):
            generate_scene(s, cfg)

    def scenes_and_labels() -> None:
        for s in range(n):
            scene = generate_scene(s, cfg)
            coco_annotations(scene, s + 1, 1)
            scene_questions(scene, cfg)
            scene_prompt(scene, cfg)

    def whole_world() -> None:
        with tempfile.TemporaryDirectory() as tmp:
            write_world(tmp, num_train=n, num_eval=0, seed=0, config=cfg)

    rows = [
        ("PNG-encode the image (reference)", _best_of(3, png_reference)),
        ("generate_scene", _best_of(3, scenes_only)),
        ("+ COCO annotations, questions, prompt", _best_of(3, scenes_and_labels)),
        ("write_world (all files on disk)", _best_of(2, whole_world)),
    ]
    reference = rows[0][1]
    print(f"scene world, {n} scenes of {cfg.height}x{cfg.width}")
    print(f"{'step':<40} {'seconds':>8} {'scenes/s':>9} {'x PNG ref':>9}")
    for name, seconds in rows:
        print(f"{name:<40} {seconds:>8.3f} {n / seconds:>9.0f} {seconds / reference:>9.1f}")


if __name__ == "__main__":
    main()
