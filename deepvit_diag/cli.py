"""The ``deepvit-diag`` command line.

Each sub-command is an ``add_<name>(subparsers)`` function that registers its options
and a ``run`` callback; ``main`` turns every failure into a one-line ``error: ...`` and
exit status 1 (2 for usage errors, from argparse) and Ctrl-C into ``interrupted`` and 130.
What a command writes goes through ``deepvit_diag.outputs`` (checked before the work,
written whole or not at all). The console script is ``_deepvit_diag_launcher.main``
(outside the package, so that a Ctrl-C while torch loads ends cleanly too), which calls
``main``; ``python -m deepvit_diag`` calls it through ``deepvit_diag.__main__``. This module
only parses options, calls the library and renders what it returns.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from .errors import DiagError, failure_line, interruption, sigterm_as_interrupt
from .hints import OPTIONS as HINT_OPTIONS
from .hints import GuessWarning, Option, rendered
from .labels import CLASS_MAP_HELP
from .serve import (
    DEFAULT_HOST,
    DEFAULT_MAX_UPLOAD_MB,
    DEFAULT_PORT,
    ServerOptions,
    app_environment,
    app_script,
    streamlit_command,
)
from .settings import Settings

if TYPE_CHECKING:
    from .results import AnalysisResult, ComparisonResult

# ----------------------------------------------------------------------------- option types (usage errors)


def _number_between(low: float, high: float) -> Callable[[str], float]:
    """An argparse type: a number in [low, high] (else a usage error, exit 2)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number between {low:g} and {high:g}, got {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be between {low:g} and {high:g}, got {text}")
        return value

    return parse


def _positive_number(text: str) -> float:
    """An argparse type: a number above 0 (else a usage error, exit 2)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number above 0, got {text}")
    return value


def _int_between(low: int, high: int) -> Callable[[str], int]:
    """An argparse type: a whole number in [low, high] (else a usage error, exit 2)."""

    def parse(text: str) -> int:
        value = _int_at_least(low)(text)
        if value > high:
            raise argparse.ArgumentTypeError(f"must be at most {high}, got {value}")
        return value

    return parse


def _int_at_least(minimum: int) -> Callable[[str], int]:
    """An argparse type: a whole number >= ``minimum`` (else a usage error, exit 2)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    return parse


def add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train a preset on the bundled digits (plain or cluttered) or an ImageFolder",
        description="Train a preset (with optional width/heads/size overrides) from scratch and save it "
        "in deepvit-diag's safetensors format with a model card.",
    )
    p.add_argument("preset", help="preset to train, e.g. vit32 or deepvit32 (see `deepvit-diag models`)")
    p.add_argument(
        "--out",
        required=True,
        type=Path,
        help="where to write the .safetensors file; an existing file is replaced only if deepvit-diag wrote it",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="replace --out even if deepvit-diag did not write it, or if another run's lock is on it",
    )
    p.add_argument(
        "--data",
        default="digits",
        help="'digits' (scikit-learn digits, default), 'digits-clutter' (the same digits small on cluttered canvases, "
        "drawn afresh every epoch; held out: the bundled set digits-clutter-test) or an ImageFolder path",
    )
    p.add_argument("--embed-dim", type=_int_at_least(1), help="token width (the preset's by default)")
    p.add_argument("--num-heads", type=_int_at_least(1), help="attention heads (the preset's by default)")
    p.add_argument("--depth", type=_int_at_least(1), help="number of blocks (the preset's by default)")
    p.add_argument("--img-size", type=_int_at_least(1), help="input resolution in pixels (the preset's by default)")
    p.add_argument("--patch-size", type=_int_at_least(1), help="patch size in pixels (the preset's by default)")
    p.add_argument("--epochs", type=_int_at_least(1), default=100, help="training epochs (default 100)")
    p.add_argument("--batch-size", type=_int_at_least(1), default=64, help="images per optimisation step (default 64)")
    p.add_argument("--lr", type=_positive_number, default=5e-4, help="peak AdamW learning rate (default 5e-4)")
    p.add_argument(
        "--reattention-last",
        type=_int_at_least(0),
        metavar="N",
        help="DeepViT presets: Re-attention in the last N blocks only, plain attention before (the paper's "
        "DeepViT-S and -L use 5 of 16 and 12 of 32; default: the preset's)",
    )
    p.add_argument(
        "--drop-path",
        type=_number_between(0.0, 0.9),
        default=0.0,
        metavar="RATE",
        help="stochastic depth: the last block is skipped with probability RATE during training, earlier blocks "
        "with linearly less (the paper's recipe uses 0.2; default 0)",
    )
    p.add_argument(
        "--warmup-epochs",
        type=_int_at_least(0),
        default=5,
        metavar="N",
        help="epochs of linear learning-rate warm-up before the cosine decay (default 5)",
    )
    p.add_argument(
        "--qk-init-scale",
        type=_positive_number,
        default=1.0,
        metavar="X",
        help="multiply the initial query and key weights by X (logits by X squared; default 1): a DeepViT needs "
        "about 5, else its BatchNorm keeps the softmax maps uniform (see MODEL_CARDS.md)",
    )
    p.add_argument(
        "--images-per-epoch",
        type=_int_at_least(1),
        metavar="N",
        help="digits-clutter only: canvases drawn per epoch (default one per training digit, 1,437)",
    )
    p.add_argument(
        "--seed", type=_int_at_least(0), default=0, help="random seed for init, order and augmentation (default 0)"
    )
    p.add_argument("--device", default="auto", help="'auto' (CUDA if present), 'cpu' or 'cuda[:N]'")
    p.add_argument("--fp16", action="store_true", help="store float16 weights (half the file size)")
    p.add_argument(
        "--save-every",
        type=_int_at_least(1),
        metavar="N",
        help="also save the weights every N epochs next to OUT, as OUT's name plus -epoch and the epoch zero-padded to "
        "the width of --epochs (runs/a.safetensors, --epochs 30: runs/a-epoch05.safetensors, ...), each model card "
        "recording its epoch: a training series for `deepvit-diag sweep`",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=run_train)


def run_train(args: argparse.Namespace) -> None:
    import torch

    from .checkpoints.loader import build_arch
    from .models import PRESETS, with_overrides
    from .train import TrainConfig, train_to_files

    if args.preset not in PRESETS:
        raise DiagError(f"unknown preset {args.preset!r}; choose one of {', '.join(PRESETS)}")
    if args.images_per_epoch is not None and args.data != "digits-clutter":
        raise DiagError("--images-per-epoch applies to --data digits-clutter only (other data sets are fixed)")
    overrides = {
        k: v
        for k, v in dict(
            embed_dim=args.embed_dim,
            num_heads=args.num_heads,
            depth=args.depth,
            img_size=args.img_size,
            patch_size=args.patch_size,
        ).items()
        if v is not None
    }
    arch = with_overrides(PRESETS[args.preset], **overrides)
    if args.reattention_last is not None:
        arch = with_overrides(arch, apply_transform=_reattention_flags(arch, args.reattention_last))
    _check_trainable(arch)
    with torch.device("meta"):  # every other constructor refusal, before the data is read (no memory)
        build_arch(arch)
    config = TrainConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        warmup_epochs=args.warmup_epochs,
        seed=args.seed,
        images_per_epoch=args.images_per_epoch,
        qk_init_scale=args.qk_init_scale,
        drop_path_rate=args.drop_path,
    )
    command = "deepvit-diag " + " ".join(sys.argv[1:]) if sys.argv[0].endswith("deepvit-diag") else None
    run = train_to_files(
        arch,
        args.out,
        data=args.data,
        config=config,
        device=args.device,
        preset=args.preset,
        command=command,
        save_every=args.save_every or 0,
        fp16=args.fp16,
        force=args.force,
        progress=not args.quiet,
    )
    accuracy, seconds = run.card["test_accuracy"], run.card["train_seconds"]
    _say(f"saved {args.out}: test accuracy {accuracy:.1%} after {_count(args.epochs, 'epoch')} ({seconds:.0f} s)")
    if run.snapshots:
        paths = run.snapshots
        _say(
            f"saved {len(paths)} snapshots, one every {_count(args.save_every, 'epoch')}: "
            f"{paths[0]} to {paths[-1].name}"
        )


def _count(number: int, noun: str) -> str:
    """``"1 epoch"``, ``"5 epochs"``."""
    return f"{number} {noun}{'' if number == 1 else 's'}"


def _reattention_flags(arch: dict[str, Any], last: int) -> list[bool]:
    """The per-block Re-attention flags for ``--reattention-last``."""
    if arch["family"] != "deepvit":
        raise DiagError("--reattention-last applies to DeepViT presets only (a ViT has no Re-attention)")
    depth = arch["kwargs"]["depth"]
    if last > depth:
        raise DiagError(f"--reattention-last {last} exceeds the {depth} blocks of the model")
    return [False] * (depth - last) + [True] * last


def _check_trainable(arch: dict[str, Any]) -> None:
    """The option combinations a preset cannot be trained with, named by their options."""
    kwargs = arch["kwargs"]
    if kwargs["embed_dim"] % kwargs["num_heads"]:
        raise DiagError(
            f"--embed-dim {kwargs['embed_dim']} is not divisible by --num-heads {kwargs['num_heads']} "
            f"(each head gets an equal share of the width)"
        )
    if kwargs["img_size"] % kwargs["patch_size"]:
        raise DiagError(f"--img-size {kwargs['img_size']} is not a multiple of --patch-size {kwargs['patch_size']}")


def add_models(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "models",
        help="list presets and the weight store, with where each one's weights come from",
        description="List the paper's presets, the weight store's entries and the bundled demo weights.",
    )
    p.set_defaults(run=run_models)


def run_models(args: argparse.Namespace) -> None:
    from rich.table import Table

    from .checkpoints import list_models, store_dir
    from .escaping import rich_text, terminal_console

    table = Table(title=f"deepvit-diag models (weight store: {rich_text(store_dir())})")
    for column in ("name", "kind", "weights", "description"):
        table.add_column(column, overflow="fold")
    for row in list_models():
        table.add_row(*(rich_text(row[column]) for column in ("name", "kind", "weights", "description")))
    terminal_console().print(table)


def _hint_option(option: Option) -> dict[str, Any]:
    """argparse's arguments for one architecture hint (``checkpoints.hints.OPTIONS``)."""
    spec: dict[str, Any] = {"help": option.help}
    if option.kind == "flag":
        spec["action"] = argparse.BooleanOptionalAction
    elif option.kind == "choice":
        spec["choices"] = list(option.choices)
    else:
        spec["metavar"] = option.metavar
        spec["type"] = {"int": _int_at_least(option.minimum), "size": _image_size}.get(option.kind, _positive_number)
    return spec


def _image_size(text: str) -> int | tuple[int, int]:
    """``N`` or ``HxW`` pixels (a non-square image: height x width)."""
    height, _, width = text.lower().partition("x")
    side = _int_at_least(1)
    return (side(height), side(width)) if width else side(height)


# What load_model takes beyond arch= (checkpoints.hints.OPTIONS): what the loader may guess, and what its
# messages name. Each is an option of import and analyze (--num-heads) and, per model, of compare
# (--num-heads-a, --num-heads-b).
ARCH_HINTS = {option.key: _hint_option(option) for option in HINT_OPTIONS}


def add_arch_options(p: argparse.ArgumentParser, suffix: str = "", model: str = "the model") -> None:
    """--arch, one option per architecture hint and --resample-pos-embed, each ending in ``suffix`` (``-a``)."""
    group = p.add_argument_group(
        f"architecture of {model}",
        "what the weights cannot say; everything they determine (depth, widths, grid, tokens, ...) is read from them",
    )
    group.add_argument(
        f"--arch{suffix}",
        dest=f"arch{suffix.replace('-', '_')}",
        metavar="NAME",
        help="a preset, official DeepViT or timm model name for what the weights cannot say",
    )
    for key, spec in ARCH_HINTS.items():
        options = dict(spec)
        text = options.pop("help").format(suffix=suffix)
        group.add_argument(
            "--" + key.replace("_", "-") + suffix, dest=key + suffix.replace("-", "_"), help=text, **options
        )
    group.add_argument(
        f"--key{suffix}",
        dest=f"key{suffix.replace('-', '_')}",
        metavar="PATH",
        help="the entry of a nested training checkpoint to take (e.g. student, state_dict.model); by default the "
        "teacher of a student/teacher pair, else state_dict_ema, model_ema, state_dict, model",
    )
    group.add_argument(
        f"--resample-pos-embed{suffix}",
        dest=f"resample_pos_embed{suffix.replace('-', '_')}",
        action="store_true",
        help=f"with --img-size{suffix}: resample the position embeddings to that size (timm's bicubic resampling)",
    )


def arch_options_from(args: argparse.Namespace, suffix: str = "") -> dict[str, Any]:
    """``add_arch_options``' values as ``load_model`` keyword arguments (unset ones left out)."""
    end = suffix.replace("-", "_")
    kwargs = {key: getattr(args, key + end) for key in ARCH_HINTS if getattr(args, key + end) is not None}
    kwargs["arch"] = getattr(args, "arch" + end)
    if getattr(args, "key" + end) is not None:
        kwargs["key"] = getattr(args, "key" + end)
    if getattr(args, "resample_pos_embed" + end):
        kwargs["resample_pos_embed"] = True
    return kwargs


def add_import(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "import",
        help="convert a checkpoint (any supported layout) into the weight store",
        description="Convert a .pth/.pth.tar/.pt/.bin/.safetensors checkpoint (official DeepViT, timm, vit-pytorch "
        "ViT/DeepViT or deepvit-diag) or a timm model name into the weight store as NAME.safetensors.",
    )
    p.add_argument("source", metavar="FILE", help="checkpoint file (or a timm model name to download)")
    p.add_argument("--as", dest="name", required=True, help="store name to load it by later, e.g. vit32 or my_vit")
    add_arch_options(p)
    p.add_argument(
        "--force",
        action="store_true",
        help="replace an existing store entry of that name, or give a preset's name to another architecture",
    )
    p.set_defaults(run=run_import)


def run_import(args: argparse.Namespace) -> None:
    import warnings

    from .checkpoints import GuessWarning, import_checkpoint, read_native_metadata
    from .checkpoints.provenance import describe

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        path = import_checkpoint(args.source, args.name, overwrite=args.force, **arch_options_from(args))
    for warning in caught:
        if issubclass(warning.category, GuessWarning):
            _say(f"warning: {warning.message}", sys.stderr)
    _say(f"imported {args.source} as {args.name!r} -> {path}")
    stored = read_native_metadata(path)
    _say(describe(args.name, "store", "native", stored["arch"], stored["card"]))


# ----------------------------------------------------------------------------- compare / analyze


def add_settings_options(p: argparse.ArgumentParser) -> None:
    """One option per ``Settings`` field, with its help text, allowed values and default."""
    for spec in fields(Settings):
        meta = spec.metadata
        default = spec.default
        options: dict[str, Any] = {"dest": spec.name, "default": default, "metavar": meta["metavar"]}
        if meta["choices"] is not None:
            options["choices"] = meta["choices"]
        elif meta["minimum"] is not None:
            options["type"] = _int_at_least(meta["minimum"])
        elif meta["interval"] is not None:
            options["type"] = _number_between(*meta["interval"])
        shown = "" if default is None or "(default" in meta["help"] else f" (default {default})"
        p.add_argument(meta["flag"] or "--" + spec.name.replace("_", "-"), help=meta["help"] + shown, **options)


def settings_from(args: argparse.Namespace) -> Settings:
    return Settings(**{spec.name: getattr(args, spec.name) for spec in fields(Settings)})


def _add_analysis_options(
    p: argparse.ArgumentParser,
    outputs: str = "result.json, arrays.npz and report.html",
    default_out: Path = Path("deepvit-diag-report"),
) -> None:
    """Options shared by ``compare``, ``analyze`` and ``sweep``: the images, the output (the
    folder for ``outputs``) and the settings (metric parameters: docs/metrics.md)."""
    p.add_argument(
        "--images",
        nargs="+",
        metavar="SRC",
        help="images to analyse: a folder (searched recursively, ImageFolder layouts work), image files, "
        "quoted globs, bundled sets ('photos', 'digits-test', 'digits-clutter-test'), or several of these, read "
        "in order; default: the set the model cards name, else 'photos'",
    )
    p.add_argument("--class-map", type=Path, metavar="FILE", help=CLASS_MAP_HELP)
    p.add_argument(
        "--out",
        type=Path,
        default=default_out,
        metavar="DIR",
        help=f"folder for {outputs} (default ./{default_out}); they appear together when all are written, "
        "replacing those of an earlier run; a folder holding other files, or that another run is writing, is "
        "refused before the work starts",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="write into --out even if it holds files deepvit-diag did not write (they are kept) or another run's lock",
    )
    add_settings_options(p)
    chatter = p.add_mutually_exclusive_group()
    chatter.add_argument(
        "--quiet", action="store_true", help="print nothing but errors (the output folder is still written)"
    )
    chatter.add_argument(
        "--json",
        action="store_true",
        help="print the summary as JSON on stdout and nothing else there (block indices 0-based)",
    )


def add_compare(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "compare",
        help="compare attention collapse in two checkpoints on the same images",
        description="Run two checkpoints over the same images, print the attention-collapse numbers of both side "
        "by side with one sentence per finding, and write result.json, arrays.npz and a self-contained report.html.",
    )
    p.add_argument(
        "--ckpt-a",
        required=True,
        metavar="SPEC",
        help="first model: a checkpoint file, a weight-store name, a preset (vit32, deepvit32, ...) "
        "or a timm model name",
    )
    p.add_argument("--ckpt-b", required=True, metavar="SPEC", help="second model, same forms as --ckpt-a")
    _add_analysis_options(p)
    _add_shard_option(p)
    add_arch_options(p, "-a", "--ckpt-a")
    add_arch_options(p, "-b", "--ckpt-b")
    p.set_defaults(run=run_compare)


def add_analyze(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "analyze",
        help="measure attention collapse in one checkpoint",
        description="Run one checkpoint over images, print its attention-collapse numbers and write result.json, "
        "arrays.npz and a self-contained report.html.",
    )
    p.add_argument(
        "--ckpt",
        required=True,
        metavar="SPEC",
        help="the model: a checkpoint file, a weight-store name, a preset (vit32, deepvit32, ...) or a timm model name",
    )
    _add_analysis_options(p)
    _add_shard_option(p)
    add_arch_options(p)
    p.set_defaults(run=run_analyze)


def _add_shard_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--shard",
        metavar="I/N",
        help="analyse only shard I (from 1 to N, e.g. 1/4 for the first of 4) of N contiguous shards of the images "
        "(cut at whole CKA minibatches) "
        "and save its sums with the result; `deepvit-diag merge` adds the N --out folders up into the result of "
        "all images (e.g. one Slurm array task per shard). Under torchrun every process takes its shard itself.",
    )


def _model_label(spec: str, side: str | None = None) -> str:
    """A short name for tables and figures: the file name of a path, else the spec itself."""
    name = Path(spec).name if Path(spec).exists() else spec
    return f"{name} ({side})" if side else name


@contextmanager
def _warnings_as_lines(quiet: bool) -> Iterator[None]:
    """Library warnings (skipped images, guessed architecture, ...) as one ``warning: ...`` line each."""
    with warnings.catch_warnings():
        warnings.showwarning = lambda message, *_, **__: None if quiet else _say(f"warning: {message}", sys.stderr)
        yield


def _command_line() -> str | None:
    """The command as the user typed it, for reports; None when not run as ``deepvit-diag``."""
    return "deepvit-diag " + shlex.join(sys.argv[1:]) if sys.argv[0].endswith("deepvit-diag") else None


def _run_analysis(args: argparse.Namespace, specs: list[tuple[str, str]], labels: list[str]) -> None:
    """``specs``: (checkpoint, option suffix: "" for analyze, "-a" / "-b" for compare) per model."""
    from .analysis import run
    from .checkpoints import load_model
    from .distributed import Shard
    from .images import default_image_set, open_images
    from .report import write_report
    from .results import ComparisonResult
    from .shards import save_shard

    shard = Shard.parse(args.shard) if args.shard else None
    with _reporting_output(args, _written_by_analysis) as write:
        settings = settings_from(args).resolved()  # an unusable --device fails before the models are loaded
        with _warnings_as_lines(args.quiet):
            models = [_load_for(load_model, spec, args, suffix) for spec, suffix in specs]
            sources = args.images or [default_image_set(models)]
            images = open_images(
                sources[0] if len(sources) == 1 else sources, limit=settings.num_images, class_map=args.class_map
            )
            done = run(models, images, settings, progress=not args.quiet, shard=shard)
        result = None  # a shard that holds no images has only its (empty) sums
        if done.results:
            result = ComparisonResult(*done.results, done.cka_ab) if len(models) == 2 else done.results[0]
        command = _command_line()

        def write_files(folder: Path) -> None:
            if result is not None:
                result.write_files(folder)
                write_report(folder / "report.html", result, labels, command)
            if done.shard is not None:
                save_shard(folder, done.tally, done.shard, labels)

        write(write_files)
    if result is None:
        if not args.quiet:
            _say(f"shard {shard} holds no images; its empty sums are in {args.out} for `deepvit-diag merge`")
        return
    _print_analysis(args, result, labels)


def _print_analysis(args: argparse.Namespace, result: AnalysisResult | ComparisonResult, labels: list[str]) -> None:
    """The summary of ``analyze``, ``compare`` and ``merge``: JSON, or the table and findings."""
    from .escaping import terminal_console
    from .results import ComparisonResult
    from .summary import comparison_findings, model_findings, print_summary

    if args.json:
        print(json.dumps(result.summary(), indent=2))
    elif not args.quiet:
        pair = isinstance(result, ComparisonResult)
        findings = comparison_findings(*labels, result) if pair else model_findings(labels[0], result)
        results = {labels[0]: result.a, labels[1]: result.b} if pair else {labels[0]: result}
        print_summary(terminal_console(), results, findings, out=str(args.out / "report.html"))


@contextmanager
def _reporting_output(args: argparse.Namespace, owned: Callable[[Path], bool]) -> Iterator[Callable]:
    """``write(fill)`` for the --out folder (``outputs.OutputTarget``), checked before the work.

    Under a launcher such as ``torchrun`` the process joins its process group first; then
    only rank 0 prints and writes, and the other processes only compute."""
    from .distributed import is_reporting_process, start_from_environment
    from .outputs import OutputTarget

    start_from_environment(args.device)
    if not is_reporting_process():
        args.quiet, args.json = True, False
        yield lambda fill: None
        return
    with OutputTarget(args.out, folder=True, owned=owned, force=args.force) as target:
        yield target.write


def _written_by_analysis(path: Path) -> bool:
    """A file of an earlier ``compare`` / ``analyze`` / ``merge`` output, which ``--out`` may replace."""
    from .report import is_report_file
    from .results import is_result_file
    from .shards import is_shard_file

    return is_result_file(path) or is_report_file(path) or is_shard_file(path)


def _load_for(load_model: Callable, spec: str, args: argparse.Namespace, suffix: str) -> Any:
    """``load_model`` with the options ending in ``suffix``; its messages' hints then name those options
    (``--num-heads-a``)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            model = load_model(spec, **arch_options_from(args, suffix))
        except DiagError as err:
            raise DiagError(rendered(err, suffix)) from None
    for warning in caught:
        message = warning.message
        text = message.render(suffix) if isinstance(message, GuessWarning) else str(message)
        warnings.warn(text, warning.category, stacklevel=2)
    return model


def run_compare(args: argparse.Namespace) -> None:
    _run_analysis(
        args,
        [(args.ckpt_a, "-a"), (args.ckpt_b, "-b")],
        [_model_label(args.ckpt_a, "A"), _model_label(args.ckpt_b, "B")],
    )


def run_analyze(args: argparse.Namespace) -> None:
    _run_analysis(args, [(args.ckpt, "")], [_model_label(args.ckpt)])


# ----------------------------------------------------------------------------- ablate


def add_ablate(sub: argparse._SubParsersAction) -> None:
    from .choices import HEAD_MODES, STUDIES

    p = sub.add_parser(
        "ablate",
        help="measure what removing blocks, attention, heads or Re-attention costs a checkpoint",
        description="Remove blocks, attention branches, single heads and Re-attention, swap in the previous block's "
        "maps, and prune the most redundant blocks (by measured cost, similarity ratio and Block Influence); print "
        "what each costs next to the similarity ratio and write result.json and arrays.npz. With --shard I/N, one "
        "of N separate runs (shards cut at whole --cka-chunk minibatches, as analyze's), added up by "
        "`deepvit-diag merge` in one or two stages (see --shard and --pruning-from).",
    )
    p.add_argument("--ckpt", required=True, metavar="SPEC", help="the model, as for analyze")
    _add_analysis_options(p, "result.json, arrays.npz and report.html", Path("deepvit-diag-ablation"))
    p.add_argument(
        "--studies",
        nargs="+",
        choices=STUDIES,
        default=list(STUDIES),
        metavar="STUDY",
        help=f"which ablations to run: {', '.join(STUDIES)} (default all)",
    )
    p.add_argument(
        "--heads",
        choices=HEAD_MODES,
        default="mean",
        help="replace an ablated head's output by its mean over the images (default) or by zero",
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="print the number of forward passes the ablation will run, and run none",
    )
    p.add_argument(
        "--shard",
        metavar="I/N",
        help="ablate only shard I (from 1 to N) of N contiguous shards of the images and write its sums (shard.json, "
        "tally.npz) to --out; `deepvit-diag merge` adds the N folders up into the numbers of one run over all "
        "images. Every shard first runs the intact model over ALL images (one forward pass each), so that all "
        "shards plan alike (head means, similar blocks, pruning orders by similarity ratio and Block Influence). "
        "The pruning order by measured cost needs every block's removal cost first: when the studies hold block "
        "and pruning, the merged result says so, and a second stage completes it (--pruning-from)",
    )
    p.add_argument(
        "--pruning-from",
        type=Path,
        metavar="DIR",
        help="with --shard I/N: the second stage, the pruning curve in the measured order of the merged first "
        "stage in DIR (the --out of `deepvit-diag merge`), on shard I's images; its studies and head mode are "
        "DIR's, and the images and settings must be DIR's. Merge the N folders again for the complete result",
    )
    add_arch_options(p)
    p.set_defaults(run=run_ablate)


def _written_by_ablation(path: Path) -> bool:
    from .ablation_result import is_ablation_file
    from .ablation_shards import is_ablation_shard_file
    from .report import is_report_file

    return is_ablation_file(path) or is_report_file(path) or is_ablation_shard_file(path)


def run_ablate(args: argparse.Namespace) -> None:
    from .ablation import ablate, planned_cost
    from .ablation_summary import cost_lines
    from .checkpoints import load_model
    from .images import default_image_set, open_images

    label = _model_label(args.ckpt)

    def model_and_images() -> tuple[Any, Any, Settings]:
        settings = settings_from(args).resolved()  # an unusable --device fails before the model is loaded
        with _warnings_as_lines(args.quiet):
            model = _load_for(load_model, args.ckpt, args, "")
            sources = args.images or [default_image_set([model])]
            images = open_images(
                sources[0] if len(sources) == 1 else sources, limit=settings.num_images, class_map=args.class_map
            )
        return model, images, settings

    if args.pruning_from is not None and not args.shard:
        raise DiagError("--pruning-from is the second stage of --shard runs: give --shard I/N (1/1 for one run)")
    if args.dry_run:  # nothing is run and --out is not touched
        model, images, _ = model_and_images()
        for line in cost_lines(label, planned_cost(model, args.studies, args.heads), len(images)):
            print(line)
        return
    if args.shard:
        _run_ablation_shard(args, model_and_images)
        return
    with _reporting_output(args, _written_by_ablation) as write:
        model, images, settings = model_and_images()
        with _warnings_as_lines(args.quiet):
            result = ablate(model, images, settings, studies=args.studies, heads=args.heads, progress=not args.quiet)
        _write_ablation(write, result, label)
    _print_ablation(args, result, label)


def _write_ablation(write: Callable, result: Any, label: str) -> None:
    """An ablation's result.json, arrays.npz and report.html, through ``write`` (``_reporting_output``)."""
    from .report import write_ablation_report

    command = _command_line()

    def write_files(folder: Path) -> None:
        result.save(folder)
        write_ablation_report(folder / "report.html", result, label, command)

    write(write_files)


def _print_ablation(args: argparse.Namespace, result: Any, label: str) -> None:
    """The summary of ``ablate`` and of a merge of ablation shards: JSON, or the table and findings."""
    from .ablation_summary import ablation_findings, ablation_table

    if args.json:
        print(json.dumps(result.summary(), indent=2))
    elif not args.quiet:
        from rich.console import Console

        console = Console()
        console.print(ablation_table(result))
        for finding in ablation_findings(label, result):
            console.print(f"- {finding}", highlight=False)
        console.print(f"Written: {args.out / 'report.html'} (with result.json and arrays.npz)", highlight=False)
        if result.pending:
            console.print(pending_line(args.out), highlight=False)


def _run_ablation_shard(args: argparse.Namespace, model_and_images: Callable[[], tuple]) -> None:
    from .ablation_result import AblationResult
    from .ablation_shards import ablate_shard
    from .distributed import Shard

    shard = Shard.parse(args.shard)
    base = AblationResult.load(args.pruning_from) if args.pruning_from is not None else None
    with _reporting_output(args, _written_by_ablation) as write:
        model, images, settings = model_and_images()
        with _warnings_as_lines(args.quiet):
            done = ablate_shard(
                model,
                images,
                settings,
                shard=shard,
                studies=args.studies,
                heads=args.heads,
                pruning_from=base,
                progress=not args.quiet,
            )
        write(done.save)
    if args.json:
        print(json.dumps({"shard": str(shard), "stage": done.document["stage"], "images": done.count}))
    elif not args.quiet:
        _say(
            f"shard {shard} ({done.document['stage']}: {done.count} images ablated) written to {args.out}; "
            f"`deepvit-diag merge` the --out folders of all {shard.count} shards"
        )


def pending_line(out: Path) -> str:
    """What a merged first stage of ablation shards still needs."""
    return (
        "Still to come: the pruning curve in the measured order needs every block's removal cost over all images. "
        f"Run `deepvit-diag ablate ... --pruning-from {out} --shard I/N` for each shard, then merge those folders."
    )


# ----------------------------------------------------------------------------- sweep


def add_sweep(sub: argparse._SubParsersAction) -> None:
    from .choices import X_AXIS_CHOICES

    p = sub.add_parser(
        "sweep",
        help="attention collapse and accuracy across many checkpoints: depths, or the epochs of one run",
        description="Analyse every checkpoint on the same images, one model at a time, and show similar blocks, "
        "collapse start and accuracy against depth (one line per group: ViT or DeepViT, or --group) or, for the "
        "checkpoints of one training run, against the epoch they record; print a table and write sweep.json, "
        "arrays.npz and a self-contained sweep.html. With --monitor, draw what a CollapseMonitor recorded during "
        "training instead.",
    )
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--ckpt",
        nargs="+",
        metavar="SPEC",
        help="the checkpoints: files, weight-store names, presets or timm model names (a shell glob such as "
        "'runs/tiny-epoch*.safetensors' gives a training series in order)",
    )
    source.add_argument(
        "--monitor",
        type=Path,
        metavar="FILE",
        help="a CollapseMonitor's JSON Lines file, drawn as a training series over its steps (nothing is analysed)",
    )
    p.add_argument(
        "--group",
        nargs="+",
        metavar="NAME",
        help="the figure line of each checkpoint, one name per --ckpt (default: ViT or DeepViT, by Re-attention)",
    )
    p.add_argument(
        "--x",
        dest="x_axis",
        choices=X_AXIS_CHOICES,
        default="auto",
        help="the x axis: depth, the epoch the checkpoints record, or their order; auto (default): a training "
        "series (by epoch when every checkpoint records one, else in order) when they are all of one group and "
        "depth, else depth",
    )
    p.add_argument(
        "--relative-depth",
        action="store_true",
        help="draw the per-block curves over relative depth (block / number of blocks) instead of the block number",
    )
    _add_analysis_options(p, outputs="sweep.json, arrays.npz and sweep.html", default_out=Path("deepvit-diag-sweep"))
    add_arch_options(p, model="every checkpoint")
    p.set_defaults(run=run_sweep)


def run_sweep(args: argparse.Namespace) -> None:
    from .escaping import terminal_console
    from .report import write_sweep_report
    from .summary import print_sweep, sweep_findings
    from .sweep_runner import PartialSweep, sweep
    from .sweeps import SweepResult

    failure: PartialSweep | None = None
    with _reporting_output(args, _written_by_sweep) as write:
        if args.monitor is not None:
            result = SweepResult.from_monitor(args.monitor)
        else:
            settings = settings_from(args).resolved()  # an unusable --device fails before any model is loaded
            load_options = arch_options_from(args)
            try:
                with _warnings_as_lines(args.quiet):
                    result = sweep(
                        args.ckpt,
                        args.images[0] if args.images and len(args.images) == 1 else args.images,
                        settings,
                        groups=args.group,
                        x_axis=args.x_axis,
                        arch=load_options.pop("arch"),
                        load_options=load_options,
                        class_map=args.class_map,
                        progress=not args.quiet,
                        notice=(lambda line: None) if args.quiet else _stderr_line,
                    )
            except PartialSweep as partial:  # the finished checkpoints are written, then the failure is the error
                failure, result = partial, partial.sweep
        command = _command_line()

        def write_files(folder: Path) -> None:
            result.write_files(folder)
            write_sweep_report(folder / "sweep.html", result, command, relative_depth=args.relative_depth)

        write(write_files)
    if failure is not None:
        raise DiagError(f"{failure}; written to {args.out}")
    if args.json:
        print(json.dumps(result.summary(), indent=2))
    elif not args.quiet:
        print_sweep(terminal_console(), result, sweep_findings(result), out=str(args.out / "sweep.html"))


def _stderr_line(line: str) -> None:
    from rich.text import Text

    from .escaping import terminal_console

    terminal_console(stderr=True).print(Text(line))


def _written_by_sweep(path: Path) -> bool:
    """A file of an earlier ``sweep`` output, which ``--out`` may replace."""
    from .report import is_report_file
    from .sweeps import is_sweep_file

    return is_sweep_file(path) or is_report_file(path)


# ----------------------------------------------------------------------------- merge


def add_merge(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "merge",
        help="add up the shards of an analysis or ablation (analyze/compare/ablate --shard I/N) into the result of "
        "all images",
        description="Read the --out folders of the N runs of `analyze --shard I/N` (or `compare`, `ablate`) and "
        "write the result one run over all images gives: result.json, arrays.npz and report.html. Shards of "
        "different models, settings, image lists or stages, and missing or repeated shards, are refused. Ablation "
        "shards come in up to two stages (see `ablate --help`, --shard and --pruning-from): merge each stage's "
        "N folders on their own.",
    )
    p.add_argument("folders", nargs="+", type=Path, metavar="DIR", help="the shards' --out folders, in any order")
    p.add_argument(
        "--out",
        type=Path,
        required=True,
        metavar="DIR",
        help="folder for the merged result.json, arrays.npz and report.html (checked before the shards are read)",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="write into --out even if it holds files deepvit-diag did not write (they are kept) or another run's lock",
    )
    chatter = p.add_mutually_exclusive_group()
    chatter.add_argument("--quiet", action="store_true", help="print nothing but errors")
    chatter.add_argument("--json", action="store_true", help="print the summary as JSON on stdout and nothing else")
    p.set_defaults(run=run_merge, device="cpu")


def run_merge(args: argparse.Namespace) -> None:
    from .ablation_shards import is_ablation_shard
    from .report import write_report
    from .shards import merge_shards

    ablations = [is_ablation_shard(folder) for folder in args.folders]
    if any(ablations):
        if not all(ablations):
            kinds = dict(zip(ablations, args.folders))
            raise DiagError(f"{kinds[True]} is a shard of an ablation and {kinds[False]} is not; merge them apart")
        _merge_ablation(args)
        return
    with _reporting_output(args, _written_by_analysis) as write:
        result, labels = merge_shards(args.folders)
        command = _command_line()

        def write_files(folder: Path) -> None:
            result.write_files(folder)
            write_report(folder / "report.html", result, labels, command)

        write(write_files)
    _print_analysis(args, result, labels)


def _merge_ablation(args: argparse.Namespace) -> None:
    from .ablation_shards import merge_ablation_shards

    with _reporting_output(args, _written_by_ablation) as write:
        result = merge_ablation_shards(args.folders)
        label = str(result.model.get("description") or result.model.get("arch") or "model")
        _write_ablation(write, result, label)
    _print_ablation(args, result, label)


APP_EPILOG = """\
Private by default: the server listens on 127.0.0.1, so only this machine can open it
(from elsewhere, through an SSH tunnel: ssh -L 8501:localhost:8501 HOST).

To serve a group, either bind an address others reach and name what they may read:
  deepvit-diag app --host 0.0.0.0 --port 8501 --root /data/checkpoints --root /data/images
or keep 127.0.0.1 and put a reverse proxy with TLS and a login in front (nginx, Caddy;
add --base-url-path diag to serve it under /diag; the proxy must pass websockets on),
and name the --root folders too: on 127.0.0.1 without them the app reads any path the
server can, as it does for its one local user.

What that exposes: the app has no login, so everyone who reaches the port can
  - read every checkpoint, image folder and saved sweep under the --root folders (by
    default the folder the server starts in; other paths are refused, alike whether they
    exist or not), and see the presets and the weight store;
  - upload checkpoints and images (up to --max-upload-mb each; kept in a temporary folder,
    seen by their own session only, removed when the server stops);
  - run analyses and sweeps on this machine's CPU and GPUs, one at a time per device, the
    others waiting in a queue (up to --max-images images each), and make the server
    download timm weights if it has network access.
Analyses of the presets and bundled images are shared between visitors; those of files a
visitor named or uploaded are seen by that visitor's session only. See docs/serving.md.
"""


def add_app(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "app",
        help="start the app in the browser (Streamlit), private to this machine by default",
        description="Start the deepvit-diag app: a Streamlit server that opens in the browser.",
        epilog=APP_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--host",
        default=DEFAULT_HOST,
        help=f"address to listen on (default {DEFAULT_HOST}: this machine only; 0.0.0.0: every network)",
    )
    p.add_argument("--port", type=_int_between(1, 65535), default=DEFAULT_PORT, help="port (default %(default)s)")
    p.add_argument(
        "--root",
        dest="roots",
        action="append",
        type=Path,
        default=[],
        metavar="DIR",
        help="a folder visitors may read checkpoints, images and saved sweeps from (repeat for several); "
        "default: any path on 127.0.0.1, the current folder on any other address",
    )
    p.add_argument("--max-images", type=_int_at_least(1), metavar="N", help="most images one analysis may read")
    p.add_argument(
        "--max-upload-mb",
        type=_positive_number,
        default=DEFAULT_MAX_UPLOAD_MB,
        metavar="MB",
        help="largest checkpoint upload (default %(default)s)",
    )
    p.add_argument("--max-results", type=_int_at_least(1), metavar="N", help="analyses each session keeps of its own")
    p.add_argument("--base-url-path", metavar="PATH", help="serve under this path (behind a reverse proxy)")
    p.set_defaults(run=run_app)


def run_app(args: argparse.Namespace) -> None:
    """Replace this process with the Streamlit server (its Ctrl-C and exit status are the command's)."""
    options = ServerOptions(
        host=args.host,
        port=args.port,
        roots=tuple(args.roots),
        max_images=args.max_images,
        max_upload_mb=args.max_upload_mb,
        max_results=args.max_results,
        base_url_path=args.base_url_path,
    )
    command = streamlit_command(options, app_script())
    environment = {**os.environ, **app_environment(options)}
    sys.stdout.flush()
    os.execve(command[0], command, environment)


COMMANDS = [add_compare, add_analyze, add_ablate, add_sweep, add_merge, add_train, add_models, add_import, add_app]


def _say(text: str, file: TextIO | None = None) -> None:
    """Print ``text``, each line without control characters (``escaping.terminal_text``): file names,
    labels and model cards cannot steer the terminal."""
    from .escaping import terminal_text

    print("\n".join(terminal_text(line) for line in str(text).split("\n")), file=file or sys.stdout)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="deepvit-diag",
        description="Find attention collapse (Zhou et al. 2021, DeepViT) in ViT and DeepViT checkpoints.",
    )
    parser.add_argument("--debug", action="store_true", help="show the full traceback on errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in COMMANDS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command: exit status 0, 1 with one ``error: ...`` line, 2 for a usage error (argparse),
    130 with ``interrupted`` for Ctrl-C. ``--debug`` shows the traceback of an error instead."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        with sigterm_as_interrupt():
            args.run(args)
    except KeyboardInterrupt as err:
        line, status = interruption(err)
        print(line, file=sys.stderr)
        return status
    except Exception as err:  # every failure ends in one line; --debug shows where it came from
        if args.debug:
            raise
        _say(f"error: {failure_line(err)}", sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
