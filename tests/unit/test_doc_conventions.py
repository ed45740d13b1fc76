"""The README and the documentation follow the example conventions (docsite/examples.py).

``tests/integration/test_doc_examples.py`` runs the examples; these checks make sure
none escapes it: no command outside a runnable block, a not-run marker only with a
known reason that the block bears out and never on most of a page, every documented
answer readable. And the README stays a README.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from docsite.examples import (
    ANY,
    MAX_SKIPPED_SHARE,
    RUN_LANGS,
    SKIP_REASONS,
    Answer,
    Block,
    KeysOnly,
    blocks,
    calls,
    check,
    documents,
    expectations,
    matches,
    parse_spec,
    prepare,
)

REPO = Path(__file__).resolve().parents[2]
#: A curl to the local API: always runnable, never to be marked not-run.
API_CALL = re.compile(r"\bcurl\b[^\n]*\b(localhost|127\.0\.0\.1):8080\b")
DOCUMENTS = documents()
#: A line that is a command a reader would paste: it must be in a runnable block.
COMMAND_LINE = re.compile(
    r"^\s*(\$ )?(curl\s|(\.venv/bin/)?eventfold\s+[a-z]|make\s+[a-z.]|docker(\s+compose)?\s+[a-z])"
)


def test_the_readme_is_short() -> None:
    size = len((REPO / "README.md").read_bytes())
    assert size < 8 * 1024, f"README.md is {size} bytes: move detail into docs/"


def test_the_readme_gives_the_two_commands_and_the_makefile_has_them() -> None:
    # The first sets everything up and runs the system, the second runs the tests.
    section = (REPO / "README.md").read_text().partition("## Two commands")[2]
    section = section.partition("\n## ")[0]
    assert re.search(r"^make run\s+# .*runs Eventfold$", section, re.M), section
    assert re.search(r"^make test\s+# .*the whole test suite$", section, re.M), section
    targets = set(re.findall(r"^([a-z]+):", (REPO / "Makefile").read_text(), re.M))
    assert {"run", "test"} <= targets


def test_the_readme_has_a_checked_walkthrough_and_links_to_the_site() -> None:
    readme = blocks(REPO / "README.md")
    run = [b for b in readme if b.runnable and not b.skip]
    assert len(run) >= 3
    assert sum(len(expectations(b.code)) for b in run) >= 5
    text = (REPO / "README.md").read_text()
    for page in ("docs/getting-started.md", "docs/guides/index.md", "docs/operations/index.md"):
        assert f"]({page})" in text, page


@pytest.mark.parametrize("path", DOCUMENTS, ids=lambda p: str(p.relative_to(REPO)))
def test_commands_are_only_in_runnable_blocks(path: Path) -> None:
    lines = path.read_text().splitlines()
    inside: set[int] = set()
    for block in blocks(path):
        end = block.line + len(block.code.splitlines())
        if block.runnable or block.lang in ("python", "json", "sql", "yaml"):
            inside.update(range(block.line, end + 1))
    for number, line in enumerate(lines, 1):
        if number not in inside and COMMAND_LINE.match(line):
            pytest.fail(
                f"{path.relative_to(REPO)}:{number}: a command outside a sh block "
                f"(it would never be run by the tests): {line.strip()}"
            )


@pytest.mark.parametrize("path", DOCUMENTS, ids=lambda p: str(p.relative_to(REPO)))
def test_not_run_is_used_sparingly_and_with_a_reason_the_block_bears_out(path: Path) -> None:
    found = blocks(path)
    examples = [b for b in found if b.runnable]
    skipped = [b for b in examples if b.skip]
    for block in found:
        if not block.skip:
            continue
        assert block.runnable, f"{block.where()}: not-run marks a block that is never run"
        assert block.skip in SKIP_REASONS, (
            f"{block.where()}: not-run reason {block.skip!r} is none of {sorted(SKIP_REASONS)}"
        )
        commands = "\n".join(
            line for line in block.code.splitlines() if not line.lstrip().startswith("#")
        )
        assert SKIP_REASONS[block.skip].search(commands), (
            f"{block.where()}: marked not-run ({block.skip}) but no command of the block "
            f"does what that reason covers: run it instead"
        )
        assert not API_CALL.search(commands), (
            f"{block.where()}: a call to the API (localhost:8080) can always run: "
            f"move it to a block of its own"
        )
        assert block.skip_why, f"{block.where()}: say what the block does after the reason"
    # A page of things tests cannot do (Docker, the whole stack) may skip them all;
    # a page with a walkthrough runs most of it.
    if len(examples) >= 4:
        assert len(skipped) <= MAX_SKIPPED_SHARE * len(examples), (
            f"{path.relative_to(REPO)}: {len(skipped)} of {len(examples)} examples not run"
        )


def test_few_examples_are_left_out_overall() -> None:
    every = [b for path in DOCUMENTS for b in blocks(path) if b.runnable]
    skipped = [b for b in every if b.skip]
    assert len(every) >= 30
    assert len(skipped) <= 0.25 * len(every), [b.where() for b in skipped]


@pytest.mark.parametrize("path", DOCUMENTS, ids=lambda p: str(p.relative_to(REPO)))
def test_every_documented_answer_is_readable(path: Path) -> None:
    for block in blocks(path):
        if block.runnable and not block.skip:
            expectations(block.code)  # raises PatternError naming the line


def test_fence_languages_are_known() -> None:
    known = RUN_LANGS | {"text", "python", "json", "sql", "yaml"}
    for path in DOCUMENTS:
        for block in blocks(path):
            assert block.lang in known, f"{block.where()}: fence language {block.lang!r}"


# -- the runner's reading of a page --------------------------------------------------


SAMPLE = """\
Intro.

<!-- not-run: docker starts containers -->
```sh
docker compose up -d
```

```sh
export T=$(eventfold token --tenant acme --roles writer)
curl -s localhost:8080/v1/tenants/acme -H "Authorization: Bearer $T"
# → 200 {"id": "acme", "limits": {...}, "created_at": "…"}  ETag: "1"
curl -s -X POST localhost:8080/v1/tenants/acme/events -d '[]'
# → 422 {"errors": [{"path": …}, …]}
#        (an empty batch)
```

```python title="receiver.py"
    indented = True
```
"""


def test_blocks_markers_titles_and_indentation() -> None:
    found = blocks(Path("sample.md"), SAMPLE)
    assert [(b.lang, b.skip, b.title) for b in found] == [
        ("sh", "docker", None),
        ("sh", None, None),
        ("python", None, "receiver.py"),
    ]
    assert found[0].skip_why == "starts containers"
    assert found[2].code == "    indented = True\n"
    assert isinstance(found[1], Block)


def test_each_answer_is_bound_to_the_command_above_it() -> None:
    code = blocks(Path("sample.md"), SAMPLE)[1].code
    assert calls(code) == [1, 2, 4]
    first, second = expectations(code)
    assert (first.call, first.status, first.headers) == (2, 200, {"etag": '"1"'})
    assert first.body == KeysOnly({"id": "acme", "limits": KeysOnly({}), "created_at": "…"})
    assert (second.call, second.status) == (3, 422)


def test_patterns() -> None:
    spec = parse_spec('201 {"id", "key": "efk_…", "items": [{"n": 1}, …]}  (shown once)')
    assert spec.status == 201
    assert matches(spec.body, {"id": "x", "key": "efk_ab_cd", "items": [{"n": 1}, {"n": 2}]}) == []
    assert matches(spec.body, {"key": "efk_x", "items": [{"n": 1}]}) == ["/id: missing"]
    assert matches(spec.body, {"id": 1, "key": "nope", "items": [{"n": 2}]}) == [
        "/key: expected 'efk_…', got \"nope\"",
        "/items/0/n: expected 1, got 2",
    ]
    closed = parse_spec("[1, 2]").body
    assert matches(closed, [1, 2]) == []
    assert matches(closed, [1, 2, 3]) != []
    assert matches(parse_spec("{...}").body, {"a": 1}) == []
    assert matches(ANY, None) == []
    assert matches(True, 1) != []  # a bool is not a number
    assert matches(2, 2.0) == []
    assert parse_spec("exit 1").exit == 1
    with pytest.raises(ValueError, match="names no status"):
        parse_spec("(just a note)")


def test_checking_an_answer() -> None:
    ok = Answer("curl", 0, 202, {"etag": '"2"'}, b'{"id": "o1"}')
    assert check(parse_spec('202 {"id": "o1"}  ETag: "2"'), ok) == []
    assert check(parse_spec("201"), ok) == ["HTTP 202, documented 201"]
    refused = Answer("curl", 0, 404, {}, b"{}")
    assert check(None, refused) == ["HTTP 404 and no '# →' documenting it"]
    stream = Answer("curl", 0, 200, {}, b"id: 1\nevent: record.upserted\ndata: {}\n\n")
    assert check(parse_spec('200 "event: record.…"'), stream) == []
    assert check(parse_spec('200 "event: webhook"'), stream) != []
    failed = Answer("eventfold", 1, None, {}, b"[]")
    assert check(None, failed) == ["exit status 1, documented 0"]
    assert check(parse_spec("exit 1"), failed) == []


def test_examples_are_pointed_at_the_runners_server_and_tenant() -> None:
    code = "curl localhost:8080/v1/tenants/acme/x 127.0.0.1:8080 acme_corp .venv/bin/eventfold run"
    assert prepare(code, port=5555, tenant="t123") == (
        "curl 127.0.0.1:5555/v1/tenants/t123/x 127.0.0.1:5555 acme_corp eventfold run"
    )
