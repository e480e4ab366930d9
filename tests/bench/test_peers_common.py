"""``bench/peers/common.py``, the work every serving peer does per request, in the project's own
environment: the peers' smoke test (``test_bench_peers.py``) needs the bench environment and is
skipped without it, so a change to breastdx's code that breaks the peers' shared work must fail
here."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.service import jobs_support as js


@pytest.mark.parametrize("stage", ["ultrasound", "histopathology"])
def test_the_peers_work_answers_what_breastdx_answers(
    stage: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BREASTDX_MODEL_STORE", str(js.build_store(tmp_path)))
    from bench.peers.common import Work

    image = js.ultrasound_png(1) if stage == "ultrasound" else js.he_patch(1)
    status, body = Work(stage).analyse(image)
    assert status == 200 and body["state"] == "succeeded", body
    assert body["result"][0]["stage"] == stage and body["stored_bytes"] > 0
    status, body = Work(stage).analyse(b"not an image")
    assert status == 415 and body["state"] == "failed"
