"""Train a preset (or any arch) on the scikit-learn digits (plain or cluttered) or a small ImageFolder.

Recipe after the paper's official training configuration, scaled down: AdamW, linear
warm-up then cosine decay, label smoothing, light random-affine augmentation. Images are
preprocessed once with the model's own eval transform (``deepvit_diag.preprocessing``,
the pixels every analysis sees), so the test accuracy in the model card is exactly what
``evaluate_accuracy`` and an analysis re-measure later.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from .checkpoints.native import is_native_file, save_native
from .datasets import (
    CLUTTER_DESCRIPTION,
    DIGITS_DESCRIPTION,
    LabelledImages,
    cluttered_digits,
    digits_split,
    held_out_set,
)
from .device import resolve_device
from .formats import package_versions
from .models import build_model
from .outputs import OutputTarget
from .preprocessing import preprocess
from .progress import ProgressOption, reporting


@dataclass
class TrainConfig:
    epochs: int = 100
    batch_size: int = 64
    lr: float = 5e-4
    weight_decay: float = 0.05
    warmup_epochs: int = 5
    label_smoothing: float = 0.1
    augment: bool = True
    seed: int = 0
    test_fraction: float = 0.2  # ImageFolder data only; the digits split is fixed
    images_per_epoch: int | None = None  # digits-clutter only; default: one canvas per training digit
    qk_init_scale: float = 1.0  # see scale_query_key_init
    drop_path_rate: float = 0.0  # stochastic depth of the last block, rising linearly from 0 (timm's rule)


@torch.no_grad()
def evaluate_accuracy(model: nn.Module, images: list[Image.Image], labels: np.ndarray, batch_size: int = 256) -> float:
    """Top-1 accuracy of ``model`` on PIL ``images`` with its own eval preprocessing."""
    device = next(model.parameters()).device
    x = preprocess(model, images)
    was_training = model.training
    model.eval()
    correct = 0
    for start in range(0, len(x), batch_size):
        logits = model(x[start : start + batch_size].to(device))
        correct += (logits.argmax(-1).cpu() == torch.as_tensor(labels[start : start + batch_size])).sum().item()
    model.train(was_training)
    return correct / len(x)


def random_affine(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Per-image rotation (+-10 deg), scale (0.9-1.1) and shift (+-10%), border padding."""
    B = x.shape[0]
    angle = (torch.rand(B, generator=generator) * 2 - 1) * math.radians(10)
    scale = 0.9 + torch.rand(B, generator=generator) * 0.2
    shift = (torch.rand(B, 2, generator=generator) * 2 - 1) * 0.2  # grid units span [-1, 1]
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta.to(x), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, padding_mode="border", align_corners=False)


def load_image_folder(root: str | Path, test_fraction: float, seed: int) -> tuple[LabelledImages, LabelledImages, str]:
    """An ImageFolder (one sub-folder per class) split into train/test, stratified."""
    from sklearn.model_selection import train_test_split
    from torchvision.datasets import ImageFolder

    folder = ImageFolder(str(root))
    if len(folder) == 0:
        raise ValueError(f"no images found under {root}")
    labels = np.array(folder.targets)
    train_idx, test_idx = train_test_split(
        np.arange(len(labels)), test_size=test_fraction, random_state=seed, stratify=labels
    )
    load = lambda idx: LabelledImages([folder.loader(folder.samples[i][0]) for i in idx], labels[idx], folder.classes)  # noqa: E731
    description = (
        f"ImageFolder {root} ({len(labels)} images, {len(folder.classes)} classes); "
        f"stratified split, random_state={seed}"
    )
    return load(train_idx), load(test_idx), description


# Training data name -> the bundled image set of its held-out split.
BUNDLED_DATA = {"digits": "digits-test", "digits-clutter": "digits-clutter-test"}


def load_split(data: str, config: TrainConfig) -> tuple[LabelledImages, LabelledImages, str]:
    """(train, test, description) for ``"digits"``, ``"digits-clutter"`` or an ImageFolder path.

    For ``"digits-clutter"`` the training part is epoch 0's canvases (``clutter_epoch``)."""
    if data == "digits":
        return digits_split("train"), held_out_set(BUNDLED_DATA[data]), DIGITS_DESCRIPTION
    if data == "digits-clutter":
        return clutter_epoch(config, 0), held_out_set(BUNDLED_DATA[data]), CLUTTER_DESCRIPTION
    return load_image_folder(data, config.test_fraction, config.seed)


def clutter_epoch(config: TrainConfig, epoch: int) -> LabelledImages:
    """Fresh training canvases for ``epoch``: new places and clutter every epoch make the
    data effectively unlimited, while the held-out canvases stay fixed."""
    return cluttered_digits(
        "train", config.images_per_epoch or len(digits_split("train").labels), seed=[config.seed, epoch]
    )


def held_out_split(data: str, config: TrainConfig) -> tuple[list[Image.Image], np.ndarray]:
    """The held-out images and labels the model card's test accuracy is measured on."""
    # A bundled set is read directly: building the training part only to drop it would draw a whole epoch of canvases.
    test = held_out_set(BUNDLED_DATA[data]) if data in BUNDLED_DATA else load_split(data, config)[1]
    return test.images, test.labels


def scale_query_key_init(model: nn.Module, factor: float) -> None:
    """Multiply every block's initial query and key weights by ``factor`` (the attention
    logits by ``factor ** 2``).

    Why a DeepViT needs it: Re-attention's BatchNorm divides the mixed maps by
    ``sqrt(var + eps)``. At timm's initialisation the logits are ~0.03, the softmax maps'
    variance is far below ``eps = 1e-5``, and Re-attention acts as linear attention on
    almost uniform softmax maps; training stays in that regime (the model cards measure
    it), so the softmax never selects anything. Logits that start near 1 put the softmax
    in its selective range from the first step.
    """
    with torch.no_grad():
        for block in model.blocks:
            qkv = block.attn.qkv
            width = qkv.out_features // 3  # rows: queries, keys, values
            qkv.weight[: 2 * width] *= factor


def lr_at(step: int, total_steps: int, warmup_steps: int, base_lr: float) -> float:
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    done = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return base_lr * 0.5 * (1 + math.cos(math.pi * done))


def train_model(
    arch: dict[str, Any],
    *,
    data: str = "digits",
    config: TrainConfig | None = None,
    device: str = "auto",
    progress: ProgressOption = False,
    snapshot_every: int = 0,
    on_snapshot: Callable[[nn.Module, dict[str, Any]], None] | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """Train ``arch`` from scratch; returns the eval-mode model and its model card.

    With ``snapshot_every`` = N > 0, ``on_snapshot(model, card)`` is called after every N
    epochs with the model in training and the card of its weights at that point (the
    card's ``epoch`` says which); measuring the card changes nothing in the training.
    """
    config = config or TrainConfig()
    torch.manual_seed(config.seed)
    train, test, data_description = load_split(data, config)
    arch = {**arch, "kwargs": {**arch["kwargs"], "num_classes": len(train.classes)}}
    if config.drop_path_rate:
        arch["kwargs"]["drop_path_rate"] = config.drop_path_rate
    data_cfg = dict(arch.get("pretrained_cfg", {}), num_classes=len(train.classes))
    if data in BUNDLED_DATA:
        # 8x8 sources and canvases: resize smoothly and never crop away the border.
        data_cfg.update(crop_pct=1.0, interpolation="bilinear")
    arch["pretrained_cfg"] = data_cfg
    model = build_model(arch)
    if config.qk_init_scale != 1.0:
        scale_query_key_init(model, config.qk_init_scale)
    dev = resolve_device(device)
    model.to(dev).train()

    x_train = preprocess(model, train.images)
    y_train = torch.as_tensor(train.labels)
    steps_per_epoch = math.ceil(len(x_train) / config.batch_size)
    total_steps = steps_per_epoch * config.epochs
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.ndim <= 1 or name in ("pos_embed", "cls_token") else decay).append(p)
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=config.lr,
    )
    generator = torch.Generator().manual_seed(config.seed)
    start = time.perf_counter()

    def card_at(epoch: int) -> dict[str, Any]:
        """The model card of the weights after ``epoch`` epochs, their test accuracy measured now."""
        return {
            "data": data_description,
            "dataset": data if data in BUNDLED_DATA else str(data),
            "image_set": BUNDLED_DATA.get(data),
            "classes": train.classes,
            "train_images": len(train.images),
            "test_images": len(test.images),
            "recipe": asdict(config) | {"optimizer": "AdamW", "schedule": "linear warm-up then cosine"},
            "seed": config.seed,
            "epochs": config.epochs,
            "epoch": epoch,
            "train_seconds": round(time.perf_counter() - start, 1),
            "test_accuracy": evaluate_accuracy(model, test.images, test.labels),
            "device": str(dev) if dev.type == "cpu" else torch.cuda.get_device_name(dev),
            "versions": package_versions(),
        }

    step = 0
    with reporting(progress, "training", config.epochs) as update:
        for epoch in range(config.epochs):
            if data == "digits-clutter" and epoch > 0:
                train = clutter_epoch(config, epoch)
                x_train, y_train = preprocess(model, train.images), torch.as_tensor(train.labels)
            order = torch.randperm(len(x_train), generator=generator)
            loss_sum, correct = 0.0, 0
            for i in range(steps_per_epoch):
                idx = order[i * config.batch_size : (i + 1) * config.batch_size]
                xb, yb = x_train[idx], y_train[idx]
                if config.augment:
                    xb = random_affine(xb, generator)
                xb, yb = xb.to(dev, non_blocking=True), yb.to(dev, non_blocking=True)
                for group in optimizer.param_groups:
                    group["lr"] = lr_at(step, total_steps, config.warmup_epochs * steps_per_epoch, config.lr)
                logits = model(xb)
                loss = F.cross_entropy(logits, yb, label_smoothing=config.label_smoothing)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                step += 1
                loss_sum += loss.item() * len(idx)
                correct += (logits.argmax(-1) == yb).sum().item()
            update(epoch + 1, note=f"loss {loss_sum / len(x_train):.3f}  train acc {correct / len(x_train):.1%}")
            if on_snapshot is not None and snapshot_every > 0 and (epoch + 1) % snapshot_every == 0:
                on_snapshot(model, card_at(epoch + 1))
    model.eval()
    return model, card_at(config.epochs)


@dataclass
class TrainingRun:
    """What ``train_to_files`` wrote: the final model's card and the snapshot files, by epoch."""

    card: dict[str, Any]
    snapshots: list[Path]


def train_to_files(
    arch: dict[str, Any],
    out: Path,
    *,
    data: str,
    config: TrainConfig,
    device: str = "auto",
    preset: str | None = None,
    command: str | None = None,
    save_every: int = 0,
    fp16: bool = False,
    force: bool = False,
    progress: ProgressOption = False,
) -> TrainingRun:
    """Train ``arch`` and write it to ``out`` in deepvit-diag's format, with a snapshot
    ``<out>-epoch<N>`` every ``save_every`` epochs. Every file is checked and locked before
    training starts (``OutputTarget``; ``force`` replaces files that are not ours) and
    written whole when it is due. With ``fp16`` the weights are stored in half precision and
    the card's accuracy is measured on the rounded weights."""
    every = save_every
    width = len(str(config.epochs))  # zero-padded, so that the snapshot files sort by epoch
    snapshot_paths = (
        {
            epoch: out.with_name(f"{out.stem}-epoch{epoch:0{width}d}{out.suffix}")
            for epoch in range(every, config.epochs + 1, every)
        }
        if every
        else {}
    )

    def ship(model: torch.nn.Module, card: dict[str, Any], target: OutputTarget) -> None:
        """Write ``model`` with its card as the file holds it: with ``fp16`` the card's accuracy is
        measured again on the rounded weights (a copy, so that training goes on unrounded)."""
        if fp16:
            model = copy.deepcopy(model).half().float()
            card["test_accuracy"] = evaluate_accuracy(model, *held_out_split(data, config))
        card.update(preset=preset, command=command)
        target.write(lambda path: save_native(model, path, card=card, dtype=torch.float16 if fp16 else None))

    # Every file is checked and locked before training starts, and each is written whole when it is due.
    with ExitStack() as stack:
        final, *snapshots = (
            stack.enter_context(OutputTarget(path, folder=False, owned=is_native_file, force=force))
            for path in (out, *snapshot_paths.values())
        )
        by_epoch = dict(zip(snapshot_paths, snapshots))
        model, card = train_model(
            arch,
            data=data,
            config=config,
            device=device,
            progress=progress,
            snapshot_every=every,
            on_snapshot=lambda model, card: ship(model, card, by_epoch[card["epoch"]]),
        )
        ship(model, card, final)
    return TrainingRun(card, list(snapshot_paths.values()))
