"""Every command in README.md and docs/*.md is one a user can type: each `cellseg ...` line
(also behind `torchrun ... -m cellseg` or `python -m cellseg`) parses with the real CLI parser,
`python scripts/upload_weights.py ...` with its parser, `python -m bench NAME` names a benchmark,
`make TARGET` names a Makefile target, and every relative link between the pages resolves.
Lines holding `...` are elisions of the line above and are not checked."""

from __future__ import annotations

import contextlib
import io
import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md"] + sorted((ROOT / "docs").glob("*.md"))


def _commands(page: Path) -> list[tuple[int, str]]:
    """(line number, command) of every shell command in the page's ```bash blocks."""
    out, block, joined, start = [], False, "", 0
    for no, line in enumerate(page.read_text().splitlines(), 1):
        if line.startswith("```"):
            block = line.strip() in ("```bash", "```sh", "```console")
            continue
        if not block:
            continue
        text = line.split(" #")[0].rstrip() if not line.lstrip().startswith("#") else ""
        if not joined:
            start = no
        if text.endswith("\\"):
            joined += text[:-1] + " "
            continue
        joined += text
        if joined.strip():
            out.append((start, joined.strip()))
        joined = ""
    return out


def _cellseg_argv(argv: list[str]) -> list[str] | None:
    if argv[0] == "cellseg":
        return argv[1:]
    if "-m" in argv and argv[argv.index("-m") + 1:argv.index("-m") + 2] == ["cellseg"]:
        return argv[argv.index("-m") + 2:]
    return None


def _all_commands() -> list[tuple[str, str]]:
    found = [(f"{p.relative_to(ROOT)}:{no}", cmd) for p in PAGES for no, cmd in _commands(p)]
    assert len(found) > 30, "no commands found: did the pages move?"
    return found


def _check(cmd: str) -> None:
    argv = shlex.split(re.sub(r"^\S+=\S+\s+", "", cmd))  # drop a leading VAR=value
    if not argv or "..." in cmd:
        return
    sub = _cellseg_argv(argv)
    if sub is not None:
        from cellseg.cli import build_parser

        command = next((a for a in sub if not a.startswith("-")), None)
        _parses(build_parser(command).parse_args, sub, cmd)
    elif argv[:2] == ["python", "scripts/upload_weights.py"]:
        import importlib.util

        spec = importlib.util.spec_from_file_location("upload_weights",
                                                      ROOT / "scripts" / "upload_weights.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        _parses(module.get_args_parser().parse_args, argv[2:], cmd)
    elif argv[:3] == ["python", "-m", "bench"]:
        from bench.__main__ import EXTRA

        names = {p.stem[len("bench_"):] for p in (ROOT / "bench").glob("bench_*.py")}
        names |= set(EXTRA)
        assert set(argv[3:]) <= names, f"{cmd}: unknown benchmark(s) {set(argv[3:]) - names}"
    elif argv[:2] == ["python", "-m"] and argv[2].startswith("bench."):
        import importlib

        module = argv[2]
        assert (ROOT / (module.replace(".", "/") + ".py")).is_file(), f"{cmd}: no {module}"
        parser = getattr(importlib.import_module(module), "get_args_parser", None)
        if parser is not None:  # the module's own command line
            _parses(parser().parse_args, argv[3:], cmd)
    elif argv[0] == "make":
        targets = set(re.findall(r"^([\w-]+):", (ROOT / "Makefile").read_text(), flags=re.M))
        wanted = [a for a in argv[1:] if "=" not in a]
        assert set(wanted) <= targets, f"{cmd}: no Makefile target {set(wanted) - targets}"


def _parses(parse, argv: list[str], cmd: str) -> None:
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            parse(argv)
    except SystemExit as exc:
        if exc.code not in (0, None):  # --help exits 0
            pytest.fail(f"`{cmd}` does not parse: {err.getvalue().strip().splitlines()[-1:]}")


@pytest.mark.parametrize("where,cmd", _all_commands(), ids=lambda v: v if ":" in v else "")
def test_documented_command_parses(where, cmd):
    _check(cmd)


def test_every_relative_link_resolves():
    broken = []
    for page in PAGES:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
            if "://" in target or target.startswith("mailto:"):
                continue
            if not (page.parent / target).exists():
                broken.append(f"{page.relative_to(ROOT)} -> {target}")
    assert not broken, broken


def test_readme_stays_a_short_user_guide():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) < 200
    text = "\n".join(lines)
    assert "make demo" in text and "make test" in text and "../shared/data" in text


def test_the_checker_catches_a_wrong_option():
    with pytest.raises(pytest.fail.Exception, match="does not parse"):
        _check("cellseg predict --weights a.pt --imagez x --out s.csv")
    with pytest.raises(AssertionError, match="no Makefile target"):
        _check("make tset")
