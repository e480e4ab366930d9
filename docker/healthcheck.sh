#!/bin/sh
# Container health checks for the breastdx images, installed as /usr/local/bin/breastdx-healthcheck.
#   breastdx-healthcheck http        GET http://127.0.0.1:$BREASTDX_HEALTHCHECK_PORT/healthz (8000)
#   breastdx-healthcheck worker      Redis answers and an RQ worker of this container is registered
#   breastdx-healthcheck dicom-echo  C-ECHO (Verification, PS3.4 annex A.4) to our AE title on
#                                    127.0.0.1:$BREASTDX_DICOM_PORT (11112); an association
#                                    rejected by the calling-AE whitelist also proves the listener
#                                    answers, so HEALTHCHECK need not be whitelisted
# Exit 0 when healthy, 1 with a one-line reason otherwise (Docker keeps it in `docker inspect`).
# Written in Python through the image's own interpreter: no curl or redis-cli in the images.
set -eu

case "${1:-}" in
http)
    exec python - <<'PY'
import os, sys, urllib.request

port = os.environ.get("BREASTDX_HEALTHCHECK_PORT", "8000")
try:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=3) as response:
        status = response.status
except OSError as exc:  # URLError and HTTPError are OSErrors
    sys.exit(f"unhealthy: /healthz: {exc}")
sys.exit(0 if status == 200 else f"unhealthy: /healthz answered {status}")
PY
    ;;
worker)
    exec python - <<'PY'
import os, socket, sys

from redis import Redis, RedisError
from rq import Worker

url = os.environ.get("BREASTDX_REDIS_URL")
if not url:
    sys.exit("unhealthy: BREASTDX_REDIS_URL is not set; a queue worker needs Redis")
try:
    connection = Redis.from_url(url, socket_connect_timeout=3, socket_timeout=3)
    connection.ping()
    # RQ registers each worker with its host name and refreshes the key on every heartbeat; the
    # key expires once heartbeats stop, so a hung worker disappears from this list.
    host = socket.gethostname()
    mine = [w for w in Worker.all(connection=connection) if w.hostname == host]
except RedisError as exc:  # the message names host and port, never the password
    sys.exit(f"unhealthy: Redis: {type(exc).__name__}: {exc}")
sys.exit(0 if mine else f"unhealthy: no RQ worker registered from host {host}")
PY
    ;;
dicom-echo)
    exec python - <<'PY'
import os, sys

from pynetdicom import AE

VERIFICATION = "1.2.840.10008.1.1"  # Verification SOP Class
port = int(os.environ.get("BREASTDX_DICOM_PORT", "11112"))
called = os.environ.get("BREASTDX_DICOM_AE_TITLE", "BREASTDX")
ae = AE(ae_title="HEALTHCHECK")
ae.add_requested_context(VERIFICATION)
ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 3
assoc = ae.associate("127.0.0.1", port, ae_title=called)
if assoc.is_rejected:  # A-ASSOCIATE-RJ: the listener's ACSE answered (calling AE not allowed)
    sys.exit(0)
if not assoc.is_established:
    sys.exit(f"unhealthy: no answer to an association request for {called} on port {port}")
status = assoc.send_c_echo()
assoc.release()
code = status.Status if status else None
sys.exit(0 if code == 0x0000 else f"unhealthy: C-ECHO status {code}")
PY
    ;;
*)
    echo "usage: breastdx-healthcheck http|worker|dicom-echo" >&2
    exit 2
    ;;
esac
