"""What a caller may state about a checkpoint beyond ``arch=``, and messages that name it.

A hint is an object: the option it names (``num_heads``), the value to write (``N``) and why it is
offered. Messages of the loader (refusals, guesses) are sequences of text and hints; they are rendered
where they are shown: the API as the keyword argument with the CLI's option beside it
(``pass num_heads=... (--num-heads)``), the CLI of ``compare`` with each model's suffix
(``--num-heads-a``). No message text is matched or rewritten anywhere.

``OPTIONS`` is the one list of hints: ``load_model``'s keyword arguments, from which the CLI makes
its options (``--num-heads``; ``--num-heads-a`` / ``-b`` for compare).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

from .errors import DiagError

# timm's activation names that an arch may carry (``act_layer``): the CLI's choices and the names
# configs are translated to.
ACTIVATION_NAMES = ("gelu", "gelu_tanh", "quick_gelu", "relu", "silu")


@dataclass(frozen=True)
class Option:
    """One architecture hint: a ``load_model`` keyword and a CLI option.

    Attributes:
        key: timm's constructor name (``num_heads``).
        kind: ``"int"`` (a whole number of at least ``minimum``), ``"size"`` (pixels: ``N`` or ``HxW``, an int or
            (height, width)), ``"number"`` (positive), ``"choice"``
            (one of ``choices``) or ``"flag"`` (``--x`` / ``--no-x``).
        help: the CLI's help text; ``{suffix}`` becomes the option's per-model suffix.
    """

    key: str
    kind: str
    help: str
    metavar: str = "N"
    minimum: int = 1
    choices: tuple[str, ...] = ()


OPTIONS = (
    Option("num_heads", "int", "number of attention heads per block"),
    Option("embed_dim", "int", "width of the tokens (embed_dim)"),
    Option("depth", "int", "number of transformer blocks"),
    Option("mlp_ratio", "number", "MLP hidden width divided by the token width", metavar="R"),
    Option(
        "img_size",
        "size",
        "input resolution in pixels, PX or HxW (e.g. 384 for a model fine-tuned at 384 px, 224x448 for a "
        "non-square grid); see --resample-pos-embed{suffix}",
        metavar="PX",
    ),
    Option("patch_size", "int", "side of one patch in pixels", metavar="PX"),
    Option("num_classes", "int", "classes of the head (0: no head)", minimum=0),
    Option("in_chans", "int", "channels of the input images"),
    Option("global_pool", "choice", "how tokens are pooled before the head", choices=("token", "avg")),
    Option("norm_eps", "number", "LayerNorm eps (1e-6 timm, 1e-5 CLIP and vit-pytorch)", metavar="EPS"),
    Option("act_layer", "choice", "MLP activation (quick_gelu: OpenAI CLIP)", choices=ACTIVATION_NAMES),
    Option("dynamic_img_size", "flag", "accept any image size, interpolating the position embeddings"),
    Option("transform_scale", "flag", "scale Re-attention's mixed maps (official DeepViT-S)"),
)
HINTS = tuple(option.key for option in OPTIONS)


@dataclass(frozen=True)
class Hint:
    """Pass ``option=value``: the API keyword, and the CLI option ``--option[suffix] [metavar]``."""

    option: str
    value: str = "..."
    metavar: str = ""

    def render(self, suffix: str = "") -> str:
        flag = f"--{self.option.replace('_', '-')}{suffix}" + (f" {self.metavar}" if self.metavar else "")
        return f"{self.option}={self.value} ({flag})"


ARCH_HINT = Hint("arch", "NAME", "NAME")


def hint(key: str) -> Hint:
    """How a caller states ``key``: its own option where it is a hint, else ``arch=NAME``."""
    return Hint(key) if key in HINTS else ARCH_HINT


Part = str | Hint


class Message:
    """A line of text and hints, rendered for the API (``str``) or for a CLI option suffix."""

    def __init__(self, *parts: Part | Message) -> None:
        flat: list[Part] = []
        for part in parts:
            flat.extend(part.parts if isinstance(part, Message) else [part])
        self.parts = tuple(flat)

    def render(self, suffix: str = "") -> str:
        return "".join(part.render(suffix) if isinstance(part, Hint) else part for part in self.parts)

    def __str__(self) -> str:
        return self.render()

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Message) and self.parts == other.parts

    def __hash__(self) -> int:
        return hash(self.parts)


def join(messages: list[Message], separator: str = "; ") -> Message:
    parts: list[Part | Message] = []
    for index, message in enumerate(messages):
        parts.extend([separator, message] if index else [message])
    return Message(*parts)


class HintedError(DiagError):
    """A ``DiagError`` whose message names options: ``render(suffix)`` for the CLI, ``str`` for the API."""

    def __init__(self, *parts: Part | Message) -> None:
        self.message = Message(*parts)
        super().__init__(str(self.message))

    def render(self, suffix: str = "") -> str:
        return self.message.render(suffix)


def prefixed(err: DiagError, label: str) -> DiagError:
    """``err`` with ``label: `` before its message, hints kept."""
    body = err.message if isinstance(err, HintedError) else str(err)
    return HintedError(f"{label}: ", body)


def rendered(err: BaseException, suffix: str = "") -> str:
    """An error's message for the CLI: hints with the option ``suffix``."""
    return err.render(suffix) if isinstance(err, HintedError) else str(err)


class GuessWarning(UserWarning):
    """Architecture values the weights do not determine were guessed, or a recorded name contradicts the
    weights; the one message of a load names each (``message``: the notes with their hints)."""

    def __init__(self, message: Message) -> None:
        self.message = message
        super().__init__(str(message))

    def render(self, suffix: str = "") -> str:
        return self.message.render(suffix)


def warn_guesses(label: str, notes: list[Message], stacklevel: int) -> None:
    warnings.warn(GuessWarning(Message(f"{label}: ", join(notes))), stacklevel=stacklevel + 1)


def as_strings(notes: list[Any]) -> list[str]:
    """Notes for a model's provenance and card: the API's rendering."""
    return [str(note) for note in notes]
