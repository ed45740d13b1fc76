"""The shell examples of the README and the guides, and the answers they document.

Conventions (the contributor's side is in ``docs/development.md``, "Examples are tested"):

- A fenced block tagged ``sh``, ``bash``, ``shell`` or ``console`` is an example: the
  tests run it. Output shown to the reader goes in a ``text`` block, never run.
- ``# → <answer>`` on its own line documents the answer of the command before it
  (the last ``curl`` or ``eventfold`` above the comment):
  ``# → 202 {"id": "o1", "consistency_token": "ct1.…"}  ETag: "2"``: the HTTP status,
  then a pattern the JSON body must match, then headers. In a pattern, ``…`` (or
  ``...``) stands for anything: a value, further items of a list, part of a string;
  ``{"id", "name"}`` only asks for those keys; an object may always have more keys
  than it names. ``# → exit 1`` documents an exit status other than 0; a pattern
  alone (``# → {"status": "ok"}``) checks the JSON a command printed (``--json``).
  The comment may go on over the next lines that start with ``#`` and 3 spaces.
- A command without such a comment must still succeed: ``curl`` with a status below
  400, ``eventfold`` with exit status 0 (blocks run under ``set -euo pipefail``).
- ``<!-- not-run: REASON why -->`` on the line before a block marks one the tests
  cannot run; REASON is one of :data:`SKIP_REASONS`, and the block must contain what
  that reason names (e.g. ``docker`` for ``docker``). Nothing else may be skipped.
- Examples talk to ``localhost:8080`` (or ``127.0.0.1:8080``) and use the tenant
  ``acme``: the runner points them at its own server and gives each page a fresh
  tenant in place of ``acme``. ``.venv/bin/eventfold`` and ``eventfold`` are the same
  command. A page's blocks run in order and share exported variables, as in one
  terminal.

:func:`blocks` finds the blocks of a file, :func:`expectations` what one documents,
:func:`check` compares a recorded answer with it. ``tests/integration/
test_doc_examples.py`` runs them; ``tests/unit/test_doc_conventions.py`` checks the
conventions.
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
#: Fence languages whose blocks are run.
RUN_LANGS = frozenset({"sh", "bash", "shell", "console"})
#: Why a block may be left out, and what the block must then contain.
SKIP_REASONS: dict[str, re.Pattern[str]] = {
    # Starts or stops the local stack, or the whole system in the foreground.
    "stack": re.compile(r"\bmake (run|test|infra|infra-down)\b|\beventfold (run|infra)\b"),
    "docker": re.compile(r"\bdocker\b"),
    # Addresses of other machines: several hosts, your own services.
    "machines": re.compile(r"\b[a-z0-9-]+\.(internal|example\.com)\b|\bkafka-\d\b"),
    # Opens a browser.
    "browser": re.compile(r"\bxdg-open\b|\bopen http"),
    # Rebuilds or checks every tenant of a deployment (other people's, on a shared stack).
    "all-tenants": re.compile(r"\beventfold (replay|verify)\b(?![^\n]*--tenant)"),
    # Long benchmark runs (minutes on a full machine).
    "benchmark": re.compile(r"\bmake (bench|soak)\b|\bbenchmarks\."),
}
#: At most this share of a document's example blocks may be marked not-run.
MAX_SKIPPED_SHARE = 0.5
_FENCE = re.compile(r"^(?P<indent>\s*)(?P<fence>`{3,}|~{3,})\s*(?P<info>[^`\s]*)(?P<rest>[^`]*)$")
_TITLE = re.compile(r'title="(?P<title>[^"]+)"')
_SKIP = re.compile(r"^\s*<!--\s*not-run:\s*(?P<reason>[a-z-]+)(?P<why>[^>]*)-->\s*$")
_ARROW = re.compile(r"^\s*#\s*→\s?(?P<spec>.*)$")
_MORE = re.compile(r"^\s*#\s{3,}(?P<spec>\S.*)$")
#: A tracked command word: curl, or the eventfold CLI.
_COMMAND = re.compile(r"(?<![\w/.$-])(?:\.venv/bin/)?(?P<cmd>curl|eventfold)(?=\s)")


@dataclass(frozen=True, slots=True)
class Block:
    """One fenced code block of a Markdown file."""

    path: Path
    line: int  # 1-based line of the opening fence
    lang: str
    code: str
    #: The reason word of a ``not-run`` marker, and its explanation.
    skip: str | None = None
    skip_why: str = ""
    #: ``title="receiver.py"``: the file a reader saves the block as (the runner too).
    title: str | None = None

    @property
    def runnable(self) -> bool:
        """A shell example (run unless marked not-run)."""
        return self.lang in RUN_LANGS

    def where(self) -> str:
        """``path:line`` for messages."""
        try:
            rel = self.path.relative_to(REPO)
        except ValueError:
            rel = self.path
        return f"{rel}:{self.line}"


def blocks(path: Path, text: str | None = None) -> list[Block]:
    """Every fenced block of the Markdown file ``path``, in order."""
    lines = (path.read_text() if text is None else text).splitlines()
    out: list[Block] = []
    i = 0
    while i < len(lines):
        opening = _FENCE.match(lines[i])
        if not opening:
            i += 1
            continue
        fence, indent = opening.group("fence"), len(opening.group("indent"))
        lang = opening.group("info").strip("{}.").lower()
        body: list[str] = []
        j = i + 1
        while j < len(lines) and not re.match(rf"^\s*{re.escape(fence)}\s*$", lines[j]):
            line = lines[j]
            body.append(line[min(indent, len(line) - len(line.lstrip(" "))) :])
            j += 1
        marker = _previous_marker(lines, i)
        title = _TITLE.search(opening.group("rest"))
        out.append(
            Block(
                path=path,
                line=i + 1,
                lang=lang,
                code="\n".join(body) + "\n",
                skip=marker.group("reason") if marker else None,
                skip_why=marker.group("why").strip() if marker else "",
                title=title.group("title") if title else None,
            )
        )
        i = j + 1
    return out


def _previous_marker(lines: list[str], i: int) -> re.Match[str] | None:
    """The ``not-run`` marker on the last non-blank line before line ``i``, if any."""
    k = i - 1
    while k >= 0 and not lines[k].strip():
        k -= 1
    return _SKIP.match(lines[k]) if k >= 0 else None


def documents() -> list[Path]:
    """The Markdown files whose examples are run: the README and every page of docs/."""
    return [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]


# -- what a block documents ------------------------------------------------------------


class PatternError(ValueError):
    """A ``# →`` comment the runner cannot read."""


class _Any:
    """``…`` in a pattern: any value."""

    def __repr__(self) -> str:
        return "…"


ANY = _Any()


@dataclass(frozen=True, slots=True)
class KeysOnly:
    """``{"a", "b": 1}``: an object that has these keys (values checked where given)."""

    members: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Expectation:
    """What one ``# →`` comment documents for the command it follows."""

    call: int  # 1-based index of the tracked command in its block
    line: int  # line of the comment within the block (1-based)
    status: int | None = None
    exit: int = 0
    body: Any = None
    has_body: bool = False
    headers: dict[str, str] = field(default_factory=dict)


def calls(code: str) -> list[int]:
    """The block-relative line (1-based) of each tracked command, in order."""
    found = []
    for number, line in enumerate(code.splitlines(), 1):
        if line.lstrip().startswith("#"):
            continue
        found += [number] * len(_COMMAND.findall(line))
    return found


def expectations(code: str) -> list[Expectation]:
    """Every ``# →`` comment of a block, bound to the command before it."""
    lines = code.splitlines()
    positions = calls(code)
    out = []
    i = 0
    while i < len(lines):
        arrow = _ARROW.match(lines[i])
        if not arrow:
            i += 1
            continue
        spec = arrow.group("spec")
        j = i + 1
        while j < len(lines) and _MORE.match(lines[j]):
            spec += " " + _MORE.match(lines[j]).group("spec")  # type: ignore[union-attr]
            j += 1
        before = [p for p in positions if p <= i]
        if not before:
            raise PatternError(f"line {i + 1}: '# →' before any curl or eventfold command")
        out.append(parse_spec(spec, call=len(before), line=i + 1))
        i = j
    return out


def parse_spec(spec: str, *, call: int = 1, line: int = 1) -> Expectation:
    """One answer: ``[STATUS] [PATTERN] [Header: value ...] [(a note)]`` or ``exit N``."""
    text = spec.strip()
    exit_match = re.fullmatch(r"exit (\d+)(\s+\(.*\))?", text)
    if exit_match:
        return Expectation(call=call, line=line, exit=int(exit_match.group(1)))
    status = None
    status_match = re.match(r"(\d{3})\b\s*", text)
    if status_match:
        status, text = int(status_match.group(1)), text[status_match.end() :]
    body: Any = None
    has_body = False
    if text[:1] in ("{", "[", '"'):
        parser = _Parser(text)
        body, has_body = parser.value(), True
        text = text[parser.pos :].strip()
    headers: dict[str, str] = {}
    while text:
        note = re.fullmatch(r"\(.*\)", text)
        if note:
            break
        header = re.match(r"([A-Za-z][A-Za-z0-9-]*):\s*(\S+)\s*", text)
        if not header:
            raise PatternError(f"cannot read {text!r} in '# → {spec}'")
        headers[header.group(1).lower()] = header.group(2)
        text = text[header.end() :]
    if status is None and not has_body and not headers:
        raise PatternError(f"'# → {spec}' names no status, pattern or header")
    return Expectation(call, line, status, 0, body, has_body, headers)


class _Parser:
    """A JSON reader that also takes ``…``/``...`` and key-only object members."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def error(self, what: str) -> PatternError:
        return PatternError(f"{what} at {self.pos} in {self.text!r}")

    def skip(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos].isspace():
            self.pos += 1

    def ellipsis(self) -> bool:
        self.skip()
        for token in ("...", "…"):
            if self.text.startswith(token, self.pos):
                self.pos += len(token)
                return True
        return False

    def value(self) -> Any:
        if self.ellipsis():
            return ANY
        self.skip()
        char = self.text[self.pos : self.pos + 1]
        if char == "{":
            return self.object()
        if char == "[":
            return self.array()
        decoder = json.JSONDecoder()
        try:
            value, end = decoder.raw_decode(self.text, self.pos)
        except json.JSONDecodeError:
            raise self.error("expected a JSON value") from None
        self.pos = end
        return value

    def object(self) -> Any:
        self.pos += 1
        members: dict[str, Any] = {}
        while True:
            self.skip()
            if self.text.startswith("}", self.pos):
                self.pos += 1
                return KeysOnly(members)
            if not self.ellipsis():
                key = self.value()
                if not isinstance(key, str):
                    raise self.error("expected a key")
                self.skip()
                if self.text.startswith(":", self.pos):
                    self.pos += 1
                    members[key] = self.value()
                else:
                    members[key] = ANY
            self.skip()
            if self.text.startswith(",", self.pos):
                self.pos += 1
            elif not self.text.startswith("}", self.pos):
                raise self.error("expected , or }")

    def array(self) -> Any:
        self.pos += 1
        items: list[Any] = []
        while True:
            self.skip()
            if self.text.startswith("]", self.pos):
                self.pos += 1
                return items
            items.append(self.value())
            self.skip()
            if self.text.startswith(",", self.pos):
                self.pos += 1
            elif not self.text.startswith("]", self.pos):
                raise self.error("expected , or ]")


# -- checking an answer ---------------------------------------------------------------


def matches(pattern: Any, actual: Any, path: str = "") -> list[str]:
    """Where ``actual`` differs from ``pattern`` (empty when it matches)."""
    if pattern is ANY:
        return []
    if isinstance(pattern, KeysOnly):
        if not isinstance(actual, dict):
            return [f"{path or '/'}: expected an object, got {_short(actual)}"]
        problems = []
        for key, sub in pattern.members.items():
            if key not in actual:
                problems.append(f"{path}/{key}: missing")
            else:
                problems += matches(sub, actual[key], f"{path}/{key}")
        return problems
    if isinstance(pattern, list):
        if not isinstance(actual, list):
            return [f"{path or '/'}: expected a list, got {_short(actual)}"]
        open_ended = bool(pattern) and pattern[-1] is ANY
        fixed = pattern[:-1] if open_ended else pattern
        if len(actual) < len(fixed) or (not open_ended and len(actual) != len(fixed)):
            return [f"{path or '/'}: expected {len(fixed)} item(s), got {len(actual)}"]
        problems = []
        for index, sub in enumerate(fixed):
            problems += matches(sub, actual[index], f"{path}/{index}")
        return problems
    if isinstance(pattern, str) and ("…" in pattern or "..." in pattern):
        glob = pattern.replace("...", "…").replace("[", "[[]").replace("…", "*")
        if isinstance(actual, str) and fnmatch.fnmatchcase(actual, glob):
            return []
        return [f"{path or '/'}: expected {pattern!r}, got {_short(actual)}"]
    numbers = (
        isinstance(pattern, float | int)
        and isinstance(actual, float | int)
        and isinstance(pattern, bool) == isinstance(actual, bool)
    )
    if pattern != actual or (type(pattern) is not type(actual) and not numbers):
        return [f"{path or '/'}: expected {pattern!r}, got {_short(actual)}"]
    return []


def _short(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, bytes) else repr(value)
    return text if len(text) <= 200 else text[:200] + "…"


@dataclass(frozen=True, slots=True)
class Answer:
    """What one tracked command did, as the runner recorded it."""

    command: str  # "curl" or "eventfold"
    exit: int
    status: int | None  # curl's HTTP status
    headers: dict[str, str]  # lower-case names
    body: bytes  # curl's body, or the command's stdout


def check(expected: Expectation | None, answer: Answer) -> list[str]:
    """Where ``answer`` differs from what the block documents (empty when it agrees)."""
    problems = []
    want_exit = expected.exit if expected else 0
    if answer.exit != want_exit:
        problems.append(f"exit status {answer.exit}, documented {want_exit}")
    if answer.command == "curl":
        if expected is not None and expected.status is not None:
            if answer.status != expected.status:
                problems.append(f"HTTP {answer.status}, documented {expected.status}")
        elif answer.status is not None and answer.status >= 400:
            problems.append(f"HTTP {answer.status} and no '# →' documenting it")
    if expected is not None and expected.has_body:
        problems += _check_body(expected.body, answer.body)
    for name, value in (expected.headers if expected else {}).items():
        got = answer.headers.get(name)
        if got is None:
            problems.append(f"header {name} missing")
        else:
            problems += [f"header {name}: {p}" for p in matches(value, got)]
    return problems


def _check_body(pattern: Any, body: bytes) -> list[str]:
    text = body.decode(errors="replace")
    try:
        doc = json.loads(text)
    except ValueError:
        if isinstance(pattern, str):  # a text answer: it must contain the pattern
            glob = "*" + pattern.replace("...", "…").replace("[", "[[]").replace("…", "*") + "*"
            if fnmatch.fnmatchcase(text, glob):
                return []
            return [f"body does not contain {pattern!r}: {text[:300]!r}"]
        return [f"body is not JSON: {text[:300]!r}"]
    return [f"body {p}" for p in matches(pattern, doc)]


# -- running ------------------------------------------------------------------------------

#: The bash functions that record each tracked command's answer in ``$EF_CALLS``. The
#: counter lives in a file: commands inside ``$(...)`` run in subshells.
PRELUDE = r"""
set -euo pipefail
set -a
__ef_next() {
  local n; n=$(( $(cat "$EF_CALLS/n" 2>/dev/null || echo 0) + 1 )); echo "$n" > "$EF_CALLS/n"
  echo "$n"
}
__ef_done() {  # index, exit status: 0 when it is the documented one
  echo "$2" > "$EF_CALLS/$1.exit"
  local want=0; [ -f "$EF_CALLS/$1.want" ] && want=$(cat "$EF_CALLS/$1.want")
  [ "$2" = "$want" ] && return 0 || return "$2"
}
curl() {
  local n rc=0 a cut=0; n=$(__ef_next)
  for a in "$@"; do case "$a" in -m|--max-time|-m*) cut=1;; esac; done
  command curl -sS -D "$EF_CALLS/$n.headers" -o "$EF_CALLS/$n.body" -w '%{http_code}' "$@" \
    > "$EF_CALLS/$n.status" || rc=$?
  [ "$rc" = 28 ] && [ "$cut" = 1 ] && rc=0  # --max-time: the documented way to end a stream
  cat "$EF_CALLS/$n.body" 2>/dev/null || true
  __ef_done "$n" "$rc"
}
eventfold() {
  local n rc=0; n=$(__ef_next)
  command eventfold "$@" > "$EF_CALLS/$n.body" || rc=$?
  cat "$EF_CALLS/$n.body"
  __ef_done "$n" "$rc"
}
"""


def prepare(code: str, *, port: int, tenant: str) -> str:
    """The block as the runner runs it: its server, its tenant, one ``eventfold``."""
    code = re.sub(r"\b(localhost|127\.0\.0\.1):8080\b", f"127.0.0.1:{port}", code)
    code = re.sub(r"\bacme\b", tenant, code)
    return re.sub(r"(?<![\w/.-])\.venv/bin/eventfold\b", "eventfold", code)


def read_answer(calls_dir: Path, index: int, command: str) -> Answer:
    """The answer the prelude recorded for tracked command ``index``."""
    exit_file = calls_dir / f"{index}.exit"
    status_file = calls_dir / f"{index}.status"
    status_text = status_file.read_text().strip() if status_file.exists() else ""
    headers: dict[str, str] = {}
    header_file = calls_dir / f"{index}.headers"
    if header_file.exists():
        for raw in header_file.read_text(errors="replace").splitlines():
            name, sep, value = raw.partition(":")
            if sep and not name.startswith("HTTP/"):
                headers[name.strip().lower()] = value.strip()
    body_file = calls_dir / f"{index}.body"
    return Answer(
        command=command,
        exit=int(exit_file.read_text()) if exit_file.exists() else -1,
        status=int(status_text) if status_text.isdigit() and status_text != "000" else None,
        headers=headers,
        body=body_file.read_bytes() if body_file.exists() else b"",
    )


def commands_of(code: str) -> list[str]:
    """The tracked command words of a block, in order (``curl`` or ``eventfold``)."""
    found = []
    for line in code.splitlines():
        if not line.lstrip().startswith("#"):
            found += [m.group("cmd") for m in _COMMAND.finditer(line)]
    return found


@dataclass(frozen=True, slots=True)
class Outcome:
    """How one block ran: its failures (empty when it did what the page says)."""

    block: Block
    failures: list[str]
    output: str


def run_block(
    block: Block,
    *,
    env: dict[str, str],
    port: int,
    tenant: str,
    workdir: Path,
    timeout: float = 120.0,
) -> Outcome:
    """Run one example in bash and check its answers.

    It runs in ``workdir``, the page's scratch folder, which links ``.venv`` to the
    checkout's and holds the page's titled blocks (:func:`save_files`), its shell
    state (exported variables carry over from block to block) and the recorded
    answers. Whatever the block leaves running in the background is ended after it.
    """
    import os
    import shutil
    import signal
    import subprocess

    code = prepare(block.code, port=port, tenant=tenant)
    try:
        wanted = expectations(code)
    except PatternError as exc:
        return Outcome(block, [str(exc)], "")
    venv = workdir / ".venv"
    if not venv.exists():
        venv.symlink_to(REPO / ".venv")
    calls_dir = workdir / f".calls-{block.line}"
    shutil.rmtree(calls_dir, ignore_errors=True)
    calls_dir.mkdir(parents=True)
    for expected in wanted:
        if expected.exit:
            (calls_dir / f"{expected.call}.want").write_text(str(expected.exit))
    state = workdir / ".state.sh"
    script = workdir / f".block-{block.line}.sh"
    script.write_text(
        PRELUDE
        + f'[ -f "{state}" ] && . "{state}"\n'
        + f"EF_CALLS={calls_dir}\n"
        + code
        + f'\nexport -p > "{state}.new" && mv "{state}.new" "{state}"\n'
    )
    # Output to a file, not a pipe: a job the block leaves in the background (a
    # receiver) would hold a pipe open after the block ended, and the block would seem
    # to hang; the file also keeps what a block printed before it timed out.
    log = workdir / f".block-{block.line}.out"
    with log.open("w") as out:
        proc = subprocess.Popen(
            ["bash", str(script)],
            cwd=workdir,
            env={**env, "EF_CALLS": str(calls_dir)},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            output = log.read_text(errors="replace")[-4000:]
            return Outcome(block, [f"did not finish within {timeout:.0f} s"], output)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)  # a receiver it started in the background
    output = log.read_text(errors="replace")
    output = output[-4000:]
    failures = []
    if proc.returncode != 0:
        failures.append(f"the block exited with status {proc.returncode}")
    commands = commands_of(code)
    count_file = calls_dir / "n"
    ran = int(count_file.read_text()) if count_file.exists() else 0
    if ran != len(commands) and proc.returncode == 0:
        failures.append(
            f"{ran} tracked command(s) ran, the text has {len(commands)}: no loops or "
            "conditionals around curl/eventfold in examples"
        )
    by_call = {e.call: e for e in wanted}
    for index, command in enumerate(commands[:ran], 1):
        answer = read_answer(calls_dir, index, command)
        problems = check(by_call.get(index), answer)
        failures += [f"command {index} ({command}): {p}" for p in problems]
    return Outcome(block, failures, output)


def save_files(page_blocks: list[Block], workdir: Path, *, port: int, tenant: str) -> None:
    """Write the page's titled blocks (``title="receiver.py"``) into ``workdir``."""
    for block in page_blocks:
        if block.title:
            target = workdir / block.title
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(prepare(block.code, port=port, tenant=tenant))
