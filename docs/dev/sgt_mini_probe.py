"""Diagnostics of the reference model on the scene world (issue 16, docs/dev/sgt-mini-findings.md).

Two probes, each a few minutes on one CPU thread (``OMP_NUM_THREADS=1``)::

    python docs/dev/sgt_mini_probe.py existence [--oracle] [--film] [--lr 1e-3] [--steps 1200]
    python docs/dev/sgt_mini_probe.py vision [--objective dense|image] [--train-scenes 40000]

``existence`` trains the tiny reference model in process on balanced six-class existence questions
("Is there a {class} in the image?", a present or an absent class with probability 1/2; with
``--counting`` also 30 % counting questions) and prints, every ``--every`` steps, the within-class
AUC of the Yes - No logit at the answer position on held-out scenes (chance 50; a class prior cannot
produce it), the balanced accuracy of its sign and the counting accuracy with its majority baseline.
``--oracle`` replaces the 64 image tokens by the LM's own input embeddings of the class word under
each 8x8 patch (" the" for background): a perfect "word grid", so only the LM's matching is tested.
``--vision-pretrain N`` first trains the vision encoder and connector for N steps with the
``vision`` probe's objective. ``--oracle-pretrain N`` first trains N steps on the word grid
(``--freeze-lm`` then freezes the LM and the FiLM, so that only the vision side learns from the
images). ``--init-from DIR`` starts from an exported reference model (e.g. a segmentation run;
pass its config options with ``--model``, e.g. ``'{"spatial_condition": true}'``).

``vision`` trains the understanding encoder alone (SigLIP + connector + a linear head per token)
either ``dense`` (per-token class histogram of the semantic map, 7 classes with background) or
``image`` (multi-label presence from the max over tokens) and prints the per-class presence AUC of
the max-over-tokens score on held-out scenes.

Not part of any package; it calls the public model API plus ``ReferenceAdapter``'s embedding
helpers, and is kept here so that every figure of the findings can be re-measured.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from torch.nn import functional

from sgt_data.scene_questions import scene_questions
from sgt_data.scenes import SCENE_CLASSES, SceneConfig, generate_scene, semantic_map
from sgt_models.config import ReferenceAdapterConfig
from sgt_models.reference import ReferenceAdapter, configuration
from sgt_models.reference.processor import images_to_tensor

SHORT_ANSWER = "Answer the question using a single word or phrase."
NUMBERS = ("0", "1", "2", "3", "4", "5")
HELD_OUT_SEED = 1_000_000


@dataclass(frozen=True)
class Scene:
    image: NDArray[np.uint8]
    present: tuple[str, ...]
    classes: tuple[str, ...]  # one entry per object
    semantic: NDArray[np.uint8]  # category_id - 1, 255 = background
    # the world's own training questions of the scene (``--questions``): (type, text, answer)
    questions: tuple[tuple[str, str, str], ...] = ()


def make_scenes(
    first: int, count: int, config: SceneConfig, questions: bool = False
) -> list[Scene]:
    out = []
    for seed in range(first, first + count):
        scene = generate_scene(seed, config)
        classes = tuple(o.class_name for o in scene.objects)
        if classes:
            asked = (
                tuple(
                    (q.question_type, q.question, q.answer) for q in scene_questions(scene, config)
                )
                if questions
                else ()
            )
            out.append(
                Scene(scene.image, tuple(sorted(set(classes))), classes, semantic_map(scene), asked)
            )
    return out


def auc(pos: NDArray[np.float64], neg: NDArray[np.float64]) -> float:
    if not len(pos) or not len(neg):
        return float("nan")
    p, n = pos[:, None], neg[None, :]
    return float(((p > n).mean() + 0.5 * (p == n).mean()) * 100)


def existence_question(name: str) -> str:
    article = "an" if name[0] in "aeiou" else "a"
    return f"Is there {article} {name} in the image?\n{SHORT_ANSWER}"


def counting_question(name: str) -> str:
    return f"How many {name}s are there?\n{SHORT_ANSWER}"


class Probe:
    """The model, its token-level inputs and the optional oracle image tokens."""

    def __init__(self, model: ReferenceAdapter, oracle: bool) -> None:
        self.model = model
        self.proc = model.processor
        self.oracle = oracle
        encode = self.proc.encode_text
        self.word_ids = torch.tensor(
            [encode(" the")[0]] + [encode(f" {c}")[0] for c in SCENE_CLASSES]
        )
        self.yes, self.no = encode("Yes")[0], encode("No")[0]
        self.numbers = torch.tensor([encode(n)[0] for n in NUMBERS])

    def grid_words(self, scene: Scene) -> torch.Tensor:
        """Token ids of the class under each patch (any object pixel beats background)."""
        grid = self.model.token_grid
        labels = torch.from_numpy(scene.semantic.astype(np.int64))
        labels = torch.where(labels == 255, 0, labels + 1)
        onehot = functional.one_hot(labels, 7).float().permute(2, 0, 1)[None]
        hist = functional.avg_pool2d(onehot, labels.shape[0] // grid)[0]
        hist[0] *= 0.3
        return self.word_ids[hist.argmax(0).flatten()]

    def batch(
        self, items: list[tuple[Scene, str, str | None]]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """input_ids, attention mask, labels and the LM input embeddings of (scene, q, answer)."""
        proc = self.proc
        rows, labels = [], []
        for _, question, answer in items:
            ids, _ = proc.prompt_ids(question, True, proc.answer_id)
            tail = [*proc.encode_text(answer), proc.eos_id] if answer is not None else []
            rows.append(ids + tail)
            labels.append([-100] * len(ids) + tail)
        length = max(len(r) for r in rows)
        input_ids = torch.full((len(rows), length), proc.pad_id)
        label_ids = torch.full((len(rows), length), -100)
        mask = torch.zeros((len(rows), length), dtype=torch.long)
        for i, (row, label) in enumerate(zip(rows, labels, strict=True)):
            input_ids[i, : len(row)] = torch.tensor(row)
            label_ids[i, : len(label)] = torch.tensor(label)
            mask[i, : len(row)] = 1
        size = self.model.config.image_size
        if not self.oracle:
            pixels = images_to_tensor([s.image for s, _, _ in items], (size, size))
            embeds = self.model._embed(input_ids, pixels)
        else:
            table = self.model.llm.get_input_embeddings()
            slots = (input_ids == proc.image_id).unsqueeze(-1)
            grid = torch.stack([self.grid_words(s) for s, _, _ in items])
            embeds = table(input_ids).masked_scatter(slots, table(grid))
            if self.model.question_film is not None:
                embeds = self.model._film_image_tokens(input_ids, embeds)
        return input_ids, mask, label_ids, embeds

    def hidden(self, mask: torch.Tensor, embeds: torch.Tensor) -> torch.Tensor:
        out = self.model.llm.model(inputs_embeds=embeds, attention_mask=mask)
        hidden: torch.Tensor = out.last_hidden_state
        return hidden

    def loss(self, items: list[tuple[Scene, str, str | None]]) -> torch.Tensor:
        _, mask, labels, embeds = self.batch(items)
        hidden = self.hidden(mask, embeds)[:, :-1]
        target = labels[:, 1:]
        selected = target != -100
        logits = self.model.llm.lm_head(hidden[selected])
        return functional.cross_entropy(logits.float(), target[selected])

    @torch.no_grad()
    def answer_logits(self, items: list[tuple[Scene, str, str | None]]) -> torch.Tensor:
        _, mask, _, embeds = self.batch(items)
        hidden = self.hidden(mask, embeds)
        last = mask.sum(dim=1) - 1
        logits: torch.Tensor = self.model.llm.lm_head(hidden[torch.arange(len(items)), last])
        return logits.float()


def evaluate(probe: Probe, scenes: list[Scene], counting: bool) -> dict[str, float]:
    probe.model.eval()
    items = [(s, existence_question(c), None) for s in scenes for c in SCENE_CLASSES]
    truth = np.array([c in s.present for s in scenes for c in SCENE_CLASSES])
    classes = np.array([c for _ in scenes for c in SCENE_CLASSES])
    margins = []
    for start in range(0, len(items), 64):
        logits = probe.answer_logits(items[start : start + 64])
        margins.append((logits[:, probe.yes] - logits[:, probe.no]).numpy())
    margin = np.concatenate(margins)
    per_class = [
        auc(margin[truth & (classes == c)], margin[~truth & (classes == c)]) for c in SCENE_CLASSES
    ]
    said_yes = margin > 0
    result = {
        "auc": round(float(np.nanmean(per_class)), 1),
        "balanced": round(50 * float(said_yes[truth].mean() + (~said_yes[~truth]).mean()), 1),
        "yes_rate": round(100 * float(said_yes.mean()), 1),
    }
    if counting:
        count_items = [(s, counting_question(c), None) for s in scenes for c in s.present]
        counts = np.array([s.classes.count(c) for s in scenes for c in s.present])
        hits = 0
        for start in range(0, len(count_items), 64):
            logits = probe.answer_logits(count_items[start : start + 64])
            guess = logits[:, probe.numbers].argmax(dim=1).numpy()
            hits += int((guess == counts[start : start + 64]).sum())
        result["counting"] = round(100 * hits / len(count_items), 1)
        result["counting_majority"] = round(100 * float(np.bincount(counts).max()) / len(counts), 1)
    probe.model.train()
    return result


def world_items(
    pool: list[tuple[Scene, str, str]], n: int, rng: np.random.Generator
) -> list[tuple[Scene, str, str | None]]:
    """``n`` of the world's own training questions (``--questions``), drawn uniformly."""
    return [pool[int(i)] for i in rng.integers(len(pool), size=n)]


def training_items(
    scenes: list[Scene], n: int, rng: np.random.Generator, counting: bool
) -> list[tuple[Scene, str, str | None]]:
    items: list[tuple[Scene, str, str | None]] = []
    for _ in range(n):
        scene = scenes[int(rng.integers(len(scenes)))]
        if counting and rng.random() < 0.3:
            name = scene.present[int(rng.integers(len(scene.present)))]
            if rng.random() < 0.3:
                name = SCENE_CLASSES[int(rng.integers(len(SCENE_CLASSES)))]
            items.append((scene, counting_question(name), NUMBERS[scene.classes.count(name)]))
            continue
        absent = [c for c in SCENE_CLASSES if c not in scene.present]
        positive = rng.random() < 0.5 or not absent
        pool = scene.present if positive else tuple(absent)
        name = pool[int(rng.integers(len(pool)))]
        items.append((scene, existence_question(name), "Yes" if positive else "No"))
    return items


class VisionHead(torch.nn.Module):
    """Linear per-token head over the connector output: background + the six classes."""

    def __init__(self, model: ReferenceAdapter) -> None:
        super().__init__()
        self.model = model
        self.head = torch.nn.Linear(model.arch.lm_hidden, 1 + len(SCENE_CLASSES))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        features = self.model.vision_encoder(pixel_values=pixels).last_hidden_state
        logits: torch.Tensor = self.head(self.model.connector(features))
        return logits  # (B, tokens, 7)


def vision_loss(vision: VisionHead, batch: list[Scene], objective: str) -> torch.Tensor:
    size = vision.model.config.image_size
    logits = vision(images_to_tensor([s.image for s in batch], (size, size)))
    if objective == "image":
        present = torch.tensor([[c in s.present for c in SCENE_CLASSES] for s in batch]).float()
        return functional.binary_cross_entropy_with_logits(logits[..., 1:].amax(dim=1), present)
    labels = torch.from_numpy(np.stack([s.semantic for s in batch]).astype(np.int64))
    labels = torch.where(labels == 255, 0, labels + 1)
    onehot = functional.one_hot(labels, 7).float().permute(0, 3, 1, 2)
    target = functional.avg_pool2d(onehot, size // vision.model.token_grid)
    target = target.flatten(2).transpose(1, 2)
    return -(target * functional.log_softmax(logits, dim=-1)).sum(-1).mean()


@torch.no_grad()
def presence_auc(vision: VisionHead, scenes: list[Scene], objective: str) -> list[float]:
    size = vision.model.config.image_size
    logits = vision(images_to_tensor([s.image for s in scenes], (size, size)))
    scores = logits[..., 1:] if objective == "image" else functional.softmax(logits, -1)[..., 1:]
    best = scores.amax(dim=1).numpy()
    return [
        auc(
            best[[c in s.present for s in scenes], k], best[[c not in s.present for s in scenes], k]
        )
        for k, c in enumerate(SCENE_CLASSES)
    ]


def train_vision(
    model: ReferenceAdapter,
    train: list[Scene],
    held_out: list[Scene],
    args: argparse.Namespace,
    steps: int,
    t0: float,
) -> None:
    vision = VisionHead(model)
    params = [p for p in vision.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=args.vision_lr or args.lr)
    rng = np.random.default_rng(args.seed + 1)
    for step in range(steps + 1):
        if step % args.every == 0 or step == steps:
            vision.eval()
            scores = presence_auc(vision, held_out, args.objective)
            vision.train()
            print(
                f"vision step {step} mean presence AUC {np.nanmean(scores):.1f} "
                f"{np.round(scores, 1).tolist()} {time.time() - t0:.0f}s",
                flush=True,
            )
        if step == steps:
            break
        batch = [train[int(i)] for i in rng.integers(len(train), size=args.batch)]
        loss = vision_loss(vision, batch, args.objective)
        opt.zero_grad()
        loss.backward()
        opt.step()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("probe", choices=["existence", "vision"])
    parser.add_argument("--train-scenes", type=int, default=2000)
    parser.add_argument("--held-out-scenes", type=int, default=200)
    parser.add_argument("--steps", type=int, default=1200)
    parser.add_argument("--every", type=int, default=100)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--vision-lr", type=float, default=None, help="vision probe / pretraining")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--world", default="{}", help="SceneConfig fields as JSON")
    parser.add_argument("--arch", default="{}", help="tiny preset fields as JSON, e.g. lm_hidden")
    parser.add_argument("--model", default="{}", help="ReferenceAdapterConfig fields as JSON")
    parser.add_argument("--film", action="store_true", help="question_film=True")
    parser.add_argument("--oracle", action="store_true")
    parser.add_argument("--counting", action="store_true")
    parser.add_argument("--vision-pretrain", type=int, default=0, metavar="STEPS")
    parser.add_argument("--objective", choices=["dense", "image"], default="dense")
    parser.add_argument("--oracle-pretrain", type=int, default=0, metavar="STEPS")
    parser.add_argument("--init-from", default=None, help="an exported reference model folder")
    parser.add_argument("--freeze-lm", action="store_true", help="after the oracle: vision only")
    parser.add_argument(
        "--questions",
        default=None,
        help="train on the world's own questions (scene_questions) of these comma-separated "
        "types, or 'all' (existence, counting, color, relation, depth), instead of the probe's mix",
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    t0 = time.time()
    world = SceneConfig(**json.loads(args.world))
    train = make_scenes(0, args.train_scenes, world, questions=args.questions is not None)
    held_out = make_scenes(HELD_OUT_SEED, args.held_out_scenes, world)
    print(
        f"{len(train)} train / {len(held_out)} held-out scenes in {time.time() - t0:.0f}s",
        flush=True,
    )
    arch: dict[str, Any] = json.loads(args.arch)
    if arch:
        tiny = configuration.architecture_for("tiny")
        configuration._PRESETS["tiny"] = replace(tiny, **arch)
    fields: dict[str, Any] = {"size": "tiny", "image_size": world.height, **json.loads(args.model)}
    if args.film:
        fields["question_film"] = True
    model = ReferenceAdapter(ReferenceAdapterConfig(**fields))
    if args.init_from:
        # e.g. an exported segmentation run: its vision encoder, LM and generator, a fresh FiLM
        from safetensors.torch import load_model

        missing, unexpected = load_model(model, f"{args.init_from}/model.safetensors", strict=False)
        print(f"init from {args.init_from}: missing {missing}, unexpected {unexpected}", flush=True)
    if args.probe == "vision":
        train_vision(model, train, held_out, args, args.steps, t0)
        return
    if args.vision_pretrain:
        train_vision(model, train, held_out, args, args.vision_pretrain, t0)
    rng = np.random.default_rng(args.seed)
    if args.oracle_pretrain:
        # the LM (and the FiLM) learn the matching on word grids first, like an LM pretrained on text
        train_existence(
            Probe(model, oracle=True), train, held_out, args, args.oracle_pretrain, rng, t0
        )
        if args.freeze_lm:
            frozen = [*model.llm.parameters()]
            if model.question_film is not None:
                frozen += [*model.question_film.parameters()]
            for p in frozen:
                p.requires_grad_(False)
    train_existence(Probe(model, args.oracle), train, held_out, args, args.steps, rng, t0)


def train_existence(
    probe: Probe,
    train: list[Scene],
    held_out: list[Scene],
    args: argparse.Namespace,
    steps: int,
    rng: np.random.Generator,
    t0: float,
) -> None:
    params = [p for p in probe.model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0)
    stage = "oracle" if probe.oracle else "images"
    pool: list[tuple[Scene, str, str]] = []
    if args.questions is not None and not probe.oracle:
        wanted = set(args.questions.split(","))
        pool = [
            (s, text, answer)
            for s in train
            for kind, text, answer in s.questions
            if "all" in wanted or kind in wanted
        ]
        print(f"{len(pool)} world questions of types {sorted(wanted)}", flush=True)
    for step in range(steps + 1):
        if step % args.every == 0 or step == steps:
            result = evaluate(probe, held_out, args.counting)
            print(f"{stage} step {step} {result} {time.time() - t0:.0f}s", flush=True)
        if step == steps:
            break
        if pool:
            items = world_items(pool, args.batch, rng)
        else:
            items = training_items(train, args.batch, rng, args.counting)
        loss = probe.loss(items)
        opt.zero_grad()
        loss.backward()
        opt.step()


if __name__ == "__main__":
    main()
