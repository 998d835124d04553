"""The toy world: shapes and captions, its tokenizer, the shipped ToySD and scorer, training."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from accelopt.measure.metrics import TOY_CLIP, ClipScorer, score_loss
from accelopt.pipelines import load_pipeline, toy_folder
from accelopt.prompts import load_prompts
from accelopt.spec import load_spec
from accelopt.toy import evaluate, models, shapes, train

CPU = torch.device("cpu")


def test_draws_are_seeded() -> None:
    a, captions_a = shapes.draw(8, seed=3)
    b, captions_b = shapes.draw(8, seed=3)
    c, _ = shapes.draw(8, seed=4)
    assert torch.equal(a, b) and captions_a == captions_b
    assert not torch.equal(a, c)


def test_heldout_triples_never_appear_in_training_draws() -> None:
    def triples(split: shapes.Split) -> set[tuple[str, str, str]]:
        return {
            (s.colour, s.shape, s.background)
            for s in shapes.sample_scenes(3000, seed=1, split=split)
        }

    train_seen, heldout_seen = triples("train"), triples("heldout")
    assert train_seen and heldout_seen and not train_seen & heldout_seen
    # ... while every colour, shape and background alone is seen in training.
    assert {t[0] for t in train_seen} >= {t[0] for t in heldout_seen}
    assert {t[1] for t in train_seen} == set(shapes.SHAPES)
    assert {t[2] for t in train_seen} == set(shapes.BACKGROUNDS)
    assert all(colour != background for colour, _, background in train_seen | heldout_seen)


def test_caption_says_what_is_drawn() -> None:
    scene = shapes.Scene("one", "large", "red", "circle", "center", "white")
    assert scene.caption == "one large red circle in the center on a white background"
    two = shapes.Scene("two", "small", "blue", "square", "top left", "yellow")
    assert two.caption == "two small blue squares at the top left on a yellow background"
    image = shapes.render([scene], size=64)[0]
    assert torch.allclose(image[:, 32, 32], torch.tensor(shapes.COLOURS["red"]))
    assert torch.allclose(image[:, 2, 2], torch.tensor(shapes.COLOURS["white"]))


def test_groups_stay_inside_the_image() -> None:
    for scene in shapes.sample_scenes(500, seed=2):
        for x, y, r in shapes._layout(scene):
            assert r <= x <= 1 - r and r <= y <= 1 - r


def test_toy_tokenizer_splits_captions_as_clip_does() -> None:
    from accelopt.pipelines.tokenizers import clip_tokenizer

    toy, clip = models.tokenizer(), clip_tokenizer()
    assert len(toy) < 700
    assert toy.convert_tokens_to_ids("<|endoftext|>") == len(toy) - 1  # argmax pooling
    for caption in shapes.captions("heldout")[:50]:
        a = toy.convert_ids_to_tokens(toy(caption).input_ids)
        b = clip.convert_ids_to_tokens(clip(caption).input_ids)
        assert [t for t in a if t != "<|endoftext|>"] == [t for t in b if t != "<|endoftext|>"]
    # Text outside the captions still tokenizes, into smaller pieces, never to <unk>.
    assert len(toy("a photo of a cat", add_special_tokens=False).input_ids) > 5


def test_shapes_prompt_set_splits_like_the_data() -> None:
    search = load_prompts("search", None, "shapes")
    heldout = load_prompts("heldout", None, "shapes")
    assert len(search) == len(shapes.captions("train"))
    assert len(heldout) == len(shapes.captions("heldout"))
    assert not {p.text for p in search} & {p.text for p in heldout}
    assert load_prompts("search", 3, "shapes")[0].category in shapes.SHAPES


def test_toy_study_spec_uses_the_toy_world() -> None:
    spec = load_spec("ToySD-DDIM-20")
    assert (spec.pipeline, spec.resolution, spec.steps) == ("ToySD", 64, 20)
    assert spec.prompts.set == "shapes" and spec.metric.model == TOY_CLIP


def test_shipped_weights_fit_the_budget() -> None:
    files = [p for name in ("ToySD", TOY_CLIP) for p in toy_folder(name).rglob("*") if p.is_file()]
    sizes = [p.stat().st_size for p in files]
    assert max(sizes) < 16e6 and sum(sizes) < 25e6
    assert any(p.name == "open_clip_model.safetensors" for p in files)


@pytest.fixture(scope="module")
def toy() -> object:
    return load_pipeline("ToySD", dtype="float32", device="cpu")


@pytest.fixture(scope="module")
def scorer() -> ClipScorer:
    return ClipScorer(TOY_CLIP, "", CPU)


def test_toy_pipeline_loads_through_from_pretrained(toy, offline) -> None:  # type: ignore[no-untyped-def]
    assert type(toy).__name__ == "StableDiffusionPipeline"
    assert toy.tokenizer.model_max_length == models.CONTEXT_LENGTH
    assert toy.unet.config.sample_size * 4 == 64


def test_scorer_ranks_the_true_caption_of_heldout_images(scorer: ClipScorer) -> None:
    images, captions = shapes.draw(100, seed=99, split="heldout")
    found = evaluate.retrieval(scorer, images, captions, shapes.captions("heldout"))
    assert found["top1"] >= 0.9 and found["top5"] >= found["top1"]


def test_generated_images_follow_prompts_and_degrade_with_acceleration(toy, scorer) -> None:  # type: ignore[no-untyped-def]
    prompts = list(shapes.prompt_order("heldout")[:8])
    baseline = evaluate.generate(toy, prompts, {})
    found = evaluate.retrieval(scorer, baseline, prompts, shapes.captions("heldout"))
    assert found["top1"] >= 0.75  # among 100 captions each
    reference = scorer(baseline, prompts)
    mild = scorer(evaluate.generate(toy, prompts, evaluate.CONFIGS["DeepCache 2"]), prompts)
    harsh = scorer(evaluate.generate(toy, prompts, evaluate.CONFIGS["T-GATE gate 2"]), prompts)
    assert score_loss(reference, harsh) > 0.05 > score_loss(reference, mild)


def test_training_writes_folders_the_real_loaders_read(tmp_path: Path) -> None:
    small = ["vae_steps=2", "vae_batch=4", "steps=2", "batch=4", "calibration_images=32",
             "storage_check_prompts=2"]  # fmt: skip
    assert (
        train.main(["generator", "--out", str(tmp_path / "g"), "--device", "cpu", "--set", *small])
        == 0
    )
    record = json.loads((tmp_path / "g" / "train.json").read_text())
    assert record["unet"]["steps"] == 2 and not record["unet"]["stopped_early"]
    assert record["recipe"]["calibration_images"] == 32  # the --set values are the ones used
    assert record["fp16_storage_psnr_db"]["min"] > 40
    pipe = load_pipeline(str(tmp_path / "g" / "ToySD"), dtype="float32", device="cpu")
    assert pipe.unet.dtype == torch.float32

    assert train.main(["scorer", "--out", str(tmp_path / "s"), "--set", "steps=2", "batch=8"]) == 0
    trained = ClipScorer(f"local-dir:{tmp_path / 's' / 'toy-clip'}", "", CPU)
    assert len(trained(torch.rand(2, 3, 64, 64), ["one red circle", "two blue squares"])) == 2


def test_training_never_overwrites_without_force(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "toy-clip").mkdir()
    (tmp_path / "toy-clip" / "keep.txt").write_text("mine")
    with pytest.raises(SystemExit) as exit_info:
        train.main(["scorer", "--out", str(tmp_path), "--set", "steps=1"])
    assert exit_info.value.code == 2
    assert "already holds a trained scorer; pass --force" in capsys.readouterr().err
    assert (tmp_path / "toy-clip" / "keep.txt").read_text() == "mine"


def test_a_recipe_value_of_the_wrong_type_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        train.main(["scorer", "--out", str(tmp_path), "--set", "steps=many"])
    assert exit_info.value.code == 2
    assert "recipe entry steps='many': expected int" in capsys.readouterr().err


def test_unknown_recipe_entry_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        train.main(["scorer", "--out", str(tmp_path), "--set", "stepz=2"])
    assert exit_info.value.code == 2
    assert "unknown recipe entry 'stepz'" in capsys.readouterr().err
