"""Docs that run: every shell and Python block of README.md and docs/**/*.md is marked, and the runnable
ones run, page by page, against the tiny quickstart model.

How a writer marks a fenced block (an HTML comment on the line right before the fence; it does not render):

    <!-- doctest: run -->               run it (bash: `set -eo pipefail`; python: the venv's interpreter)
    <!-- doctest: skip REASON -->       do not run it; the reason is required and shown as a pytest skip
    <!-- doctest: file NAME -->         write the block's text to NAME in the page's folder (any language)
    <!-- doctest: shared -->            run once per session before every page; what it writes is copied
                                        into every page's folder (the quickstart's `runs/quickstart/`)
    <!-- doctest: background -->        start it (a server), wait until `--port N` answers /health, stop it
                                        when the page is done; `8000` in that page's blocks becomes a free port

Every fence needs a language (``text`` for layouts and synopses); every ``bash``/``sh``/``shell``/``console``/
``python``/``py`` block needs a mark, so new docs cannot silently escape. ``json`` blocks must parse, and every
line of a ``jsonl`` block must be one JSON object.

A page's blocks run in order in one temporary folder, with the venv's ``bin`` first on PATH (``vlmbed``,
``python``). The folder starts with a copy of what the shared blocks wrote (``runs/quickstart/...``, the
checkpoints left out) and ``imgs/0.png`` ... ``imgs/9.png`` (real 8x8 digits from scikit-learn, upscaled),
the images the examples name as the reader's own.

Relative links in README.md and docs/ must point at files that exist inside the repository.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
RUNNABLE = {"bash", "sh", "shell", "console", "python", "py"}
KINDS = {"run", "skip", "file", "shared", "background"}
FENCE = re.compile(r"^(?P<indent>\s*)(?P<fence>`{3,}|~{3,})(?P<info>.*)$")
MARK = re.compile(r"^\s*<!--\s*doctest:\s*(?P<kind>\S+)\s*(?P<arg>.*?)\s*-->\s*$")
LINK = re.compile(r"!?\[[^\]]*\]\((?P<target><[^>]*>|[^)\s]+)(?:\s+\"[^\"]*\")?\)")
BLOCK_TIMEOUT_S = 300


@dataclass
class Block:
    page: Path
    line: int  # 1-based line of the opening fence
    lang: str
    text: str
    kind: str | None  # the mark's kind, None when unmarked
    arg: str

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def parse(page: Path) -> tuple[list[Block], list[str]]:
    """The fenced blocks of a page, and every marking problem found (unmarked, unknown mark, no language)."""
    lines = page.read_text().splitlines()
    blocks, problems, i = [], [], 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, fence, info = m["indent"], m["fence"], m["info"].strip()
        body, j = [], i + 1
        while j < len(lines) and not re.match(rf"^\s*{re.escape(fence[0])}{{{len(fence)},}}\s*$", lines[j]):
            body.append(lines[j][len(indent):] if lines[j].startswith(indent) else lines[j].lstrip())
            j += 1
        lang = info.split()[0].lower() if info else ""
        mark = MARK.match(lines[i - 1]) if i > 0 else None
        block = Block(page, i + 1, lang, "\n".join(body) + "\n", mark["kind"] if mark else None,
                      mark["arg"] if mark else "")
        where = block.where
        if not lang:
            problems.append(f"{where}: the fence has no language; use e.g. ```bash, ```python, or ```text")
        if block.kind is None and lang in RUNNABLE:
            problems.append(f"{where}: unmarked ```{lang} block; put `<!-- doctest: run -->` or "
                            "`<!-- doctest: skip REASON -->` on the line right before the fence")
        if block.kind is not None and block.kind not in KINDS:
            problems.append(f"{where}: unknown mark `doctest: {block.kind}` (one of {sorted(KINDS)})")
        if block.kind in ("skip", "file") and not block.arg:
            problems.append(f"{where}: `doctest: {block.kind}` needs "
                            + ("a reason" if block.kind == "skip" else "a file name"))
        if block.kind in ("run", "shared", "background") and lang not in RUNNABLE:
            problems.append(f"{where}: `doctest: {block.kind}` on a ```{lang} block (only shell or python runs)")
        problems += _json_problems(block)
        blocks.append(block)
        i = j + 1
    return blocks, problems


def _json_problems(block: Block) -> list[str]:
    if block.lang == "json":
        try:
            json.loads(block.text)
        except json.JSONDecodeError as exc:
            return [f"{block.where}: ```json block does not parse: {exc}"]
    if block.lang == "jsonl":
        out = []
        for k, line in enumerate(block.text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                if not isinstance(json.loads(line), dict):
                    raise json.JSONDecodeError("not an object", line, 0)
            except json.JSONDecodeError as exc:
                out.append(f"{block.where}: ```jsonl line {k} is not one JSON object: {exc}: {line!r}")
        return out
    return []


def all_blocks() -> list[Block]:
    return [b for page in PAGES for b in parse(page)[0]]


def test_every_block_is_marked_and_well_formed():
    problems = [p for page in PAGES for p in parse(page)[1]]
    assert not problems, "docs blocks to fix:\n" + "\n".join(problems)


def test_relative_links_point_inside_the_repository():
    bad = []
    for page in PAGES:
        for n, line in enumerate(page.read_text().splitlines(), start=1):
            where = f"{page.relative_to(ROOT)}:{n}"
            if "../shared/" in line:
                bad.append(f"{where}: mentions ../shared/, which users do not have")
            for m in LINK.finditer(line):
                target = m["target"].strip("<>").split("#")[0]
                if not target or re.match(r"^[a-z][a-z0-9+.-]*:", target):  # anchors, https:, mailto:
                    continue
                path = (page.parent / target).resolve()
                if target.startswith("/") or not path.is_relative_to(ROOT):
                    bad.append(f"{where}: `{target}` points outside the repository")
                elif not path.exists():
                    bad.append(f"{where}: `{target}` does not exist ({path})")
                elif ".git" in path.relative_to(ROOT).parts or path.relative_to(ROOT).parts[:1] == ("shared",):
                    bad.append(f"{where}: `{target}` is not part of what users get")
    assert not bad, "links to fix:\n" + "\n".join(bad)


# ----------------------------------------------------------------------------- running


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "VLMBED_API_KEY"}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               PYTHONUNBUFFERED="1", NO_COLOR="1", COLUMNS="120")
    return env


def _command(block: Block, scripts: Path) -> list[str]:
    script = scripts / f"{block.page.stem}-{block.line}.{'py' if block.lang in ('python', 'py') else 'sh'}"
    if block.lang in ("python", "py"):
        script.write_text(block.text)
        return [sys.executable, str(script)]
    script.write_text("set -eo pipefail\n" + block.text)
    return ["bash", str(script)]


# pyarrow's parquet thread pool can abort the interpreter at exit, after the script finished
# (apache/arrow#34314, flaky, seen under load): one rerun of a Python block that died exactly so
TEARDOWN_ABORT = "terminate called without an active exception"


def _run(block: Block, cwd: Path, scripts: Path) -> None:
    t0 = time.monotonic()
    for attempt in range(2):
        try:
            proc = subprocess.run(_command(block, scripts), cwd=cwd, env=_env(), capture_output=True, text=True,
                                  timeout=BLOCK_TIMEOUT_S)
        except subprocess.TimeoutExpired as exc:
            pytest.fail(f"{block.where}: the block ran over {BLOCK_TIMEOUT_S} s\n{block.text}\n{exc.stderr or ''}")
        aborted = proc.returncode == -6 and proc.stderr.strip().endswith(TEARDOWN_ABORT)
        if not (aborted and attempt == 0 and block.lang in ("python", "py")):
            break
    if proc.returncode != 0:
        pytest.fail(f"{block.where}: the ```{block.lang} block exited {proc.returncode} "
                    f"after {time.monotonic() - t0:.0f} s (folder {cwd})\n--- block\n{block.text}"
                    f"--- stdout (tail)\n{proc.stdout[-3000:]}\n--- stderr (tail)\n{proc.stderr[-5000:]}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_background(block: Block, cwd: Path, scripts: Path) -> subprocess.Popen:
    """Start a server block in its own process group and wait until its /health answers."""
    port = re.search(r"--port\s+(\d+)", block.text)
    assert port, f"{block.where}: a `doctest: background` block must say `--port N`"
    log = (scripts / f"{block.page.stem}-{block.line}.log").open("w")
    proc = subprocess.Popen(_command(block, scripts), cwd=cwd, env=_env(), stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"{block.where}: the server exited {proc.returncode}\n{block.text}\n"
                        f"{Path(log.name).read_text()[-5000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port[1]}/health", timeout=2) as r:
                if r.status == 200:
                    return proc
        except OSError:
            time.sleep(0.5)
    _stop(proc)
    pytest.fail(f"{block.where}: no answer on port {port[1]} after 180 s\n{Path(log.name).read_text()[-5000:]}")


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, 15)  # the process group this test started (start_new_session)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait()


def _sample_images(folder: Path) -> None:
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    (folder / "imgs").mkdir(parents=True, exist_ok=True)
    for d in range(10):
        pixels = (digits.images[list(digits.target).index(d)] * (255 / 16)).astype("uint8")
        Image.fromarray(pixels).convert("RGB").resize((32, 32), Image.NEAREST).save(folder / "imgs" / f"{d}.png")


def _write_file(block: Block, cwd: Path) -> None:
    path = cwd / block.arg
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(block.text)


@pytest.fixture(scope="session")
def shared_folder(tmp_path_factory) -> Path:
    """Run every `doctest: shared` block once (the quickstart); pages start from a copy of its folder."""
    folder = tmp_path_factory.mktemp("docs-shared")
    scripts = tmp_path_factory.mktemp("docs-scripts")
    _sample_images(folder)
    for block in all_blocks():
        if block.kind == "file" and block.page == ROOT / "docs" / "quickstart.md":
            _write_file(block, folder)
        if block.kind == "shared":
            _run(block, folder, scripts)
    return folder


RUN_PAGES = [p for p in PAGES if any(b.kind in ("run", "file", "background") for b in parse(p)[0])]


@pytest.mark.parametrize("page", RUN_PAGES, ids=[str(p.relative_to(ROOT)) for p in RUN_PAGES])
def test_page_runs(page, shared_folder, tmp_path):
    blocks, problems = parse(page)
    assert not problems, "\n".join(problems)
    cwd, scripts = tmp_path / "page", tmp_path / "scripts"
    shutil.copytree(shared_folder, cwd, ignore=shutil.ignore_patterns("checkpoints"))
    scripts.mkdir()
    if any(b.kind == "background" for b in blocks):
        port = str(_free_port())
        for b in blocks:
            b.text = re.sub(r"(?<=[:\s])8000\b", port, b.text)
    servers = []
    try:
        for block in blocks:
            if block.kind == "file":
                _write_file(block, cwd)
            elif block.kind == "run":
                _run(block, cwd, scripts)
            elif block.kind == "background":
                servers.append(_start_background(block, cwd, scripts))
    finally:
        for proc in servers:
            _stop(proc)


SKIPPED = [b for b in all_blocks() if b.kind == "skip"]


@pytest.mark.parametrize("block", SKIPPED, ids=[b.where for b in SKIPPED])
def test_skipped_block(block):
    pytest.skip(f"{block.where}: {block.arg}")
