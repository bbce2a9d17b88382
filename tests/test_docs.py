"""Every fenced code block of README.md and docs/*.md runs here, so the documentation cannot drift from the code.

- ```python blocks run page by page, in order, in one namespace per page, in a fresh temporary directory.
- ```bash / ```sh / ```console blocks (in ```console only the ``$ `` lines): each ``mixq ...`` (or
  ``python -m mixq ...``) command runs through the CLI in that same directory and must exit 0; ``make X`` must name
  a Makefile target; ``pip install`` may only name mixq's extras and its declared dependencies; ``python
  benchmarks/X.py`` must name an existing benchmark script (benchmarks take minutes: not run here). Any other
  command fails the test.
- ```text blocks are not code (directory trees, output) and are skipped.
- A block whose info string says ``no-run`` is not run; at most ``MAX_NO_RUN`` such blocks may exist in all.
- A block whose info string says ``slow`` runs only in the page's ``nightly``-marked test (with the page's other
  blocks), which ``make test`` leaves out and ``make test-nightly`` runs: the exports to LiteRT, the Hugging Face
  and KV-cache decoder examples, latency-driven autoquantize and the demo (about two minutes on 2 cores).

Small inputs the commands name are prepared here when a page's blocks mention them: ``./my-bert`` and
``./my-llama`` (tiny random Hugging Face model directories with their tokenizers, built offline) and ``texts.txt``
(a few sentences). Everything else a page uses, its own blocks create.
"""

from __future__ import annotations

import re
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LANGUAGES = {"python", "bash", "sh", "console", "text"}
MAX_NO_RUN = 2
FENCE = re.compile(r"^(?P<indent>[ \t]*)```(?P<info>[^\n`]*)\n(?P<body>.*?)^(?P=indent)```[ \t]*$", re.M | re.S)


@dataclass(frozen=True)
class Block:
    page: Path
    line: int
    language: str
    flags: frozenset[str]
    code: str

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def blocks_of(page: Path) -> list[Block]:
    text = page.read_text()
    found = []
    for m in FENCE.finditer(text):
        words = m["info"].split()
        language, flags = (words[0] if words else ""), frozenset(words[1:])
        indent = len(m["indent"])
        body = "\n".join(line[indent:] for line in m["body"].splitlines())
        found.append(Block(page, text.count("\n", 0, m.start()) + 1, language, flags, body))
    return found


ALL_BLOCKS = [b for page in PAGES for b in blocks_of(page)]


def _page_params():
    params = []
    for page in PAGES:
        name = str(page.relative_to(ROOT))
        params.append(pytest.param(page, False, id=name))
        if any("slow" in b.flags for b in blocks_of(page)):
            params.append(pytest.param(page, True, id=f"{name}[slow]", marks=pytest.mark.nightly))
    return params


# ---------------------------------------------------------------------------------------------------- structure
def test_pages_exist_and_readme_is_short():
    assert (ROOT / "docs").is_dir() and len(PAGES) > 5
    assert len((ROOT / "README.md").read_text().splitlines()) <= 150
    for page in PAGES[1:]:
        assert f"docs/{page.name}" in (ROOT / "README.md").read_text(), f"README does not link {page.name}"


def test_local_links_resolve():
    broken = []
    for page in PAGES:
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
            path = target.split("#")[0]
            if path and not re.match(r"[a-z]+://", path) and not (page.parent / path).exists():
                broken.append(f"{page.relative_to(ROOT)}: {target}")
    assert not broken, f"links to files that do not exist: {broken}"


def test_every_block_has_a_known_language_and_few_are_not_run():
    unknown = [b.where for b in ALL_BLOCKS if b.language not in LANGUAGES]
    assert not unknown, f"code blocks without a known language (python, bash, sh, console, text): {unknown}"
    unknown_flags = [b.where for b in ALL_BLOCKS if b.flags - {"no-run", "slow"}]
    assert not unknown_flags, f"unknown flags (no-run, slow): {unknown_flags}"
    no_run = [b.where for b in ALL_BLOCKS if "no-run" in b.flags]
    assert len(no_run) <= MAX_NO_RUN, f"too many blocks marked no-run: {no_run}"
    assert sum(b.language == "python" for b in ALL_BLOCKS) >= 20


# ---------------------------------------------------------------------------------------------------- shell lines
def shell_commands(block: Block) -> list[list[str]]:
    """The commands of a shell block: continuation lines joined, comments dropped; in ``console`` only ``$`` lines."""
    lines = block.code.splitlines()
    if block.language == "console":
        lines = [line[2:] for line in lines if line.startswith("$ ")]
    joined = "\n".join(lines).replace("\\\n", " ")
    return [argv for line in joined.splitlines() if (argv := shlex.split(line, comments=True))]


def _makefile_targets() -> set[str]:
    return set(re.findall(r"^([A-Za-z][\w-]*)\s*:(?!=)", (ROOT / "Makefile").read_text(), re.M))


def _installable() -> set[str]:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = {"mixq"} | {f"mixq[{extra}]" for extra in project["optional-dependencies"]}
    names |= {f".[{extra}]" for extra in project["optional-dependencies"]} | {"."}
    deps = project["dependencies"] + [d for ds in project["optional-dependencies"].values() for d in ds]
    return names | {re.split(r"[<>=\[; ]", d, maxsplit=1)[0] for d in deps}


def _package_name(arg: str) -> str:
    return arg if arg.startswith((".", "mixq[")) else re.split(r"[<>=; ]", arg, maxsplit=1)[0]


def check_static_command(argv: list[str], where: str) -> bool:
    """Checks make / pip / benchmark lines; returns False for a command that must run (mixq)."""
    if argv[0] == "make":
        targets = [a for a in argv[1:] if "=" not in a] or ["all"]
        missing = set(targets) - _makefile_targets()
        assert not missing, f"{where}: `make {' '.join(argv[1:])}`: no Makefile target {sorted(missing)}"
        return True
    if argv[:2] == ["pip", "install"] or argv[1:3] == ["-m", "pip"]:
        packages = [_package_name(a) for a in argv[argv.index("install") + 1:] if not a.startswith("-")]
        unknown = set(packages) - _installable()
        assert packages and not unknown, f"{where}: pip installs what mixq does not declare: {sorted(unknown)}"
        return True
    if argv[0].endswith("python") and len(argv) > 1 and argv[1].startswith("benchmarks/"):
        assert (ROOT / argv[1]).is_file(), f"{where}: no benchmark script {argv[1]}"
        return True
    if argv[0] == "mixq" or argv[:3] == ["python", "-m", "mixq"]:
        return False
    raise AssertionError(f"{where}: a shell command the doc test does not know how to check: {shlex.join(argv)}")


def run_cli(argv: list[str], where: str) -> None:
    from mixq.cli import main

    args = argv[1:] if argv[0] == "mixq" else argv[3:]
    try:
        code = main(args)
    except SystemExit as exit_:  # argparse's --help
        code = exit_.code
    assert code == 0, f"{where}: `{shlex.join(argv)}` exited {code}"


# ---------------------------------------------------------------------------------------------------- inputs
def prepare_inputs(blocks: list[Block], workdir: Path) -> None:
    text = "\n".join(b.code for b in blocks)
    if "./my-bert" in text or "./my-llama" in text:
        from tests.cli.hf_dirs import save_bert, save_llama

        if "./my-bert" in text:
            save_bert(workdir / "my-bert")
        if "./my-llama" in text:
            save_llama(workdir / "my-llama")
    if "texts.txt" in text:
        from tests.cli.hf_dirs import TEXTS

        (workdir / "texts.txt").write_text("\n".join(t for t in TEXTS if t) + "\n")


# ---------------------------------------------------------------------------------------------------- the pages
USER_MODULES = ("nets",)  # modules the pages write and import (a stale one from another test must not be used)

@pytest.mark.parametrize(("page", "slow"), _page_params())
def test_page_code_runs(page, slow, tmp_path, monkeypatch, request):
    monkeypatch.chdir(tmp_path)
    for name in USER_MODULES:  # another test's nets.py must not stand in for the page's, nor the page's for theirs
        sys.modules.pop(name, None)
        request.addfinalizer(lambda name=name: sys.modules.pop(name, None))
    blocks = [b for b in blocks_of(page) if b.language != "text" and "no-run" not in b.flags
              and (slow or "slow" not in b.flags)]
    prepare_inputs(blocks, tmp_path)
    torch.manual_seed(0)
    namespace: dict = {"__name__": f"docs_{page.stem}"}
    for block in blocks:
        if block.language == "python":
            exec(compile(block.code, block.where, "exec"), namespace)  # noqa: S102 - the documentation's own code
            continue
        for argv in shell_commands(block):
            if not check_static_command(argv, block.where):
                run_cli(argv, block.where)
