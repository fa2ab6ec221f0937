"""``sgt-train demo``: the whole SGT loop on a CPU in minutes (scene world -> stores -> DeepSpeed
training of base, VQA-only control and SGT -> sgt-eval -> a report folder).

Importing this package imports neither torch nor DeepSpeed.
"""

from sgt_train.demo.pipeline import DEMO_SIZES, DemoResult, DemoSize, run_demo

__all__ = ["DEMO_SIZES", "DemoResult", "DemoSize", "run_demo"]
