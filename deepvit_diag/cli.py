"""The ``deepvit-diag`` command line.

Each sub-command is an ``add_<name>(subparsers)`` function that registers its options
and a ``run`` callback; ``main`` turns every expected failure into a one-line
``error: ...`` and exit status 1 (2 for usage errors, from argparse).
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, redirect_stdout
from pathlib import Path

from .errors import DiagError


def add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train a preset on the bundled digits (plain or cluttered) or an ImageFolder",
        description="Train a preset (with optional width/heads/size overrides) from scratch and save it "
        "in deepvit-diag's safetensors format with a model card.",
    )
    p.add_argument("preset", help="preset to train, e.g. vit32 or deepvit32 (see `deepvit-diag models`)")
    p.add_argument("--out", required=True, type=Path, help="where to write the .safetensors file")
    p.add_argument("--data", default="digits",
                   help="'digits' (scikit-learn digits, default), 'digits-clutter' (the same digits small on cluttered "
                   "canvases, drawn afresh every epoch; held out: the bundled set digits-clutter-test) or an ImageFolder path")
    p.add_argument("--embed-dim", type=int, help="token width (the preset's by default)")
    p.add_argument("--num-heads", type=int, help="attention heads (the preset's by default)")
    p.add_argument("--depth", type=int, help="number of blocks (the preset's by default)")
    p.add_argument("--img-size", type=int, help="input resolution in pixels (the preset's by default)")
    p.add_argument("--patch-size", type=int, help="patch size in pixels (the preset's by default)")
    p.add_argument("--epochs", type=int, default=100, help="training epochs (default 100)")
    p.add_argument("--batch-size", type=int, default=64, help="images per optimisation step (default 64)")
    p.add_argument("--lr", type=float, default=5e-4, help="peak AdamW learning rate (default 5e-4)")
    p.add_argument("--warmup-epochs", type=_int_at_least(0), default=5, metavar="N",
                   help="epochs of linear learning-rate warm-up before the cosine decay (default 5)")
    p.add_argument("--qk-init-scale", type=_positive_number, default=1.0, metavar="X",
                   help="multiply the initial query and key weights by X (logits by X squared; default 1): a DeepViT "
                   "needs about 5, else its BatchNorm keeps the softmax maps uniform (see MODEL_CARDS.md)")
    p.add_argument("--images-per-epoch", type=_int_at_least(1), metavar="N",
                   help="digits-clutter only: canvases drawn per epoch (default one per training digit, 1,437)")
    p.add_argument("--seed", type=int, default=0, help="random seed for init, order and augmentation (default 0)")
    p.add_argument("--device", default="auto", help="'auto' (CUDA if present), 'cpu' or 'cuda[:N]'")
    p.add_argument("--fp16", action="store_true", help="store float16 weights (half the file size)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=run_train)


def run_train(args: argparse.Namespace) -> None:
    import torch

    from .checkpoints.native import save_native
    from .models import PRESETS, with_overrides
    from .train import TrainConfig, evaluate_accuracy, held_out_split, train_model

    if args.preset not in PRESETS:
        raise DiagError(f"unknown preset {args.preset!r}; choose one of {', '.join(PRESETS)}")
    if args.images_per_epoch is not None and args.data != "digits-clutter":
        raise DiagError("--images-per-epoch applies to --data digits-clutter only (other data sets are fixed)")
    overrides = {
        k: v
        for k, v in dict(
            embed_dim=args.embed_dim, num_heads=args.num_heads, depth=args.depth, img_size=args.img_size, patch_size=args.patch_size
        ).items()
        if v is not None
    }
    arch = with_overrides(PRESETS[args.preset], **overrides)
    config = TrainConfig(
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, warmup_epochs=args.warmup_epochs, seed=args.seed,
        images_per_epoch=args.images_per_epoch, qk_init_scale=args.qk_init_scale,
    )
    model, card = train_model(arch, data=args.data, config=config, device=args.device, progress=not args.quiet)
    if args.fp16:
        # The card must describe the weights as shipped, so measure again after rounding.
        model.half().float()
        card["test_accuracy"] = evaluate_accuracy(model, *held_out_split(args.data, config))
    card["preset"] = args.preset
    card["command"] = "deepvit-diag " + " ".join(sys.argv[1:]) if sys.argv[0].endswith("deepvit-diag") else None
    save_native(model, args.out, card=card, dtype=torch.float16 if args.fp16 else None)
    print(f"saved {args.out}: test accuracy {card['test_accuracy']:.1%} after {args.epochs} epochs ({card['train_seconds']:.0f} s)")


def add_models(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "models",
        help="list presets and the weight store, with where each one's weights come from",
        description="List the paper's presets, the weight store's entries and the bundled demo weights.",
    )
    p.set_defaults(run=run_models)


def run_models(args: argparse.Namespace) -> None:
    from rich.console import Console
    from rich.table import Table

    from .checkpoints import list_models, store_dir

    table = Table(title=f"deepvit-diag models (weight store: {store_dir()})")
    for column in ("name", "kind", "weights", "description"):
        table.add_column(column, overflow="fold")
    for row in list_models():
        table.add_row(row["name"], row["kind"], row["weights"], row["description"])
    Console().print(table)


# load_model overrides (timm's constructor names) the import command accepts: everything the loader may guess.
IMPORT_OVERRIDES = {
    "num_heads": dict(type=int), "embed_dim": dict(type=int), "depth": dict(type=int), "mlp_ratio": dict(type=float),
    "img_size": dict(type=int), "patch_size": dict(type=int), "num_classes": dict(type=int), "in_chans": dict(type=int),
    "global_pool": dict(choices=["token", "avg"]), "transform_scale": dict(action=argparse.BooleanOptionalAction),
}


def add_import(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "import",
        help="convert a checkpoint (any supported layout) into the weight store",
        description="Convert a .pth/.pth.tar/.pt/.bin/.safetensors checkpoint (official DeepViT, timm, vit-pytorch "
        "ViT/DeepViT or deepvit-diag) or a timm model name into the weight store as NAME.safetensors.",
    )
    p.add_argument("source", metavar="FILE", help="checkpoint file (or a timm model name to download)")
    p.add_argument("--as", dest="name", required=True, help="store name to load it by later, e.g. vit32 or my_vit")
    p.add_argument("--arch", help="what the weights cannot say: a preset, official DeepViT or timm model name")
    for key, options in IMPORT_OVERRIDES.items():
        p.add_argument("--" + key.replace("_", "-"), dest=key, help=f"{key} of the model (timm's argument name)", **options)
    p.add_argument("--force", action="store_true", help="replace an existing store entry of that name")
    p.set_defaults(run=run_import)


def run_import(args: argparse.Namespace) -> None:
    import warnings

    from .checkpoints import GuessWarning, import_checkpoint, read_native_metadata
    from .checkpoints.provenance import describe

    overrides = {key: getattr(args, key) for key in IMPORT_OVERRIDES if getattr(args, key) is not None}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        path = import_checkpoint(args.source, args.name, overwrite=args.force, arch=args.arch, **overrides)
    for warning in caught:
        if issubclass(warning.category, GuessWarning):
            print(f"warning: {warning.message}", file=sys.stderr)
    print(f"imported {args.source} as {args.name!r} -> {path}")
    stored = read_native_metadata(path)
    print(describe(args.name, "store", "native", stored["arch"], stored["card"]))


# ----------------------------------------------------------------------------- compare / analyze


def _unit_interval(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number between 0 and 1, got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {text}")
    return value


def _positive_number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number above 0, got {text}")
    return value


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


def _add_analysis_options(p: argparse.ArgumentParser) -> None:
    """Options shared by ``compare`` and ``analyze`` (metric parameters: REFERENCE.md section 4)."""
    p.add_argument("--images", nargs="+", metavar="SRC",
                   help="images to analyse: a folder (searched recursively, ImageFolder layouts work), image files, "
                   "quoted globs, bundled sets ('photos', 'digits-test', 'digits-clutter-test'), or several of these, read in order; "
                   "default: the set the model cards name, else 'photos'")
    p.add_argument("--num-images", type=_int_at_least(1), metavar="N", help="analyse only the first N usable images (default: all)")
    p.add_argument("--batch-size", type=_int_at_least(1), default=32, metavar="B",
                   help="images per forward pass (default 32; halved automatically on CUDA out-of-memory)")
    p.add_argument("--device", default="auto", help="'auto' (CUDA when present, the default), 'cpu' or 'cuda[:N]'")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32",
                   help="compute dtype of the forward passes (default float32; metrics are always accumulated in float32)")
    p.add_argument("--workers", type=_int_at_least(0), metavar="N",
                   help="processes that decode and resize images while the model runs "
                   "(default: 0 on the CPU, up to 8 on a GPU, one fewer than the cores)")
    p.add_argument("--out", type=Path, default=Path("deepvit-diag-report"), metavar="DIR",
                   help="folder for result.json, arrays.npz and report.html (default ./deepvit-diag-report; files are replaced)")
    p.add_argument("--k", type=_int_at_least(1), default=2,
                   help="neighbouring blocks on each side that a block's similarity ratio compares with (default 2)")
    p.add_argument("--tau", type=_unit_interval, default=0.5,
                   help="cosine similarity above which an attention vector counts as similar to its neighbours' (default 0.5)")
    p.add_argument("--rho", type=_unit_interval, default=0.9,
                   help="similarity ratio above which a block counts as similar, as in the paper's Fig. 3 (default 0.9)")
    p.add_argument("--axis", choices=["columns", "rows"], default="columns",
                   help="compare attention columns (what each token contributes, paper Eqn 2; default) or rows (what each token attends to)")
    p.add_argument("--maps", choices=["pre", "post"], default="post",
                   help="maps the headline numbers use in Re-attention blocks: 'post' (after Theta, what multiplies V; default) "
                   "or 'pre' (the softmax maps); plain ViT blocks have only one kind")
    p.add_argument("--examples", type=_int_at_least(0), default=2, metavar="N",
                   help="images whose per-head CLS attention maps the report draws (default 2)")
    chatter = p.add_mutually_exclusive_group()
    chatter.add_argument("--quiet", action="store_true", help="print nothing but errors (the output folder is still written)")
    chatter.add_argument("--json", action="store_true",
                         help="print the summary as JSON on stdout and nothing else there (block indices 0-based)")


def add_compare(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "compare",
        help="compare attention collapse in two checkpoints on the same images",
        description="Run two checkpoints over the same images, print the attention-collapse numbers of both side by side "
        "with one sentence per finding, and write result.json, arrays.npz and a self-contained report.html.",
    )
    p.add_argument("--ckpt-a", required=True, metavar="SPEC",
                   help="first model: a checkpoint file, a weight-store name, a preset (vit32, deepvit32, ...) or a timm model name")
    p.add_argument("--ckpt-b", required=True, metavar="SPEC", help="second model, same forms as --ckpt-a")
    p.add_argument("--arch-a", metavar="NAME", help="architecture of --ckpt-a when its weights cannot say (preset, official or timm name)")
    p.add_argument("--arch-b", metavar="NAME", help="architecture of --ckpt-b when its weights cannot say")
    _add_analysis_options(p)
    p.set_defaults(run=run_compare)


def add_analyze(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "analyze",
        help="measure attention collapse in one checkpoint",
        description="Run one checkpoint over images, print its attention-collapse numbers and write result.json, "
        "arrays.npz and a self-contained report.html.",
    )
    p.add_argument("--ckpt", required=True, metavar="SPEC",
                   help="the model: a checkpoint file, a weight-store name, a preset (vit32, deepvit32, ...) or a timm model name")
    p.add_argument("--arch", metavar="NAME", help="architecture when the weights cannot say (preset, official or timm name)")
    _add_analysis_options(p)
    p.set_defaults(run=run_analyze)


def _model_label(spec: str, side: str | None = None) -> str:
    """A short name for tables and figures: the file name of a path, else the spec itself."""
    name = Path(spec).name if Path(spec).exists() else spec
    return f"{name} ({side})" if side else name


@contextmanager
def _warnings_as_lines(quiet: bool) -> Iterator[None]:
    """Library warnings (skipped images, guessed architecture, ...) as one ``warning: ...`` line each."""
    with warnings.catch_warnings():
        warnings.showwarning = lambda message, *_, **__: None if quiet else print(f"warning: {message}", file=sys.stderr)
        yield


def _check_out(out: Path) -> None:
    """Refuse an unusable --out before the (long) analysis; the folder is created only when writing."""
    if out.exists() and not out.is_dir():
        raise DiagError(f"--out {out} exists and is not a folder")


def _run_analysis(args: argparse.Namespace, specs: list[tuple[str, str | None]], labels: list[str]) -> None:
    from rich.console import Console

    from .analysis import analyze, compare
    from .checkpoints import load_model
    from .device import resolve_device
    from .images import default_image_set, open_images
    from .report import write_report
    from .summary import comparison_findings, model_findings, print_summary

    _check_out(args.out)
    resolve_device(args.device)  # an unusable --device fails before the models are loaded
    options = dict(
        k=args.k, tau=args.tau, rho=args.rho, axis=args.axis, maps=args.maps, batch_size=args.batch_size,
        num_images=args.num_images, device=args.device, dtype=args.dtype, num_examples=args.examples, progress=not args.quiet,
        num_workers=args.workers,
    )  # fmt: skip
    with _warnings_as_lines(args.quiet):
        models = [load_model(spec, arch=arch) for spec, arch in specs]
        sources = args.images or [default_image_set(models)]
        images = open_images(sources[0] if len(sources) == 1 else sources, limit=args.num_images)
        # The analysis draws its progress bar on stdout; stdout is kept for the summary (and --json).
        with redirect_stdout(sys.stderr):
            result = compare(*models, images, **options) if len(models) == 2 else analyze(models[0], images, **options)
    command = "deepvit-diag " + shlex.join(sys.argv[1:]) if sys.argv[0].endswith("deepvit-diag") else None
    try:
        args.out.mkdir(parents=True, exist_ok=True)
        result.save(args.out)
        write_report(args.out / "report.html", result, labels, command)
    except OSError as err:
        raise DiagError(f"cannot write to {args.out}: {err.strerror or err}") from None
    if args.json:
        print(json.dumps(result.summary(), indent=2))
    elif not args.quiet:
        findings = comparison_findings(*labels, result) if len(models) == 2 else model_findings(labels[0], result)
        results = {labels[0]: result.a, labels[1]: result.b} if len(models) == 2 else {labels[0]: result}
        print_summary(Console(), results, findings, out=str(args.out / "report.html"))


def run_compare(args: argparse.Namespace) -> None:
    _run_analysis(args, [(args.ckpt_a, args.arch_a), (args.ckpt_b, args.arch_b)],
                  [_model_label(args.ckpt_a, "A"), _model_label(args.ckpt_b, "B")])  # fmt: skip


def run_analyze(args: argparse.Namespace) -> None:
    _run_analysis(args, [(args.ckpt, args.arch)], [_model_label(args.ckpt)])


COMMANDS = [add_compare, add_analyze, add_train, add_models, add_import]


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
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.run(args)
    except (DiagError, FileNotFoundError, ValueError) as err:
        if args.debug:
            raise
        print(f"error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
