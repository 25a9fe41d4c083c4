"""The ``deepvit-diag`` command line.

Each sub-command is an ``add_<name>(subparsers)`` function that registers its options
and a ``run`` callback; ``main`` turns every expected failure into a one-line
``error: ...`` and exit status 1 (2 for usage errors, from argparse).
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from .errors import DiagError


def add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train a preset on the bundled digits or an ImageFolder",
        description="Train a preset (with optional width/heads/size overrides) from scratch and save it "
        "in deepvit-diag's safetensors format with a model card.",
    )
    p.add_argument("preset", help="preset to train, e.g. vit32 or deepvit32 (see `deepvit-diag models`)")
    p.add_argument("--out", required=True, type=Path, help="where to write the .safetensors file")
    p.add_argument("--data", default="digits", help="'digits' (scikit-learn digits, default) or an ImageFolder path")
    p.add_argument("--embed-dim", type=int, help="token width (the preset's by default)")
    p.add_argument("--num-heads", type=int, help="attention heads (the preset's by default)")
    p.add_argument("--depth", type=int, help="number of blocks (the preset's by default)")
    p.add_argument("--img-size", type=int, help="input resolution in pixels (the preset's by default)")
    p.add_argument("--patch-size", type=int, help="patch size in pixels (the preset's by default)")
    p.add_argument("--epochs", type=int, default=100, help="training epochs (default 100)")
    p.add_argument("--batch-size", type=int, default=64, help="images per optimisation step (default 64)")
    p.add_argument("--lr", type=float, default=5e-4, help="peak AdamW learning rate (default 5e-4)")
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
    overrides = {
        k: v
        for k, v in dict(
            embed_dim=args.embed_dim, num_heads=args.num_heads, depth=args.depth, img_size=args.img_size, patch_size=args.patch_size
        ).items()
        if v is not None
    }
    arch = with_overrides(PRESETS[args.preset], **overrides)
    config = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed)
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


COMMANDS = [add_train, add_models, add_import]


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
