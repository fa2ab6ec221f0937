"""The lmms-eval plugin imports without lmms-eval and names the extra when used."""

import importlib.util
from importlib.metadata import entry_points

import pytest

import sgt_eval.lmms_plugin as plugin

HAS_LMMS = importlib.util.find_spec("lmms_eval") is not None


def test_entry_point_is_registered() -> None:
    eps = {ep.name: ep.value for ep in entry_points(group="lmms_eval.models")}
    assert eps.get("sgt") == "sgt_eval.lmms_plugin:manifests"


@pytest.mark.skipif(HAS_LMMS, reason="checks the error raised when lmms-eval is absent")
def test_use_without_lmms_eval_names_the_extra() -> None:
    with pytest.raises(ImportError, match=r"pip install 'sgt-eval\[lmms-eval\]'"):
        plugin.manifests()
    with pytest.raises(ImportError, match=r"sgt-eval\[lmms-eval\]"):
        _ = plugin.SGTLmms
    with pytest.raises(AttributeError, match="no attribute 'Other'"):
        _ = plugin.Other  # type: ignore[attr-defined]


def test_generate_until_bridges_to_adapter_answer(monkeypatch: pytest.MonkeyPatch) -> None:
    """With a minimal stand-in for lmms-eval's base class and manifest (the real API's shape)."""
    import sys
    import types
    from dataclasses import dataclass

    import numpy as np
    from PIL import Image

    from sgt_eval_shapeworld import ShapeWorldAdapter, scene

    class lmms:  # noqa: N801 - lmms-eval's name
        def __init__(self) -> None:
            self.task_dict: dict = {}

    @dataclass(frozen=True)
    class ModelManifest:
        model_id: str
        simple_class_path: str | None = None
        chat_class_path: str | None = None
        aliases: tuple[str, ...] = ()

    for name in ("lmms_eval", "lmms_eval.api", "lmms_eval.models"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    api_model = types.ModuleType("lmms_eval.api.model")
    api_model.lmms = lmms  # type: ignore[attr-defined]
    reg = types.ModuleType("lmms_eval.models.registry_v2")
    reg.ModelManifest = ModelManifest  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "lmms_eval.api.model", api_model)
    monkeypatch.setitem(sys.modules, "lmms_eval.models.registry_v2", reg)
    monkeypatch.setattr(plugin, "_CLASS", None)

    (manifest,) = plugin.manifests()
    assert manifest.simple_class_path == "sgt_eval.lmms_plugin.SGTLmms"
    cls = plugin.SGTLmms
    assert issubclass(cls, lmms)
    assert cls.is_simple
    model = cls(adapter=ShapeWorldAdapter())
    doc = {"img": Image.fromarray(scene([("circle", "red")] * 2))}
    model.task_dict = {"t": {"test": [doc]}}

    class Req:
        args = (
            "How many circles are in the image? (A) 1 (B) 2\nAnswer.",
            {"until": ["\n"], "max_new_tokens": 8},
            lambda d: [d["img"]],
            0,
            "t",
            "test",
        )

    assert model.generate_until([Req()]) == ["B"]
    with pytest.raises(NotImplementedError):
        model.loglikelihood([])
    with pytest.raises(ValueError, match=r"adapter=\.\.\. or pretrained"):
        cls()
    assert np.asarray(doc["img"]).shape == (96, 96, 3)


def test_multi_image_and_text_only_documents_and_pickling(monkeypatch: pytest.MonkeyPatch) -> None:
    """Several images are answered side by side, none on a blank image, and the class (built
    on first access) pickles by reference."""
    import pickle
    import sys
    import types

    import numpy as np
    from PIL import Image

    class lmms:  # noqa: N801 - lmms-eval's name
        def __init__(self) -> None:
            self.task_dict: dict = {}

    for name in ("lmms_eval", "lmms_eval.api"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    api_model = types.ModuleType("lmms_eval.api.model")
    api_model.lmms = lmms  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "lmms_eval.api.model", api_model)
    monkeypatch.setattr(plugin, "_CLASS", None)

    seen: list[np.ndarray] = []

    class Adapter:
        def answer(self, images: list, questions: list, max_new_tokens: int) -> list[str]:
            seen.extend(images)
            return ["A"] * len(images)

    cls = plugin.SGTLmms
    assert pickle.loads(pickle.dumps(cls)) is cls
    model = cls(adapter=Adapter())
    red = Image.fromarray(np.full((20, 10, 3), (255, 0, 0), np.uint8))
    blue = Image.fromarray(np.full((40, 40, 3), (0, 0, 255), np.uint8))
    model.task_dict = {"t": {"test": [{"v": [red, blue]}, {"v": []}]}}

    class Req:
        def __init__(self, doc_id: int) -> None:
            self.args = ("q", {"until": []}, lambda d: d["v"], doc_id, "t", "test")

    assert model.generate_until([Req(0), Req(1)]) == ["A", "A"]
    both, blank = seen
    assert both.shape == (20, 30, 3)  # blue scaled to the first image's height, beside it
    assert (both[:, :10] == (255, 0, 0)).all()
    assert (both[:, 10:] == (0, 0, 255)).all()
    assert blank.shape == (64, 64, 3)
    assert (blank == 255).all()
