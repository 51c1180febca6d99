"""The README and docs/ against the code they describe, without running anything.

Every `korllama ...` command they show (in fenced code blocks, and inline code spans that start with `korllama `)
must name a real subcommand of the typer app and only options of that subcommand, so a renamed or removed command or
flag fails here; every `make` target they name must be a Makefile target; every repository path a command uses
(configs/..., examples/..., benchmarks/...) and every relative link (and its #heading) must exist. Failures name
file:line and the offending text.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import typer

from korllama.cli import app

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
README_MAX_LINES = 200  # issue 19: a landing page; reference lives in docs/

# Links to pages another branch adds. A link here may point nowhere until that branch is merged; once the file
# exists the entry must go (the test says so), so the exemption cannot outlive its reason.
PENDING_LINKS: set[str] = set()

# Paths a command may name that must exist in the checkout (runs/, exports/, ../shared/ are made or mounted later).
REPO_PREFIXES = ("configs/", "examples/", "benchmarks/", "korllama/configs/", "korllama/specs/")

FENCE = re.compile(r"^\s*(```|~~~)")
# an inline code span: no blank line inside (a paragraph ends there); double-backtick spans are not used in the docs
SPAN = re.compile(r"(?<!`)`((?:[^`\n]|\n(?![ \t]*\n))+)`(?!`)")
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
SEPARATORS = {"&&", "||", ";", "|", "(", ")", ">", ">>", "<", "&"}


@dataclass
class Snippet:
    where: str  # file:line
    text: str  # one logical line: a fenced line with its `\` continuations joined, or an inline code span
    fenced: bool


def doc_files() -> list[Path]:
    return [README, *sorted((REPO / "docs").glob("*.md"))]


def snippets(path: Path, text: str | None = None) -> list[Snippet]:
    """The code of one Markdown file: fenced lines (continuations joined) and inline code spans, with their lines."""
    text = path.read_text("utf-8") if text is None else text
    name = path.relative_to(REPO) if path.is_relative_to(REPO) else path
    found: list[Snippet] = []
    prose: list[tuple[int, str]] = []  # (line number, line) outside fences
    fenced, pending, start = False, "", 0
    for number, line in enumerate(text.splitlines(), 1):
        if FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            prose.append((number, line))
            continue
        if not pending:
            start = number
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        found.append(Snippet(f"{name}:{start}", pending + line, True))
        pending = ""
    # inline spans, paragraph by paragraph (a span may wrap onto the next line of its paragraph)
    joined = "\n".join(line for _, line in prose)
    numbers = [n for n, _ in prose]
    for match in SPAN.finditer(joined):
        line = numbers[joined.count("\n", 0, match.start())]
        found.append(Snippet(f"{name}:{line}", " ".join(match.group(1).split()), False))
    return found


def words(text: str) -> list[str]:
    """Shell words of a line, comments dropped, `&&`/`;`/`|` as words of their own; a line that is not shell (an
    output line with an unbalanced quote) falls back to splitting on spaces."""
    try:
        lexer = shlex.shlex(text, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        return list(lexer)
    except ValueError:
        return text.split(" #")[0].split()


def korllama_commands(snippet: Snippet) -> list[list[str]]:
    """Each `korllama ...` command in a snippet as its words after `korllama` (also after `-m` or a path)."""
    if not snippet.fenced and not snippet.text.startswith("korllama "):
        return []
    tokens = words(snippet.text.removeprefix("$ "))
    commands = []
    for i, token in enumerate(tokens):
        if token == "korllama" or token.endswith("/bin/korllama"):
            rest = []
            for word in tokens[i + 1:]:
                if word in SEPARATORS:
                    break
                rest.append(word)
            commands.append(rest)
    return commands


def make_targets(snippet: Snippet) -> list[str]:
    if not snippet.fenced and not snippet.text.startswith("make "):
        return []
    tokens = words(snippet.text.removeprefix("$ "))
    targets = []
    for i, token in enumerate(tokens):
        if token == "make" and (i == 0 or tokens[i - 1] in SEPARATORS):
            for word in tokens[i + 1:]:
                if word in SEPARATORS:
                    break
                if not word.startswith("-") and "=" not in word:
                    targets.append(word)
    return targets


def check_command(root, args: list[str]) -> str | None:
    """None when `args` (the words after `korllama`) name a real command path and only its options; else why not.
    `root` is the click command typer builds (typer ships its own click, so its classes are not click's: the tree is
    walked by its attributes, `commands` on a group, `opts` on an option)."""
    command, path = root, ["korllama"]
    i = 0
    while i < len(args):
        word = args[i]
        if word.startswith("-") and word != "-":
            flag = word.split("=", 1)[0]
            params = {opt: p for p in command.get_params(command.context_class(command))
                      if p.param_type_name == "option" for opt in (*p.opts, *p.secondary_opts)}
            if flag not in params:
                return f"`{' '.join(path)}` has no option {flag}"
            option = params[flag]
            takes_value = not (option.is_flag or option.count) and "=" not in word
            i += 2 if takes_value else 1
            continue
        if hasattr(command, "commands"):
            if word not in command.commands:
                return f"`{' '.join(path)}` has no subcommand {word!r} (it has {', '.join(sorted(command.commands))})"
            command = command.commands[word]
            path.append(word)
        i += 1  # a positional argument of a command (a file, a run, an override, a placeholder such as ...)
    return None


def makefile_targets() -> set[str]:
    text = (REPO / "Makefile").read_text("utf-8")
    return {t for line in re.findall(r"^([\w.-]+(?:[ \t]+[\w.-]+)*)[ \t]*:(?!=)", text, re.M) for t in line.split()}


def problems(files: list[Path], texts: dict[Path, str] | None = None) -> tuple[list[str], int]:
    """Every problem in `files` (file:line: what and the offending text), and how many commands were checked."""
    root = typer.main.get_command(app)
    targets = makefile_targets()
    found, checked = [], 0
    for path in files:
        for snippet in snippets(path, (texts or {}).get(path)):
            for args in korllama_commands(snippet):
                checked += 1
                why = check_command(root, args)
                if why:
                    found.append(f"{snippet.where}: {why}: {snippet.text.strip()}")
            for target in make_targets(snippet):
                if target not in targets:
                    found.append(f"{snippet.where}: the Makefile has no target {target!r}: {snippet.text.strip()}")
            if snippet.fenced or snippet.text.startswith("korllama "):
                for word in words(snippet.text.removeprefix("$ ")):
                    if word.startswith(REPO_PREFIXES) and not (REPO / word).exists():
                        found.append(f"{snippet.where}: {word} does not exist: {snippet.text.strip()}")
    return found, checked


def anchors(path: Path) -> set[str]:
    """The anchors GitHub gives a Markdown file's headings: lower case, punctuation dropped, spaces as hyphens."""
    found, fenced = set(), False
    for line in path.read_text("utf-8").splitlines():
        if FENCE.match(line):
            fenced = not fenced
        elif not fenced and (heading := re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)):
            found.add(re.sub(r"[^\w\- ]", "", heading.group(1).lower()).replace(" ", "-"))
    return found


def broken_links(files: list[Path]) -> list[str]:
    """Relative links (and their #anchors, on Markdown pages) that point to nothing."""
    found = []
    for path in files:
        text, fenced = path.read_text("utf-8"), False
        for number, line in enumerate(text.splitlines(), 1):
            if FENCE.match(line):
                fenced = not fenced
            if fenced:
                continue
            for target in LINK.findall(SPAN.sub("", line)):
                if re.match(r"^[a-z]+:", target):  # https:, mailto:
                    continue
                name, _, anchor = target.partition("#")
                file = (path.parent / name).resolve() if name else path
                relative = file.relative_to(REPO).as_posix() if file.is_relative_to(REPO) else str(file)
                if relative in PENDING_LINKS:
                    continue
                where = f"{path.relative_to(REPO) if path.is_relative_to(REPO) else path}:{number}: link to {target}"
                if not file.exists():
                    found.append(f"{where} points to nothing")
                elif anchor and file.suffix == ".md" and anchor not in anchors(file):
                    found.append(f"{where}: {relative} has no heading #{anchor}")
    return found


def test_every_korllama_command_in_the_docs_names_real_commands_and_options():
    found, checked = problems(doc_files())
    assert not found, "commands in the docs that the CLI does not accept:\n" + "\n".join(found)
    assert checked >= 60, f"only {checked} korllama commands found in README.md and docs/: the extraction broke"


def test_the_checker_catches_a_renamed_flag_an_unknown_command_and_a_missing_target(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("Run `korllama predict RUN --data x.csv --outfile y.csv` or\n\n```bash\n"
                    "korllama data chek x.csv\nmake demo && make deploy\n"
                    "accelerate launch -m korllama train --config configs/nope.yaml \\\n    --epochs 3\n```\n"
                    "and `korllama --debug data check bad.csv --json`.\n", "utf-8")
    found, checked = problems([page])
    assert checked == 4
    assert [f.split(": ", 1)[1].split(":")[0] for f in found] == [
        "`korllama data` has no subcommand 'chek' (it has check, synth)",
        "the Makefile has no target 'deploy'",
        "`korllama train` has no option --epochs",
        "configs/nope.yaml does not exist",
        "`korllama predict` has no option --outfile",
    ]
    assert found[0].startswith(f"{page}:4: ") and found[2].startswith(f"{page}:6: ")  # a joined line: its first
    assert found[4].startswith(f"{page}:1: ")


def test_every_make_target_in_the_docs_exists():
    targets = makefile_targets()
    assert {"demo", "test", "gemma", "lint", "clean"} <= targets
    named = [t for path in doc_files() for s in snippets(path) for t in make_targets(s)]
    assert {"demo", "test"} <= set(named)  # the README's two commands are found, so the check reaches them


def test_every_relative_link_points_to_a_file():
    found = broken_links(doc_files())
    assert not found, "\n".join(found)
    for pending in PENDING_LINKS:
        assert not (REPO / pending).exists(), (f"{pending} exists now: remove it from PENDING_LINKS in "
                                               "tests/test_docs.py so a broken link to it fails again")


def test_the_link_check_catches_a_missing_file_and_a_missing_heading(tmp_path):
    (tmp_path / "other.md").write_text("# Other page\n\n## What a run folder holds (`korllama train --out RUN`)\n")
    page = tmp_path / "page.md"
    page.write_text("# A page\n\n[a](gone.md), [b](#nope), [c](#a-page), `[not a link](gone.md)`\n\n```\n"
                    "[in code](gone.md)\n```\n[d](other.md#what-a-run-folder-holds-korllama-train---out-run) "
                    "[e](other.md#other) [f](https://example.com/x.md)\n", "utf-8")
    found = broken_links([page])
    assert found == [f"{page}:3: link to gone.md points to nothing",
                     f"{page}:3: link to #nope: {page} has no heading #nope",
                     f"{page}:8: link to other.md#other: {tmp_path / 'other.md'} has no heading #other"]


def test_the_readme_is_short_and_links_every_docs_page():
    readme = README.read_text("utf-8")
    assert len(readme.splitlines()) <= README_MAX_LINES
    linked = {(REPO / t.split("#")[0]).resolve() for t in LINK.findall(readme)}
    unlinked = [p.name for p in sorted((REPO / "docs").glob("*.md")) if p.resolve() not in linked]
    assert not unlinked, f"docs pages the README does not link: {unlinked}"
