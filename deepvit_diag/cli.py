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


COMMANDS = [add_train]


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
