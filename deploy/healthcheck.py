"""Container health check for every Capstan Python role (stdlib only; slim has no curl).

Hits CAPSTAN_HEALTHCHECK_URL, default http://127.0.0.1:$CAPSTAN_PORT/healthz (the API).
Non-API roles serve /healthz beside /metrics on CAPSTAN_METRICS_PORT and set the URL to it.
Exit 0 when the answer is 2xx within the timeout, 1 otherwise (Docker's contract).
"""

import os
import sys
import urllib.request

url = os.environ.get("CAPSTAN_HEALTHCHECK_URL") or (
    f"http://127.0.0.1:{os.environ.get('CAPSTAN_PORT', '8000')}/healthz"
)
timeout = float(os.environ.get("CAPSTAN_HEALTHCHECK_TIMEOUT", "8"))  # under Docker's 10 s
try:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        sys.exit(0 if 200 <= r.status < 300 else 1)
except Exception as exc:
    print(f"unhealthy: {url}: {exc}", file=sys.stderr)
    sys.exit(1)
