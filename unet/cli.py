"""The `unet` command: one subcommand per pipeline stage.

Each command is a module that defines `add_arguments(parser)` and `run(args) -> int`;
only the module of the chosen command is imported, so `unet evaluate` does not pay
for importing torch.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from unet import __version__
from unet.errors import UsageError

COMMANDS = {
    "fetch": ("unet.fetch", "download or copy a data set, verify its checksum and unpack it"),
    "prepare": ("unet.prepare", "convert a data set's official layout into the canonical prepared form"),
    "synthesize": ("unet.synthetic", "generate the embedded demo data sets from a seed"),
    "weightmap": ("unet.weightmap", "compute training targets and loss weight maps for a prepared split"),
    "augment": ("unet.augment", "draw augmented training samples (the report's augmentation figure)"),
    "train": ("unet.train", "train a U-Net on prepared data with elastic augmentation"),
    "predict": ("unet.predict", "overlap-tile prediction with test-time augmentation"),
    "evaluate": ("unet.evaluate", "score predictions with the challenges' metrics"),
    "tables": ("unet.tables", "write Table 1 and Table 2 beside the paper's numbers"),
    "export": ("unet.export", "write a trained model as a bioimage.io package (Fiji, ilastik, QuPath, napari)"),
    "gpu": ("unet.gpus", "run a command on a GPU of its own: the first free one, waiting while all are held"),
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; only `command`'s module is imported to add its arguments."""
    parser = argparse.ArgumentParser(prog="unet", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"unet {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        subparser = subparsers.add_parser(name, help=help_text, description=help_text)
        if name == command:
            module = importlib.import_module(module_name)
            module.add_arguments(subparser)
            subparser.set_defaults(run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    command = next((arg for arg in argv if not arg.startswith("-")), None)
    parser = build_parser(command if command in COMMANDS else None)
    args = parser.parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except (UsageError, FileNotFoundError) as error:  # the user's to fix: one line, no traceback
        print(f"unet {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C where the command does not stop by itself (training does: unet.train)
        print(f"unet {args.command}: interrupted; nothing half-written is kept", file=sys.stderr)
        return 130
    except Exception as error:
        if not hasattr(error, "exit_status"):  # a stop the command handled, e.g. unet.train.Interrupted
            raise
        print(f"unet {args.command}: {error}", file=sys.stderr)
        return error.exit_status


if __name__ == "__main__":
    sys.exit(main())
