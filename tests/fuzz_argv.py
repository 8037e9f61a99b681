"""A seeded mutator of command-line argument vectors, for the CLI fuzz harnesses.

``mutate_argv`` takes a valid argument vector and makes 1-4 edits of the kinds a user
(or a script with a bug) makes: an option's value replaced by junk (extreme numbers such
as ``1e400``, ``nan``, ``-0``, ``0x10``, 400 nines; empty or blank strings; control
characters, a lone surrogate as Linux hands undecodable bytes to Python, very long
text), a token deleted, an option repeated or moved, an option of another command or
an unknown one inserted (with or without a value, or as ``--opt=value``), a flag given
a value, the command name replaced, the vector cut short.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

__all__ = ["JUNK", "fuzz_batch", "mutate_argv"]

JUNK: tuple[str, ...] = (
    "",
    " ",
    "0",
    "-0",
    "1",
    "-1",
    "2",
    "0.5",
    "1e-5",
    "nan",
    "NaN",
    "inf",
    "-inf",
    "1e400",
    "-1e400",
    "1e-400",
    "5e-324",
    "1e308",
    "1e-300",
    "1e300",
    "0x10",
    "1_000",
    " 3 ",
    "9" * 400,
    "-" + "9" * 30,
    "99999999999999999999999",
    "4294967296",
    "true",
    "None",
    "{}",
    "[1]",
    "--",
    "-",
    "-1e5",
    "\x1b[31m",
    "a\tb",
    "é",
    "\udcff",
    "x" * 5000,
    "..",
    "a/b",
    "/proc/nonexistent-privagg-fuzz",
)


def mutate_argv(
    rnd: random.Random,
    valid: Sequence[str],
    *,
    options: Sequence[str],
    commands: Sequence[str],
    values: Sequence[str] = (),
) -> list[str]:
    """``valid`` with 1-4 random edits; ``options`` and ``commands`` are the names the
    program knows (inserted to make near-valid vectors), ``values`` extra junk values
    meaningful to it (file names, preset names)."""
    argv = list(valid)
    pool = (*JUNK, *values)
    for _ in range(rnd.choice((1, 1, 2, 3, 4))):
        op = rnd.randrange(10)
        i = rnd.randrange(len(argv) + 1)
        if op <= 2 and argv:  # a value (or any token) replaced by junk
            j = i % len(argv)
            if argv[j].startswith("-") and j + 1 < len(argv) and rnd.random() < 0.8:
                j += 1
            argv[j] = rnd.choice(pool)
        elif op == 3 and argv:
            del argv[i % len(argv)]
        elif op == 4:  # a known option, with a junk value, a valid one or none
            opt = rnd.choice(options)
            k = rnd.randrange(3)
            if k == 0:
                argv[i:i] = [opt, rnd.choice(pool)]
            elif k == 1:
                argv[i:i] = [f"{opt}={rnd.choice(pool)}"]
            else:
                argv[i:i] = [opt]
        elif op == 5 and argv:  # an option repeated with its value
            j = i % len(argv)
            argv[i:i] = argv[j : j + 2]
        elif op == 6:
            argv[i:i] = [
                rnd.choice(("--nope", "-x", "--json=1", "--help", "-h", "--version"))
            ]
        elif op == 7 and argv:  # the command replaced, or the vector cut short
            if rnd.random() < 0.5:
                argv[0] = rnd.choice((*commands, "", "nope", argv[0].upper()))
            else:
                del argv[i % len(argv) :]
        elif op == 8 and len(argv) > 1:  # two tokens swapped
            a, b = rnd.randrange(len(argv)), rnd.randrange(len(argv))
            argv[a], argv[b] = argv[b], argv[a]
        else:  # a junk positional argument
            argv[i:i] = [rnd.choice(pool)]
    return argv


def fuzz_batch(
    rnd: random.Random,
    batch: int,
    valid: Sequence[Sequence[str]],
    escape: Callable[[list[str]], str | None],
    *,
    options: Sequence[str],
    commands: Sequence[str],
    values: Sequence[str] = (),
) -> list[str]:
    """Run ``batch`` mutated vectors through ``escape`` (None: the documented outcome);
    return what escaped, each with its vector."""
    escapes: list[str] = []
    for _ in range(batch):
        argv = mutate_argv(
            rnd, rnd.choice(valid), options=options, commands=commands, values=values
        )
        what = escape(argv)
        if what is not None:
            escapes.append(f"{what} <- {argv!r:.300}")
    return escapes
