"""LitServe serving breastdx's pipeline (``common.Work``): ``python litserve_app.py PORT``.

``POST /predict`` with a multipart ``file`` part; ``BENCH_PARALLEL`` inference worker processes
(LitServe's ``workers_per_device``), no LitServe batching (``max_batch_size=1``, its default).
No ``from __future__ import annotations`` here: LitServe reads ``decode_request``'s annotation
as a class to decide that the request is a form.
"""

import sys
from typing import Any

import litserve as ls
from common import PARALLEL, Work
from fastapi import HTTPException, Request


class AnalysisAPI(ls.LitAPI):
    def setup(self, device: str) -> None:
        self.work = Work()

    def decode_request(self, request: Request) -> bytes:  # the parsed multipart form
        upload = request["file"]  # type: ignore[index]
        return bytes(upload.file.read())

    def predict(self, data: bytes) -> dict[str, Any]:
        status, body = self.work.analyse(data)
        if status != 200:
            raise HTTPException(status_code=status, detail=body)
        return body

    def encode_response(self, output: dict[str, Any]) -> dict[str, Any]:
        return output


if __name__ == "__main__":
    server = ls.LitServer(AnalysisAPI(), accelerator="cpu", workers_per_device=PARALLEL)
    server.run(
        host="127.0.0.1", port=int(sys.argv[1]), generate_client_file=False, log_level="warning"
    )
