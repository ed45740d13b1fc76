"""The read API's process stays lean: building it loads no Kafka client and no fold."""

from __future__ import annotations

import subprocess
import sys

# What `eventfold serve api` does before serving: the CLI's parser (every
# subcommand's options, the operators' replay among them), then the app.
_PROGRAM = """
import sys
from entrypoints.bootstrap import Parts, create_app
from entrypoints.cli import parser
from eventfold.settings import Settings

parser().parse_args(["serve", "api"])
create_app(Settings.from_env(), Parts(api=True, ingest=False, processors=()))
heavy = (
    "aiokafka", "faust", "eventfold.projection", "consumers.projector", "consumers.rebuild.rebuild"
)
loaded = sorted(m for m in sys.modules if any(m == h or m.startswith(h + ".") for h in heavy))
print(",".join(loaded))
"""


def test_the_api_process_does_not_import_aiokafka_or_the_fold() -> None:
    # A fresh interpreter: this test session has imported aiokafka long ago.
    out = subprocess.run(
        [sys.executable, "-c", _PROGRAM], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "", f"modules the API does not need were loaded: {out.stdout}"
