"""The read API's process stays lean: building it loads no Kafka client."""

from __future__ import annotations

import subprocess
import sys

_PROGRAM = """
import sys
from eventfold.bootstrap import Parts, create_app
from eventfold.settings import Settings

create_app(Settings.from_env(), Parts(api=True, ingest=False, processors=()))
loaded = sorted(m for m in sys.modules if m.split(".")[0] == "aiokafka")
print(",".join(loaded))
"""


def test_the_api_process_does_not_import_aiokafka() -> None:
    # A fresh interpreter: this test session has imported aiokafka long ago.
    out = subprocess.run(
        [sys.executable, "-c", _PROGRAM], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "", f"aiokafka modules in the API process: {out.stdout}"
