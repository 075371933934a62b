"""Docker HEALTHCHECK of the collector image: exit 0 while GET /healthz answers 200, else 1.

The port is the collector's own setting (ECOFLOW_COLLECTOR_COLLECTOR__HEALTHZ_PORT, 8080 in the
image); the JSON body (why it is unhealthy) is printed, so `docker inspect` shows it.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request


def main() -> int:
    port = os.environ.get("ECOFLOW_COLLECTOR_COLLECTOR__HEALTHZ_PORT") or "8080"
    url = f"http://127.0.0.1:{port}/healthz"
    try:
        with urllib.request.urlopen(url, timeout=5) as answer:
            print(answer.read().decode("utf-8", "replace"))
            return 0
    except urllib.error.HTTPError as exc:
        print(f"{url}: {exc.code} {exc.read().decode('utf-8', 'replace')}")
    except OSError as exc:
        print(f"{url}: {exc}")
    return 1


if __name__ == "__main__":
    sys.exit(main())
