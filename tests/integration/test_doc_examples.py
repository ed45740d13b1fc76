"""Every shell example of the README and the documentation runs, and answers as documented.

One real ``eventfold run`` (topics of its own, a free port) serves every page;
each page's blocks run in order in bash, as a reader would paste them, against a
fresh tenant in place of ``acme``. The conventions are in :mod:`docsite.examples`;
``tests/unit/test_doc_conventions.py`` checks that the pages follow them.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from devstack import ensure_topics
from docsite.examples import REPO, Block, blocks, documents, run_block, save_files
from eventfold.settings import Settings
from tests.conftest import _delete_topics, free_port, new_tenant_id, wait_until_ready
from tests.e2e.test_end_to_end import env_for, process

pytestmark = pytest.mark.integration
VENV_BIN = str(Path(sys.executable).parent)


def runnable_pages() -> dict[str, list[Block]]:
    """Page (relative path) → its blocks to run, for the pages that have any."""
    out = {}
    for path in documents():
        found = blocks(path)
        if any(b.runnable and b.skip is None for b in found):
            out[str(path.relative_to(REPO))] = found
    return out


PAGES = runnable_pages()


@pytest.fixture(scope="module")
async def server(stack: Settings) -> AsyncIterator[tuple[int, dict[str, str]]]:
    """``eventfold run`` on a free port, and the environment the examples run with.

    Topics of its own: on the session's, its new consumer groups would first go
    through every event the tests before it wrote (and their webhooks), and a page's
    delivery would wait behind them.
    """
    own = dataclasses.replace(
        stack, events_topic=stack.events_topic + ".docs", dlq_topic=stack.dlq_topic + ".docs"
    )
    await ensure_topics(own)
    port = free_port()
    env = {
        **env_for(own, port),
        # Consumer groups of its own: the e2e tests' processes use env_for's.
        "EVENTFOLD_CONSUMER_GROUP_PREFIX": stack.consumer_group_prefix + ".docs",
        "PATH": VENV_BIN + os.pathsep + os.environ.get("PATH", ""),
        # The webhook guide subscribes a receiver the examples start on this machine.
        "EVENTFOLD_WEBHOOK_ALLOW_HOSTS": "127.0.0.1",
        "EVENTFOLD_WEBHOOK_RETRY_SCHEDULE": "0.2,0.5",
    }
    try:
        with process("run", "--no-token", env=env) as proc:
            async with aiohttp.ClientSession() as http:
                await wait_until_ready(http, f"http://127.0.0.1:{port}", proc)
            yield port, env
    finally:
        await _delete_topics(own, [own.events_topic, own.dlq_topic])


def test_there_are_examples_to_run() -> None:
    # The README's walkthrough at least; an empty list would make the test below vacuous.
    assert any(page.endswith("README.md") for page in PAGES), list(PAGES)
    counts = {page: sum(b.runnable and not b.skip for b in found) for page, found in PAGES.items()}
    assert sum(counts.values()) >= 20, counts


@pytest.mark.parametrize("page", sorted(PAGES))
async def test_the_examples_of_a_page_run_as_documented(
    page: str, server: tuple[int, dict[str, str]], tmp_path: Path
) -> None:
    port, env = server
    tenant = new_tenant_id()
    save_files(PAGES[page], tmp_path, port=port, tenant=tenant)
    for block in [b for b in PAGES[page] if b.runnable and b.skip is None]:
        outcome = run_block(block, env=env, port=port, tenant=tenant, workdir=tmp_path)
        assert not outcome.failures, (
            f"{block.where()}: the example does not do what the page says:\n  "
            + "\n  ".join(outcome.failures)
            + f"\n--- the block (tenant {tenant}) ---\n{block.code}--- its output ---\n"
            + outcome.output
        )
