"""Tests of `training.pretrain_base` (and of `training.config`): a few steps on tiny models, as TRL tests trainers."""

import dataclasses
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from accelerate import Accelerator
from helpers import launch_cpu, optimizer_state
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor

from training.config import load_config, parse_args, scalar_fields
from training.pretrain_base import (
    PretrainBaseConfig,
    build_model,
    model_overrides,
    pretrain,
    render_pool,
    sample_batch,
    train_step,
)
from training.sequences import ConversationEncoder, user_messages
from training.vision_stage import (
    MAX_CELL_COUNT,
    TARGETS,
    TRUNK,
    SharedVisionClassifier,
    VisionClassifier,
    VisionStageConfig,
    cell_targets,
    classification_loss,
    scene_targets,
)
from zreward_diffusers import ZRewardScorer
from zreward_diffusers.preprocessing import QwenVLImageTransform
from zreward_diffusers.synthetic import SyntheticWorld
from zreward_diffusers.synthetic.grammar import OBJECT_COLOURS, SHAPES, PromptSpec
from zreward_diffusers.synthetic.scene import SceneObject, perfect_scene
from zreward_diffusers.tiny_tokenizer import build_tiny_tokenizer

TINY_MODELS = {
    "student": {"text_config": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                                "num_attention_heads": 2, "num_key_value_heads": 1},
                "vision_config": {"depth": 1}},
    "teacher": {"text_config": {"hidden_size": 64, "intermediate_size": 128}},
}


def few_step_config(output_dir, vision: dict | None = None, **changes) -> PretrainBaseConfig:
    """A tiny run's config: `changes` replace its fields, `vision` (a dict) its stage-0 settings (no stage 0)."""
    config = PretrainBaseConfig(
        output_dir=str(output_dir), models=TINY_MODELS, num_train_images=32, num_eval_images=8, batch_size=8,
        micro_batch_size=4, steps=4, eval_every=0, save_every=2, log_with=None, weight_decay=0.0, lr=1e-3,
        warmup_steps=1, lr_scheduler="constant_with_warmup", vision=VisionStageConfig(steps=0),
        # Qwen2-VL's 14-pixel patches on 56 px images, unresized: 4 image tokens, so the tests stay fast
        min_pixels=56 * 56, max_pixels=112 * 112, patch_size=14,
    )
    return dataclasses.replace(config, vision=dataclasses.replace(config.vision, **(vision or {})), **changes)


def stage_0(changes: dict, **settings) -> dict:
    """The stage-0 settings of `few_step_config` changes `changes`, with `settings` replaced."""
    return dict(changes.get("vision", {}), **settings)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    config = few_step_config(tmp_path_factory.mktemp("base"), log_with="tensorboard")
    return config, pretrain(config)


@pytest.mark.parametrize("name", ["student", "teacher"])
def test_every_trainable_parameter_changed(run, name):
    config, _ = run
    processor = AutoProcessor.from_pretrained(f"{config.output_dir}/{name}")
    initial = build_model(processor.tokenizer, config.models[name], config.seed)
    trained = AutoModelForImageTextToText.from_pretrained(f"{config.output_dir}/{name}")
    trained_parameters = dict(trained.named_parameters())
    assert trained_parameters.keys() == dict(initial.named_parameters()).keys()
    for parameter_name, parameter in initial.named_parameters():
        assert not torch.equal(parameter, trained_parameters[parameter_name]), f"{parameter_name} did not change"


def test_checkpoints_load_as_ordinary_hf_checkpoints_and_as_scorers(run):
    config, results = run
    metrics = json.loads((Path(config.output_dir) / "metrics.json").read_text())
    assert set(metrics) == {"student", "teacher"}
    attributes = {"colour", "shape", "count", "background"}
    assert set(metrics["student"]["held_out_accuracy"]) == attributes | {f"{key}_clean" for key in attributes}
    assert metrics["teacher"]["parameters"] > metrics["student"]["parameters"]
    assert list(Path(config.output_dir).glob("pretrain_base/**/events.out.tfevents.*"))  # TensorBoard
    student = AutoProcessor.from_pretrained(f"{config.output_dir}/student")
    teacher = AutoProcessor.from_pretrained(f"{config.output_dir}/teacher")
    assert student.tokenizer.get_vocab() == teacher.tokenizer.get_vocab()  # distillation compares token by token
    assert student.image_processor.size["shortest_edge"] == config.min_pixels
    model = AutoModelForImageTextToText.from_pretrained(f"{config.output_dir}/student")
    scorer = ZRewardScorer(model, student)  # checks that "1".."9" are single tokens after "Score: "
    out = scorer(torch.rand(2, 3, 56, 56), ["a red circle", "two blue squares"])
    assert out.probs.shape == (2, 4, 9)
    assert torch.allclose(out.probs.sum(-1), torch.ones(2, 4))


def test_resume_continues_exactly(run, tmp_path):
    full_config, full = run
    student_only = {"student": TINY_MODELS["student"]}
    first = pretrain(few_step_config(tmp_path, models=student_only, steps=2))
    resumed = pretrain(few_step_config(tmp_path, models=student_only, steps=4, resume=True))
    assert len(first["student"]["losses"]) == 2 and len(resumed["student"]["losses"]) == 4  # history carried over
    assert first["student"]["resumed_from_step"] == 0 and resumed["student"]["resumed_from_step"] == 2
    assert resumed["student"]["losses"][:2] == first["student"]["losses"]
    torch.testing.assert_close(resumed["student"]["losses"], full["student"]["losses"], rtol=0, atol=1e-5)
    curve = json.loads((tmp_path / "metrics.json").read_text())["student"]["loss_curve"]
    assert [step for step, _ in curve] == [1, 2, 3, 4]
    resumed_model = AutoModelForImageTextToText.from_pretrained(tmp_path / "student")
    full_model = AutoModelForImageTextToText.from_pretrained(f"{full_config.output_dir}/student")
    for (name, a), (_, b) in zip(resumed_model.named_parameters(), full_model.named_parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5, msg=name)


def test_conversation_stage_with_muon_trains_every_parameter_and_resumes_exactly(tmp_path):
    student_only = {"student": TINY_MODELS["student"]}
    changes = dict(models=student_only, optimizer="muon", muon_lr=0.02)
    full = pretrain(few_step_config(tmp_path / "full", **changes))["student"]
    first = pretrain(few_step_config(tmp_path / "resumed", **dict(changes, steps=2)))["student"]
    resumed = pretrain(few_step_config(tmp_path / "resumed", **changes, resume=True))["student"]
    assert resumed["losses"][:2] == first["losses"]
    torch.testing.assert_close(resumed["losses"], full["losses"], rtol=0, atol=1e-5)
    processor = AutoProcessor.from_pretrained(tmp_path / "full" / "student")
    initial = build_model(processor.tokenizer, student_only["student"], seed=0)
    trained = dict(AutoModelForImageTextToText.from_pretrained(tmp_path / "full" / "student").named_parameters())
    for name, parameter in initial.named_parameters():
        assert not torch.equal(parameter, trained[name]), name
    # Muon's momentum on the weight matrices but the embeddings and the head; AdamW's moments on those
    state = optimizer_state(tmp_path / "full" / "checkpoints" / "student")
    matrices = [name for name, parameter in initial.named_parameters()
                if parameter.ndim == 2 and not name.startswith(("model.language_model.embed_tokens", "lm_head"))]
    assert sum("momentum_buffer" in moments for moments in state.values()) == len(matrices)
    assert sum("exp_avg" in moments for moments in state.values()) == len(list(initial.parameters())) - len(matrices)


def test_task_data_is_a_function_of_seed_and_step():
    config = few_step_config("unused")
    items = SyntheticWorld(0).generate(32)
    rows = sample_batch(items, 3, config)
    assert rows == sample_batch(SyntheticWorld(0).generate(32), 3, config)
    assert len(rows) == config.batch_size and all(1 <= len(turns) <= config.questions_per_image for _, turns in rows)
    assert sample_batch(items, 3, config) != sample_batch(items, 4, config)
    assert sample_batch(items, 3, config) != sample_batch(items, 3, dataclasses.replace(config, seed=1))


def test_micro_batches_give_the_full_batch_gradient(run):
    config, _ = run
    processor = AutoProcessor.from_pretrained(f"{config.output_dir}/student")
    items = SyntheticWorld(0).generate(32)
    encoder = ConversationEncoder(processor, torch.from_numpy(np.stack([item.image for item in items])))
    rows = sample_batch(items, 0, config)
    gradients = []
    for micro_batch_size in (len(rows), 3):
        model = build_model(processor.tokenizer, config.models["student"], seed=0)
        loss = train_step(model, encoder, rows, Accelerator(), micro_batch_size)
        gradients.append((loss, [p.grad for p in model.parameters()]))
    torch.testing.assert_close(gradients[0][0], gradients[1][0])
    for full, micro in zip(gradients[0][1], gradients[1][1], strict=True):
        torch.testing.assert_close(full, micro, rtol=1e-4, atol=1e-6)


def test_encoded_conversation_matches_the_processor(run):
    config, _ = run
    processor = AutoProcessor.from_pretrained(f"{config.output_dir}/student")
    items = SyntheticWorld(0).generate(4)
    encoder = ConversationEncoder(processor, torch.from_numpy(np.stack([item.image for item in items])))
    turns = [("What colour are the objects?", items[1].scene.colour), ("Is the image noisy?", "no")]
    batch = encoder([(1, turns)])
    conversation = user_messages(turns[0][0]) + [
        {"role": "assistant", "content": [{"type": "text", "text": turns[0][1]}]},
        *user_messages(turns[1][0], with_image=False),
        {"role": "assistant", "content": [{"type": "text", "text": turns[1][1]}]},
    ]
    text = processor.apply_chat_template(conversation, tokenize=False).removesuffix("\n")
    official = processor(text=[text], images=[Image.fromarray(items[1].image)], return_tensors="pt",
                         add_special_tokens=False)
    assert batch["input_ids"].tolist() == official["input_ids"].tolist()
    assert batch["mm_token_type_ids"].tolist() == official["mm_token_type_ids"].tolist()
    torch.testing.assert_close(batch["pixel_values"], official["pixel_values"], rtol=0, atol=1e-6)
    answers = processor.tokenizer.decode(batch["input_ids"][0][batch["label_weights"][0] > 0])
    assert answers == f"{items[1].scene.colour}<|im_end|>no<|im_end|>"
    assert batch["label_weights"].sum() == pytest.approx(2.0)  # each answer weighs 1


def test_config_loading_rejects_unknown_keys_and_applies_overrides(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("lr: 3e-4\nsteps: 10\nbogus: 1\n")
    with pytest.raises(ValueError, match="bogus"):
        load_config(PretrainBaseConfig, path)
    path.write_text("lr: 3e-4\nsteps: 10\n")
    with pytest.raises(ValueError, match="nope"):
        parse_args(PretrainBaseConfig, ["--config", str(path), "--nope", "3"])
    config = parse_args(PretrainBaseConfig, ["--config", str(path), "--batch_size=16", "--resume",
                                             "--models.teacher.text_config.num_hidden_layers", "6"])
    assert (config.lr, config.steps, config.batch_size, config.resume) == (3e-4, 10, 16, True)
    assert config.models["teacher"]["text_config"]["num_hidden_layers"] == 6
    default = PretrainBaseConfig().models
    assert config.models["teacher"]["vision_config"] == default["teacher"]["vision_config"]  # the rest is kept
    assert config.models["student"] == default["student"]
    assert parse_args(PretrainBaseConfig, ["--log_with", "none"]).log_with is None  # "none" switches trackers off
    assert parse_args(PretrainBaseConfig, ["--log_with", "tensorboard"]).log_with == "tensorboard"
    with pytest.raises(ValueError, match="text_config.hidden_sise"):
        build_model(build_tiny_tokenizer("qwen2_vl"), {"text_config": {"hidden_sise": 8}}, seed=0)


@dataclasses.dataclass
class _Optimizer:
    lr: float = 1e-3
    betas: tuple = (0.9, 0.999)


@dataclasses.dataclass
class _Nested:
    optimizer: _Optimizer = dataclasses.field(default_factory=_Optimizer)
    steps: int = 1


def test_config_loading_builds_nested_dataclasses(tmp_path):
    path = tmp_path / "nested.yaml"
    path.write_text("optimizer:\n  lr: 3e-4\nsteps: 2\n")
    config = parse_args(_Nested, ["--config", str(path), "--optimizer.betas", "[0.9, 0.95]"])
    assert config == _Nested(_Optimizer(3e-4, [0.9, 0.95]), steps=2)
    with pytest.raises(ValueError, match=r"optimizer\.momentum"):
        load_config(_Nested, overrides={"optimizer.momentum": 0.9})


def test_stage_0_settings_are_one_nested_field(tmp_path, capsys):
    """`vision` (`VisionStageConfig`): from YAML or dotted overrides, checked by its own `__post_init__` under its
    dotted names, dumped by `asdict` and loaded back equal, listed by `--help` and flattened for the trackers."""
    config = PretrainBaseConfig(steps=3, vision=VisionStageConfig(
        steps=7, head="mean", cell_weight=0.5, lr=1e-3, optimizer="adamw", muon_lr=0.01, batch_size=8, num_images=40,
        pool_from_train=False, shared=False))
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(dataclasses.asdict(config)))
    assert load_config(PretrainBaseConfig, path) == config
    overridden = parse_args(PretrainBaseConfig, ["--config", str(path), "--vision.steps", "9"])
    assert overridden == dataclasses.replace(config, vision=dataclasses.replace(config.vision, steps=9))  # rest kept
    path.write_text("vision: {steps: 10}\n")
    assert load_config(PretrainBaseConfig, path).vision == VisionStageConfig(steps=10)
    # a bad value is refused by its dotted name, from the file, the overrides or the command line
    path.write_text("vision: {steps: -1}\n")
    for build in (lambda: load_config(PretrainBaseConfig, path),
                  lambda: load_config(PretrainBaseConfig, overrides={"vision.steps": -1}),
                  lambda: parse_args(PretrainBaseConfig, ["--vision.steps", "-1"])):
        with pytest.raises(ValueError, match=r"`vision\.steps` must be an integer >= 0, got -1"):
            build()
    with pytest.raises(ValueError, match=r"`vision\.steps` must be int, got 'ten'"):
        load_config(PretrainBaseConfig, overrides={"vision.steps": "ten"})
    with pytest.raises(ValueError, match=r"unknown config keys \['vision\.stepz'\]"):
        load_config(PretrainBaseConfig, overrides={"vision.stepz": 1})
    with pytest.raises(ValueError, match="`vision` must be a mapping of VisionStageConfig's fields"):
        load_config(PretrainBaseConfig, overrides={"vision": 5})
    # --help lists the nested fields by their dotted names under stage 0's heading
    with pytest.raises(SystemExit):
        parse_args(PretrainBaseConfig, ["--help"])
    stage_0 = capsys.readouterr().out.split("Stage 0: the vision tower alone:\n")[1].split("\n\n")[0].splitlines()
    assert [line.split(":")[0].strip() for line in stage_0] == [f"--vision.{f.name}"
                                                                for f in dataclasses.fields(VisionStageConfig)]
    assert "(default: 5000)" in stage_0[0]
    # trackers get scalars only: the nested settings under dotted names
    hparams = scalar_fields(config)
    assert hparams["vision.steps"] == 7 and hparams["vision.shared"] is False and hparams["steps"] == 3
    assert "vision" not in hparams and "models" not in hparams
    # a model's own `vision_steps` wins over `vision.steps`
    models = {"student": dict(TINY_MODELS["student"], vision_steps=2), "teacher": TINY_MODELS["teacher"]}
    assert [model_overrides(name, models[name], config)[1] for name in models] == [2, 7]


def test_shipped_tiny_config_is_the_embedded_default():
    config = load_config(PretrainBaseConfig, Path(__file__).parents[1] / "training/configs/pretrain_base_tiny.yaml")
    assert config == PretrainBaseConfig()


def test_vision_stage_targets_are_the_true_scene():
    scenes = [item.scene for item in SyntheticWorld(0).generate(64)]
    targets = scene_targets(scenes)
    names = list(TARGETS)
    assert targets.shape == (64, len(TARGETS))
    for scene, row in zip(scenes, targets.tolist(), strict=True):
        assert SHAPES[row[names.index("shape")]] == scene.shape
        assert OBJECT_COLOURS[row[names.index("colour")]] == scene.colour
        assert row[names.index("count")] == scene.count
        assert row[names.index("blur")] == (scene.blur > 0) and row[names.index("crop")] == (scene.crop > 0)
    for i, (classes, _) in enumerate(TARGETS.values()):
        assert 0 <= targets[:, i].min() and targets[:, i].max() < classes


def test_vision_classifier_pools_each_image_on_its_own(run):
    config, _ = run
    processor = AutoProcessor.from_pretrained(f"{config.output_dir}/student")
    model = build_model(processor.tokenizer, config.models["student"], seed=0)
    classifier = VisionClassifier(model.model.visual, model.config.text_config.hidden_size).eval()
    transform = QwenVLImageTransform.from_image_processor(processor.image_processor)
    images = torch.from_numpy(np.stack([item.image for item in SyntheticWorld(0).generate(3)]))
    pixels = lambda x: transform(x.permute(0, 3, 1, 2).float() / 255.0)  # noqa: E731
    together = classifier(**pixels(images))
    for i in range(3):
        alone = classifier(**pixels(images[i : i + 1]))
        for name in TARGETS:
            torch.testing.assert_close(together[name][i], alone[name][0], rtol=1e-4, atol=1e-5)
    assert set(dict(classifier.named_parameters())) >= {f"tower.{n}" for n, _ in model.model.visual.named_parameters()}


def test_cell_targets_follow_the_objects_and_the_crop():
    scene = perfect_scene(PromptSpec(3, "red", "star", "blue"), np.random.default_rng(0))
    scene.objects = [SceneObject(0.1, 0.1, 0.05, False), SceneObject(0.9, 0.6, 0.05, True),
                     SceneObject(0.95, 0.7, 0.05, True)]
    targets = cell_targets([scene], (4, 4))[0]  # (16, 2): row-major cells
    none = len(SHAPES)
    expected_counts = {0: 1, 2 * 4 + 3: 2}  # (0.1, 0.1) -> cell (0, 0); both right-hand objects -> cell (2, 3)
    for cell in range(16):
        assert targets[cell, 1] == expected_counts.get(cell, 0)
        assert targets[cell, 0] == (SHAPES.index("star") if cell in expected_counts else none)
    # a zoom-in crop to the window x 0.5..1, y 0.5..1 (as `synthetic.scene` draws it: (0.1, 0.1) leaves the view)
    scene.crop, scene.extra["crop_window"] = 0.5, [0.5, 0.5, 1.0, 1.0]
    cropped = cell_targets([scene], (2, 2))[0]
    # (0.9, 0.6) -> (0.8, 0.2): cell (0, 1); (0.95, 0.7) -> (0.9, 0.4): cell (0, 1)
    assert cropped[:, 1].tolist() == [0, 2, 0, 0]
    assert cropped[:, 0].tolist() == [none, SHAPES.index("star"), none, none]
    scene.objects = [SceneObject(0.6, 0.6, 0.05, True)] * 5
    assert cell_targets([scene], (2, 2))[0, 0, 1] == MAX_CELL_COUNT  # five in one cell, capped


def test_cells_are_in_the_merged_token_order():
    """`cell_targets` numbers cells row by row; the processor must hand the merger each cell's patches together."""
    transform = QwenVLImageTransform(patch_size=7, merge_size=2, temporal_patch_size=2, min_pixels=56 * 56,
                                     max_pixels=56 * 56, image_mean=[0.0] * 3, image_std=[1.0] * 3)
    for row, column in ((0, 0), (1, 3), (3, 2)):
        image = torch.zeros(1, 3, 56, 56)
        image[:, :, 14 * row : 14 * row + 14, 14 * column : 14 * column + 14] = 1.0  # one 14-pixel cell lit
        pixels = transform(image)
        assert pixels["image_grid_thw"].tolist() == [[1, 8, 8]]
        lit = pixels["pixel_values"].reshape(16, 4, -1).amax(dim=(1, 2))  # 16 merged tokens of 4 patches each
        assert lit.nonzero().flatten().tolist() == [row * 4 + column]


def mean_cross_entropy_by_hand(rows: list[list[float]], labels: list[int]) -> float:
    """Mean over rows of −log softmax(row)[label] = log Σ_k e^(z_k − max z) + max z − z_label, in plain Python."""
    total = 0.0
    for row, label in zip(rows, labels, strict=True):
        top = max(row)
        total += math.log(sum(math.exp(z - top) for z in row)) + top - row[label]
    return total / len(rows)


def test_token_head_and_cell_heads_keep_images_apart(run):
    config, _ = run
    processor = AutoProcessor.from_pretrained(f"{config.output_dir}/student")
    model = build_model(processor.tokenizer, config.models["student"], seed=0)
    width = model.config.text_config.hidden_size
    classifier = VisionClassifier(model.model.visual, width, head="tokens", num_tokens=4, cells=True).eval()
    transform = QwenVLImageTransform.from_image_processor(processor.image_processor)  # 56 px -> 4 tokens
    items = SyntheticWorld(0).generate(3)
    images = torch.from_numpy(np.stack([item.image for item in items]))
    pixels = lambda x: transform(x.permute(0, 3, 1, 2).float() / 255.0)  # noqa: E731
    together = classifier(**pixels(images))
    assert together["shape"].shape == (3, len(SHAPES)) and classifier.heads["shape"].in_features == 4 * width
    assert together["cell_shape"].shape == (3, 4, len(SHAPES) + 1)
    assert together["cell_count"].shape == (3, 4, MAX_CELL_COUNT + 1)
    for i in range(3):
        alone = classifier(**pixels(images[i : i + 1]))
        for name, logits in together.items():
            torch.testing.assert_close(logits[i], alone[name][0], rtol=1e-4, atol=1e-5)
    # the loss: the attributes' cross-entropies plus the weighted cells' ones, −log softmax[target] in plain Python
    scenes = [item.scene for item in items]
    targets, cells = scene_targets(scenes), cell_targets(scenes, (2, 2))
    expected = sum(mean_cross_entropy_by_hand(together[name].tolist(), targets[:, i].tolist())
                   for i, name in enumerate(TARGETS))
    cell_loss = sum(mean_cross_entropy_by_hand(together[name].flatten(0, 1).tolist(), cells[..., j].flatten().tolist())
                    for j, name in enumerate(("cell_shape", "cell_count")))  # 3 images x 4 cells = 12 rows
    assert classification_loss(together, targets).item() == pytest.approx(expected, rel=1e-5)
    assert classification_loss(together, targets, cells, 2.5).item() == pytest.approx(expected + 2.5 * cell_loss,
                                                                                       rel=1e-5)
    # all-zero logits: each cross-entropy is log(number of classes), whatever the targets
    classes = {"colour": 10, "shape": 4, "count": 7, "background": 8, "sun": 2, "shadows": 3, "floating": 7, "blur": 2,
               "noise": 2, "compression": 2, "cast": 2, "crop": 2, "overlap": 2}
    assert {name: together[name].shape[-1] for name in TARGETS} == classes
    zeros = {name: torch.zeros(3, size) for name, size in classes.items()}
    zeros |= {"cell_shape": torch.zeros(3, 4, 5), "cell_count": torch.zeros(3, 4, 4)}  # 4 shapes + none; counts 0..3
    uniform = sum(math.log(size) for size in classes.values())
    assert classification_loss(zeros, targets).item() == pytest.approx(uniform, rel=1e-6)
    assert classification_loss(zeros, targets, cells, 2.5).item() == pytest.approx(
        uniform + 2.5 * (math.log(5) + math.log(4)), rel=1e-6)
    # bad input
    larger = QwenVLImageTransform.from_image_processor(processor.image_processor)
    larger.min_pixels = larger.max_pixels = 112 * 112
    with pytest.raises(ValueError, match="`num_tokens` = 4"):
        classifier(**larger(images.permute(0, 3, 1, 2).float() / 255.0))
    with pytest.raises(ValueError, match="`head` must be one of"):
        VisionClassifier(model.model.visual, width, head="max")
    with pytest.raises(ValueError, match="`num_tokens` must be a positive integer"):
        VisionClassifier(model.model.visual, width, head="tokens")
    with pytest.raises(ValueError, match="`num_tokens` must be a positive integer"):
        VisionClassifier(model.model.visual, width, cells=True, num_tokens=0)


@pytest.mark.parametrize(("field", "value", "message"), [
    ("vision.head", "max", "`vision.head` must be one of"),
    ("vision.cell_weight", -1.0, "`vision.cell_weight` must be a finite number >= 0"),
    ("vision.cell_weight", float("nan"), "`vision.cell_weight` must be a finite number >= 0"),
    ("vision.cell_weight", True, "`vision.cell_weight` must be a finite number >= 0"),
    ("vision.optimizer", "sgd", "`vision.optimizer` must be one of"),
    ("vision.steps", -1, "`vision.steps` must be an integer >= 0"),
    ("vision.batch_size", 0, "`vision.batch_size` must be an integer >= 1"),
    ("vision.num_images", 0, "`vision.num_images` must be an integer >= 1"),
    ("optimizer", "lion", "`optimizer` must be one of"),
    ("muon_lr", float("inf"), "`muon_lr` must be a finite number >= 0"),
    ("vision.muon_lr", -0.02, "`vision.muon_lr` must be a finite number >= 0"),
    ("render_workers", 0, "`render_workers` must be a positive integer"),
    ("render_workers", 1.5, "`render_workers` must be a positive integer"),
])
def test_bad_vision_stage_settings_are_refused_before_any_work(tmp_path, field, value, message):
    parent, _, name = field.rpartition(".")
    with pytest.raises(ValueError, match=message):
        pretrain(few_step_config(tmp_path, **({parent: {name: value}} if parent else {name: value})))
    with pytest.raises(ValueError, match=message):  # from the command line, by the same name
        parse_args(PretrainBaseConfig, [f"--{field}", str(value)])
    assert not (tmp_path / "student").exists()


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_vision_stage_trains_the_tower_only_and_resumes_exactly(tmp_path, optimizer):
    student = {"student": TINY_MODELS["student"]}
    changes = dict(models=student, vision=dict(steps=4, num_images=16, batch_size=8, optimizer=optimizer), steps=2,
                   save_every=2)
    full = pretrain(few_step_config(tmp_path / "full", **changes))["student"]
    vision = full["vision_stage"]
    vision_losses = lambda result: [loss for _, loss in result["vision_stage"]["loss_curve"]]  # noqa: E731
    assert len(vision_losses(full)) == 4 and set(vision["probe_accuracy"]) == {"colour", "shape", "count"}
    assert json.loads((tmp_path / "full" / "metrics.json").read_text())["student"]["vision_stage"]["steps"] == 4
    # The checkpoint is an ordinary Qwen2-VL: the heads are dropped.
    processor = AutoProcessor.from_pretrained(tmp_path / "full" / "student")
    saved = AutoModelForImageTextToText.from_pretrained(tmp_path / "full" / "student")
    initial = build_model(processor.tokenizer, student["student"], seed=0)
    assert dict(saved.named_parameters()).keys() == dict(initial.named_parameters()).keys()
    # Muon's momentum on every weight matrix of the tower (blocks and merger), none on the heads
    state = optimizer_state(tmp_path / "full" / "checkpoints" / "student-vision")
    matrices = sum(parameter.ndim == 2 for parameter in initial.model.visual.parameters())
    assert sum("momentum_buffer" in moments for moments in state.values()) == (matrices if optimizer == "muon" else 0)
    without = pretrain(few_step_config(tmp_path / "without", models=student, steps=2, save_every=2))["student"]
    assert "vision_stage" not in without and without["losses"] != full["losses"]  # the tower differs at stage 1
    # Interrupted after stage-0 step 2 (its state saved, no conversation state yet), then resumed.
    half = dict(changes, vision=stage_0(changes, steps=2), steps=1)
    first = pretrain(few_step_config(tmp_path / "resumed", **half))["student"]
    shutil.rmtree(tmp_path / "resumed" / "checkpoints" / "student")
    resumed = pretrain(few_step_config(tmp_path / "resumed", **changes, resume=True))["student"]
    assert vision_losses(resumed)[:2] == vision_losses(first)
    torch.testing.assert_close(vision_losses(resumed), vision_losses(full), rtol=0, atol=1e-5)
    torch.testing.assert_close(resumed["losses"], full["losses"], rtol=0, atol=1e-5)
    # Resumed once more after the end: neither stage runs again, the stage-0 summary is kept.
    again = pretrain(few_step_config(tmp_path / "resumed", **changes, resume=True))["student"]
    assert again["vision_stage"]["probe_accuracy"] == resumed["vision_stage"]["probe_accuracy"]
    assert again["losses"] == resumed["losses"]


SAME_TOWER = {"student": TINY_MODELS["student"], "teacher": dict(TINY_MODELS["teacher"], vision_config={"depth": 1})}


def test_shared_classifier_runs_the_trunk_once_and_feeds_every_merger(run):
    config, _ = run
    processor = AutoProcessor.from_pretrained(f"{config.output_dir}/student")
    models = {name: build_model(processor.tokenizer, SAME_TOWER[name], seed=i) for i, name in enumerate(SAME_TOWER)}
    towers = {name: model.model.visual for name, model in models.items()}
    widths = {name: model.config.text_config.hidden_size for name, model in models.items()}
    assert widths["student"] != widths["teacher"]
    shared = SharedVisionClassifier(towers, widths, head="tokens", num_tokens=4, cells=True).eval()
    calls = []
    towers["student"].blocks[0].register_forward_hook(lambda *_: calls.append("student"))
    towers["teacher"].blocks[0].register_forward_hook(lambda *_: calls.append("teacher"))
    transform = QwenVLImageTransform.from_image_processor(processor.image_processor)
    images = torch.from_numpy(np.stack([item.image for item in SyntheticWorld(0).generate(3)]))
    pixels = transform(images.permute(0, 3, 1, 2).float() / 255.0)
    logits = shared(**pixels)
    assert calls == ["student"]  # one trunk pass for both models
    # the first model: its own tower, read by its heads, as a one-model classifier
    alone = VisionClassifier(towers["student"], widths["student"], head="tokens", num_tokens=4, cells=True).eval()
    alone.load_state_dict({**{f"tower.{k}": v for k, v in towers["student"].state_dict().items()},
                           **shared.classifiers["student"].state_dict()})
    for name, value in alone(**pixels).items():
        torch.testing.assert_close(logits["student"][name], value)
    # the second: its merger on the first tower's trunk output, read by its own heads
    trunk = towers["student"](pixels["pixel_values"], grid_thw=pixels["image_grid_thw"]).last_hidden_state
    teacher = shared.classifiers["teacher"].read(towers["teacher"].merger(trunk), [4, 4, 4])
    assert logits["teacher"]["shape"].shape == (3, len(SHAPES))
    for name, value in teacher.items():
        torch.testing.assert_close(logits["teacher"][name], value)
    # the teacher's loss trains the shared trunk; the teacher's own trunk is not in the module
    shared.train()
    classification_loss(shared(**pixels)["teacher"], torch.zeros(3, len(TARGETS), dtype=torch.long)).backward()
    assert towers["student"].blocks[0].attn.qkv.weight.grad.abs().sum() > 0
    assert towers["teacher"].blocks[0].attn.qkv.weight.grad is None
    parameters = {id(p) for p in shared.parameters()}
    assert not parameters & {id(p) for part in TRUNK for p in getattr(towers["teacher"], part).parameters()}
    # afterwards every tower gets the trunk, and keeps its merger
    merger = {k: v.clone() for k, v in towers["teacher"].merger.state_dict().items()}
    shared.copy_trunk(towers)
    for part in TRUNK:
        for key, value in getattr(towers["student"], part).state_dict().items():
            torch.testing.assert_close(getattr(towers["teacher"], part).state_dict()[key], value, rtol=0, atol=0)
    for key, value in towers["teacher"].merger.state_dict().items():
        torch.testing.assert_close(value, merger[key], rtol=0, atol=0)
    with pytest.raises(ValueError, match="`widths` must name the same models"):
        SharedVisionClassifier(towers, {"student": 32})
    with pytest.raises(ValueError, match="has no tower"):
        shared.classifiers["teacher"](**pixels)


def test_models_with_the_same_tower_share_stage_0(tmp_path):
    # stage 1 at lr 0 leaves the towers as stage 0 made them
    changes = dict(models=SAME_TOWER, vision=dict(steps=4, num_images=48, batch_size=8), steps=1, save_every=2, lr=0.0,
                   weight_decay=0.0)
    results = pretrain(few_step_config(tmp_path / "shared", **changes))
    assert results["student"]["vision_stage"]["shared_with"] == ["teacher"]
    assert results["teacher"]["vision_stage"]["shared_with"] == ["student"]
    assert results["teacher"]["vision_stage"]["loss_curve"] == results["student"]["vision_stage"]["loss_curve"]
    checkpoints = tmp_path / "shared" / "checkpoints"
    assert (checkpoints / "student+teacher-vision").is_dir() and not (checkpoints / "teacher-vision").exists()
    saved = {name: AutoModelForImageTextToText.from_pretrained(tmp_path / "shared" / name).model.visual
             for name in SAME_TOWER}
    processor = AutoProcessor.from_pretrained(tmp_path / "shared" / "teacher")
    initial = build_model(processor.tokenizer, SAME_TOWER["teacher"], seed=0).model.visual
    for part in TRUNK:
        for key, value in getattr(saved["student"], part).state_dict().items():
            torch.testing.assert_close(getattr(saved["teacher"], part).state_dict()[key], value, rtol=0, atol=0)
    assert not torch.equal(saved["teacher"].blocks[0].attn.qkv.weight, initial.blocks[0].attn.qkv.weight)
    assert not torch.equal(saved["teacher"].merger.mlp[0].weight, initial.merger.mlp[0].weight)  # trained too
    # The world groups each part used are recorded, and the base-model benchmark refuses them as held-out images.
    from benchmarks.base_models import check_unseen

    metrics = json.loads((tmp_path / "shared" / "metrics.json").read_text())
    # 32 training, 8 held-out images; stage 0's pool: the 32 training images and 16 of its own
    used = {"world_seed": 0, "train": [0, 8], "held_out": [8, 10], "stage_0": [10, 14]}
    assert metrics["student"]["world_groups"] == metrics["teacher"]["world_groups"] == used
    with pytest.raises(ValueError, match="overlap the stage_0 groups 10-13"):
        check_unseen(str(tmp_path / "shared" / "teacher"), 0, 12, 20)
    with pytest.raises(ValueError, match="overlap the train groups 0-7"):
        check_unseen(str(tmp_path / "shared" / "student"), 0, 7, 9)
    check_unseen(str(tmp_path / "shared" / "teacher"), 0, 14, 20)  # unseen
    check_unseen(str(tmp_path / "shared" / "teacher"), 1, 0, 20)  # another world
    # Not shared: each model trains its own tower, from its own heads only.
    alone = pretrain(few_step_config(tmp_path / "alone", **dict(changes, vision=stage_0(changes, shared=False))))
    assert alone["teacher"]["vision_stage"]["shared_with"] == []
    assert (tmp_path / "alone" / "checkpoints" / "teacher-vision").is_dir()
    assert alone["teacher"]["vision_stage"]["loss_curve"] != alone["student"]["vision_stage"]["loss_curve"]
    # Towers that differ are never shared (TINY_MODELS: the teacher's has two blocks, the student's one).
    different = pretrain(few_step_config(tmp_path / "different", **dict(changes, models=TINY_MODELS)))
    assert different["teacher"]["vision_stage"]["shared_with"] == []
    # Interrupted after shared step 2 (its state saved, no conversation state yet), then resumed.
    pretrain(few_step_config(tmp_path / "resumed", **dict(changes, vision=stage_0(changes, steps=2))))
    for name in SAME_TOWER:
        shutil.rmtree(tmp_path / "resumed" / "checkpoints" / name)
    resumed = pretrain(few_step_config(tmp_path / "resumed", **changes, resume=True))
    # Interrupted with the student's conversation done and the teacher's not begun: the finished stage 0 is read back.
    shutil.rmtree(checkpoints / "teacher")
    again = pretrain(few_step_config(tmp_path / "shared", **changes, resume=True))
    for run in (resumed, again):
        for name in SAME_TOWER:
            vision_curve = [v for _, v in run[name]["vision_stage"]["loss_curve"]]
            torch.testing.assert_close(vision_curve, [v for _, v in results[name]["vision_stage"]["loss_curve"]],
                                       rtol=0, atol=1e-5)
            torch.testing.assert_close(run[name]["losses"], results[name]["losses"], rtol=0, atol=1e-5)


def test_stage_0_pool_does_not_depend_on_the_workers():
    one_images, one_scenes = render_pool(0, 56, 3, 37, workers=1)
    two_images, two_scenes = render_pool(0, 56, 3, 37, workers=2)
    assert one_images.shape == (37, 56, 56, 3) and one_images.dtype == torch.uint8
    assert torch.equal(one_images, two_images) and one_scenes == two_scenes
    world = SyntheticWorld(0)  # the world's own groups 3, 4, ...
    items = [item for group in world.groups(10, start=3) for item in group.items][:37]
    assert torch.equal(one_images, torch.from_numpy(np.stack([item.image for item in items])))
    with pytest.raises(ValueError, match="`render_workers` must be a positive integer"):
        render_pool(0, 56, 3, 37, workers=0)


@pytest.mark.parametrize("from_train", [True, False])
def test_stage_0_pool_starts_with_the_training_images(tmp_path, monkeypatch, from_train):
    import training.pretrain_base as pretrain_base

    seen = {}

    def spy(models, config, accelerator, transform, images, scenes, *rest):
        seen.update(images=images.clone(), scenes=list(scenes))
        return train_vision(models, config, accelerator, transform, images, scenes, *rest)

    train_vision = pretrain_base.train_vision
    monkeypatch.setattr(pretrain_base, "train_vision", spy)
    config = few_step_config(tmp_path / "pool", models={"student": TINY_MODELS["student"]}, steps=1, save_every=1,
                             vision=dict(steps=1, num_images=40, batch_size=8, pool_from_train=from_train))
    pretrain(config)
    world = SyntheticWorld(0)  # 32 training images in groups 0-7, 8 held-out ones in groups 8-9
    training = [item for group in world.groups(8) for item in group.items]
    own = [item for group in world.groups(10, start=10) for item in group.items]
    expected = (training + own[:8]) if from_train else own[:40]
    assert torch.equal(seen["images"], torch.from_numpy(np.stack([item.image for item in expected])))
    assert seen["scenes"] == [item.scene for item in expected]
    used = json.loads((tmp_path / "pool" / "metrics.json").read_text())["student"]["world_groups"]
    assert used["stage_0"] == ([10, 12] if from_train else [10, 20])


def test_render_pool_of_no_images():
    images, scenes = render_pool(0, 56, 3, 0, workers=2)
    assert images.shape == (0, 56, 56, 3) and images.dtype == torch.uint8 and scenes == []


def test_a_model_can_have_its_own_vision_steps(tmp_path):
    models = {"student": dict(TINY_MODELS["student"], vision_steps=3), "teacher": TINY_MODELS["teacher"]}
    changes = dict(models=models, vision=dict(num_images=16, batch_size=8), steps=1, save_every=1)
    results = pretrain(few_step_config(tmp_path / "own", **changes))  # the config's vision.steps: 0
    vision = results["student"]["vision_stage"]
    assert vision["steps"] == 3 and len(vision["loss_curve"]) == 3
    assert "vision_stage" not in results["teacher"]
    bad = dict(models, student=dict(TINY_MODELS["student"], vision_steps=-1))
    with pytest.raises(ValueError, match="`vision_steps` of model 'student'"):
        pretrain(few_step_config(tmp_path / "bad", **dict(changes, models=bad)))


def test_a_model_can_have_its_own_steps(tmp_path):
    # stage 1: the teacher's own 3 steps against the config's 1; the student's curve equals a 1-step run's
    models = {"student": TINY_MODELS["student"], "teacher": dict(TINY_MODELS["teacher"], steps=3)}
    changes = dict(models=models, steps=1, save_every=1)
    results = pretrain(few_step_config(tmp_path / "own", **changes))
    assert results["teacher"]["steps"] == 3 and len(results["teacher"]["losses"]) == 3
    assert results["student"]["steps"] == 1 and len(results["student"]["losses"]) == 1
    metrics = json.loads((tmp_path / "own" / "metrics.json").read_text())
    assert metrics["teacher"]["steps"] == 3 and metrics["student"]["steps"] == 1
    alone = pretrain(few_step_config(tmp_path / "alone", **dict(changes, models={"student": TINY_MODELS["student"]})))
    assert alone["student"]["losses"] == results["student"]["losses"]
    for bad in (-1, 2.5, True):
        models_bad = dict(models, teacher=dict(TINY_MODELS["teacher"], steps=bad))
        with pytest.raises(ValueError, match="`steps` of model 'teacher' must be a non-negative integer"):
            pretrain(few_step_config(tmp_path / "bad", **dict(changes, models=models_bad)))


def test_patch_size_reaches_the_processor_and_every_model(tmp_path):
    # 7-pixel patches read a 56 px image unresized: 8 x 8 patches, 16 image tokens after the 2 x 2 merge
    config = few_step_config(tmp_path / "p7", models={"student": TINY_MODELS["student"]}, patch_size=7,
                             max_pixels=56 * 56, steps=1, save_every=1)
    pretrain(config)
    processor = AutoProcessor.from_pretrained(tmp_path / "p7" / "student")
    model = AutoModelForImageTextToText.from_pretrained(tmp_path / "p7" / "student")
    assert processor.image_processor.patch_size == 7 and model.config.vision_config.patch_size == 7
    items = SyntheticWorld(0).generate(2)
    official = processor.image_processor(images=[Image.fromarray(item.image) for item in items], return_tensors="pt")
    assert official["image_grid_thw"].tolist() == [[1, 8, 8]] * 2
    ours = QwenVLImageTransform.from_image_processor(processor.image_processor)(
        torch.from_numpy(np.stack([item.image for item in items])).permute(0, 3, 1, 2).float() / 255.0)
    torch.testing.assert_close(ours["pixel_values"], official["pixel_values"], rtol=0, atol=1e-5)
    out = ZRewardScorer(model, processor)(torch.rand(2, 3, 56, 56), ["a red circle", "two blue squares"])
    torch.testing.assert_close(out.probs.sum(-1), torch.ones(2, 4))
    mismatch = {"student": dict(TINY_MODELS["student"], vision_config={"depth": 1, "patch_size": 14})}
    with pytest.raises(ValueError, match="`vision_config.patch_size` 14 differs from the processor's `patch_size` 7"):
        pretrain(dataclasses.replace(config, output_dir=str(tmp_path / "mismatch"), models=mismatch))
    with pytest.raises(ValueError, match="`patch_size` must be a positive integer"):
        pretrain(dataclasses.replace(config, output_dir=str(tmp_path / "zero"), patch_size=0))


def _launch(config: PretrainBaseConfig, processes: int) -> dict:
    path = Path(config.output_dir).with_suffix(".yaml")
    path.write_text(yaml.safe_dump(dataclasses.asdict(config)))
    launch_cpu(["-m", "training.pretrain_base", "--config", str(path)], processes)
    return json.loads((Path(config.output_dir) / "metrics.json").read_text())


def test_vision_stage_two_processes_match_one(tmp_path):
    changes = dict(models={"student": TINY_MODELS["student"]}, vision=dict(steps=3, num_images=16, batch_size=8),
                   steps=1, save_every=1)
    one = _launch(few_step_config(tmp_path / "one", **changes), 1)["student"]["vision_stage"]
    two = _launch(few_step_config(tmp_path / "two", **changes), 2)["student"]["vision_stage"]
    np.testing.assert_allclose([v for _, v in two["loss_curve"]], [v for _, v in one["loss_curve"]], rtol=1e-4)
    assert two["probe_accuracy"] == pytest.approx(one["probe_accuracy"])


def test_conversation_stage_two_processes_match_one(tmp_path):
    # rows hold 1 (asked alone) or `questions_per_image` answers, so the two processes' shares differ in size: the
    # step's loss and gradient must still be the mean over all its answers
    changes = dict(models={"student": TINY_MODELS["student"]}, steps=3, save_every=3)
    one = _launch(few_step_config(tmp_path / "one", **changes), 1)["student"]
    two = _launch(few_step_config(tmp_path / "two", **changes), 2)["student"]
    np.testing.assert_allclose([v for _, v in two["loss_curve"]], [v for _, v in one["loss_curve"]], rtol=1e-4)
    assert two["held_out_accuracy"] == pytest.approx(one["held_out_accuracy"])
    weights = [AutoModelForImageTextToText.from_pretrained(tmp_path / run / "student").state_dict()
               for run in ("one", "two")]
    for name, value in weights[0].items():
        torch.testing.assert_close(weights[1][name], value, rtol=1e-3, atol=1e-5, msg=name)


def test_two_process_resume_equals_the_uninterrupted_two_process_run(tmp_path):
    """Both stages under 2 processes, stopped after stage-0 step 2 (no conversation state yet) and resumed under 2
    processes: the same stage-0 and conversation losses and weights as one uninterrupted 2-process run."""
    changes = dict(models={"student": TINY_MODELS["student"]}, vision=dict(steps=4, num_images=16, batch_size=8),
                   steps=2, save_every=2)
    full = _launch(few_step_config(tmp_path / "full", **changes), 2)["student"]
    _launch(few_step_config(tmp_path / "half", **dict(changes, vision=stage_0(changes, steps=2), steps=1)), 2)
    shutil.rmtree(tmp_path / "half" / "checkpoints" / "student")  # as if stopped before the conversation stage
    resumed = _launch(few_step_config(tmp_path / "half", **changes, resume=True), 2)["student"]
    assert resumed["resumed_from_step"] == 0 and resumed["vision_stage"]["steps"] == 4
    curve = [loss for _, loss in resumed["vision_stage"]["loss_curve"]]
    np.testing.assert_allclose(curve, [loss for _, loss in full["vision_stage"]["loss_curve"]], rtol=1e-5)
    np.testing.assert_allclose([v for _, v in resumed["loss_curve"]], [v for _, v in full["loss_curve"]], rtol=1e-5)
    weights = [AutoModelForImageTextToText.from_pretrained(tmp_path / run / "student").state_dict()
               for run in ("full", "half")]
    for name, value in weights[0].items():
        torch.testing.assert_close(weights[1][name], value, rtol=1e-5, atol=1e-6, msg=name)


def test_base_frontier_plots_the_recorded_runs_and_names_a_bad_line(tmp_path):
    from benchmarks.base_frontier import TABLE, plot, read_rows

    rows = read_rows(TABLE)
    assert {row["model"] for row in rows} == {"teacher", "student"}
    assert all(0.0 < row[name] <= 1.0 for row in rows for name in ("colour", "shape", "count"))
    plot(rows, tmp_path / "frontier.png")
    assert (tmp_path / "frontier.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    bad = tmp_path / "bad.csv"
    lines = TABLE.read_text().splitlines()
    bad.write_text("\n".join([lines[0], lines[1], lines[2].replace(",0.", ",zero.", 1)]) + "\n")
    with pytest.raises(ValueError, match="bad.csv, line 3"):
        read_rows(bad)
