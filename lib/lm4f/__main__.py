"""``python -m lm4f <command>``: the course's command line.

    python -m lm4f doctor      is this machine ready? (OK/FAIL per requirement, with the fix)
    python -m lm4f data ...    the same as ``python -m lm4f.data ...`` (fetch, status)
"""

import sys

USAGE = "usage: python -m lm4f {doctor,data} [...]"


def main(argv: list[str]) -> int:
    command, rest = (argv[0], argv[1:]) if argv else ("", [])
    if command == "doctor":
        from lm4f.doctor import main as doctor

        return doctor(rest)
    if command == "data":
        from lm4f.data import _main as data

        return data(rest)
    print(USAGE, file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
