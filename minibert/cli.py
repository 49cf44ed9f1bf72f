"""The command line: ``minibert`` (also installed as ``lightning``) and ``python -m minibert``.

``fit``, ``validate``, ``test`` and ``predict`` are LightningCLI's, configured by
``configs/*.yaml``; ``export``, ``neighbors`` and ``fill-mask`` look into a trained
checkpoint (:mod:`minibert.explore`).
"""

from __future__ import annotations

import sys

from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from minibert import explore
from minibert.data import EuroparlDataModule
from minibert.errors import MinibertError
from minibert.module import MiniBert


class MiniBertCLI(LightningCLI):
    """LightningCLI whose model takes its vocabulary size and sequence length from the data."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("data.seq_len", "model.seq_len")
        # The vocabulary exists only once the corpus is read, so this link is resolved when
        # the data module is instantiated, just before the model.
        parser.link_arguments("data.vocab_len", "model.vocab_size", apply_on="instantiate")


def main(args: list[str] | None = None) -> None:
    """Run a command; a problem with the user's input is printed as one line, exit code 2."""
    argv = sys.argv[1:] if args is None else args
    try:
        if argv and argv[0] in explore.COMMANDS:
            explore.main(argv)
        else:
            MiniBertCLI(MiniBert, EuroparlDataModule, save_config_kwargs={"overwrite": True}, args=args)
    except MinibertError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
