"""conveyor's own time in a deploy (target: median ≤ 1 s).

Real deploys of the sample app through the real CLI (registry, podman, proxy, SQLite, git all real).
Per deploy: the total wall time and the part spent on the new container's start and health wait, as the
target measured it and recorded in the ledger's `health` event; conveyor's own time is the difference.
The bench config has no pre-deploy tasks and `drain_seconds: 0`, so nothing else waits on the app.

    .venv/bin/python bench/deploy_overhead.py [--runs N]
"""

from __future__ import annotations

import argparse
import re
import statistics

from sample_app import sample_app


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=10)
    runs = parser.parse_args().runs
    from conveyor.ledger import open_ledger

    with sample_app() as app:
        ledger = open_ledger()
        totals, waits = [], []
        for index in range(runs):
            total = app.conveyor("deploy", "staging", app.v2 if index % 2 == 0 else app.v1)
            release = ledger.list_releases("hello", "staging", limit=1)[0]
            health = ledger.events(release_id=release.id, step="health")
            match = re.search(r"healthy after ([0-9.]+)s", health[-1].message) if health else None
            if release.status != "succeeded" or match is None:
                raise SystemExit(f"deploy {index} did not succeed as expected: {release.status}")
            totals.append(total)
            waits.append(float(match.group(1)))
            print(f"deploy {index + 1:2d}: total {total:5.2f}s  container start+health {waits[-1]:5.2f}s  "
                  f"conveyor's own {total - waits[-1]:5.2f}s")
        ledger.close()
    own = [t - w for t, w in zip(totals, waits, strict=True)]
    print(f"\nmedian over {runs} deploys: total {statistics.median(totals):.2f}s, "
          f"container start+health {statistics.median(waits):.2f}s, conveyor's own {statistics.median(own):.2f}s")
    print(f"target: conveyor's own time ≤ 1 s -> {'met' if statistics.median(own) <= 1 else 'MISSED'}")


if __name__ == "__main__":
    main()
