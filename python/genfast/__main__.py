"""Command line: ``python -m genfast`` (also installed as ``genfast``).

    genfast config    print the build and runtime configuration (genfast.show_config())
"""

from __future__ import annotations

import argparse

from ._config import show_config


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="genfast", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("config", help="print what was built and what this process can use")
    args = parser.parse_args(argv)
    if args.command in (None, "config"):
        show_config()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
