"""The documentation's examples, run: a page's ```console blocks (`$ command` lines, each
followed by what it prints) run in bash, its ```pycon blocks (`>>> ` lines and their
output, doctest's form) run with doctest, in page order, against a real cluster.

Output is compared the way a reader compares it: whitespace runs are one space, `...`
stands for anything, loopback ports and worker ids are whatever this cluster's are, and a
decimal number may differ by 0.01 (+2%): a CPU with native half precision runs the
default model in fp16, whose scores differ from fp32's in the third decimal.
"""

from __future__ import annotations

import doctest
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

BLOCK = re.compile(r"^```(console|pycon)\n(.*?)^```", re.M | re.S)
NUMBER = re.compile(r"\d+\.\d+")
VOLATILE = [(re.compile(r"\b(127\.0\.0\.1|localhost):\d+"), "127.0.0.1:PORT"),
            (re.compile(r"\bclassifier-[\w.-]+?-[0-9a-f]{8}\b"), "classifier-WORKER")]


@dataclass
class Example:
    page: str
    line: int
    kind: str  # "console" or "pycon"
    source: str
    want: str


def page_examples(page: Path, root: Path) -> list[Example]:
    """Every runnable example on `page`, in order: one per console command, one per pycon block."""
    text = page.read_text()
    out = []
    for block in BLOCK.finditer(text):
        line = text.count("\n", 0, block.start()) + 2
        kind, body = block.group(1), block.group(2)
        if kind == "pycon":
            out.append(Example(str(page.relative_to(root)), line, kind, body, ""))
            continue
        for command, want, offset in console_commands(body):
            out.append(Example(str(page.relative_to(root)), line + offset, kind, command, want))
    return out


def console_commands(body: str) -> list[tuple[str, str, int]]:
    """(command, expected output, line offset) for each `$ ` line of a console block; a
    command continues over lines that end in a backslash."""
    commands: list[tuple[str, str, int]] = []
    lines = body.splitlines()
    i = 0
    while i < len(lines):
        if not lines[i].startswith("$ "):
            raise ValueError(f"console block line {i + 1} is output before any command: {lines[i]!r}")
        start, command = i, lines[i][2:]
        while command.endswith("\\") and i + 1 < len(lines):
            i += 1
            command += "\n" + lines[i]
        i += 1
        want = []
        while i < len(lines) and not lines[i].startswith("$ "):
            want.append(lines[i])
            i += 1
        commands.append((command, "\n".join(want), start))
    return commands


def normalise(text: str) -> str:
    for pattern, stand_in in VOLATILE:
        text = pattern.sub(stand_in, text)
    return " ".join(text.split())


def matches(want: str, got: str) -> bool:
    """Whether `got` is what the page shows, read as described at the top."""
    want, got = normalise(want), normalise(got)
    pattern, numbers = [], []
    for i, chunk in enumerate(want.split("...")):
        if i:
            pattern.append(".*?")
        for j, piece in enumerate(NUMBER.split(chunk)):
            if j:
                pattern.append(r"(\d+\.\d+)")
            pattern.append(re.escape(piece))
        numbers += [float(n) for n in NUMBER.findall(chunk)]
    found = re.fullmatch("".join(pattern), got, re.S)
    if not found:
        return False
    return all(abs(float(g) - w) <= 0.01 + 0.02 * abs(w) for g, w in zip(found.groups(), numbers))


class Checker(doctest.OutputChecker):
    def check_output(self, want: str, got: str, optionflags: int) -> bool:
        return matches(want, got)


def run_console(example: Example, cwd: Path, env: dict, substitute) -> str | None:
    """None when the command printed what the page shows; else what went wrong."""
    command = substitute(example.source)
    done = subprocess.run(["bash", "-c", command], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    got = done.stdout + done.stderr
    if matches(example.want, got):
        return None
    return f"{example.page}:{example.line}: $ {command}\n--- the page shows:\n{example.want}\n--- it printed:\n{got}"


def run_pycon(example: Example, globs: dict, substitute) -> str | None:
    """None when every statement printed what the page shows; else doctest's report."""
    test = doctest.DocTestParser().get_doctest(substitute(example.source), globs, example.page, example.page,
                                               example.line)
    report: list[str] = []
    runner = doctest.DocTestRunner(checker=Checker(), verbose=False, optionflags=doctest.ELLIPSIS)
    runner.run(test, out=report.append, clear_globs=False)
    globs.update(test.globs)  # DocTest ran on a copy: the page's next block goes on from here
    return "".join(report) or None
