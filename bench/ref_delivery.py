"""What delivering the git tags and branch adds to a deploy, with the remote on this machine
(target: ≤ 0.5 s median). Alternates deploys with release_refs on and off in the same run and prints the
median of each and the difference.

    .venv/bin/python bench/ref_delivery.py [--runs N]
"""

from __future__ import annotations

import argparse
import statistics

from sample_app import sample_app

REFS_OFF = "release_refs:\n  env_tag: false\n  timestamp_tag: false\n  env_branch: false\n"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=10)
    runs = parser.parse_args().runs
    with_refs, without = [], []
    with sample_app() as app:
        # The same commits either way; with refs off through an explicit --config override of their config.
        refs_off = app.repo.parent / "refs-off.yml"
        refs_off.write_text((app.repo / "conveyor.yml").read_text() + REFS_OFF)
        for index in range(runs * 2):
            refs_on = index % 2 == 0
            override = [] if refs_on else ["--config", str(refs_off)]
            sha = app.v2 if (index // 2) % 2 == 0 else app.v1
            (with_refs if refs_on else without).append(app.conveyor(*override, "deploy", "staging", sha))
    on, off = statistics.median(with_refs), statistics.median(without)
    print(f"deploy with tags+branch pushed    median {on:.3f}s over {runs}")
    print(f"deploy with release_refs disabled median {off:.3f}s over {runs}")
    print(f"added by delivery: {on - off:+.3f}s  (target ≤ 0.5 s -> {'met' if on - off <= 0.5 else 'MISSED'})")


if __name__ == "__main__":
    main()
