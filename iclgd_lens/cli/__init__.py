"""Command line: a thin layer over the Python API.

iclgd-lens compare --model gpt2 --task sst2 --k 32 --seed 2 --lr 5e-4 --out runs/sst2-s2

`parser` imports only light modules, so `--help` and argument errors answer at once; torch, TransformerLens and
the data libraries load when a command runs (`commands`).
"""

from __future__ import annotations

import sys

from iclgd_lens.cli.parser import build_parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if getattr(args, "threads", None) is not None and args.threads < 1:  # every verb sets torch's threads
            raise ValueError(f"--threads must be >= 1, got {args.threads}")
        status = args.handler(args)  # the verb's function (`parser.command`): torch loads now
    except (
        ValueError,
        FileNotFoundError,
        FileExistsError,
        NotADirectoryError,
        IsADirectoryError,
        FloatingPointError,
        NotImplementedError,
    ) as error:
        if args.debug:
            raise
        message = " ".join(str(error).split())  # one line, whatever the library wrote
        print(f"iclgd-lens: error: {message} (--debug shows the traceback)", file=sys.stderr)
        return 2
    return status or 0


if __name__ == "__main__":
    sys.exit(main())
