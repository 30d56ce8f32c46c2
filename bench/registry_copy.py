"""Cross-registry image copy: conveyor's registry.copy beside `skopeo copy` (Debian's), between the same
kind of registries (Debian's docker-registry on loopback, filesystem storage in a temp dir).

Builds an image FROM scratch with buildah from random-content files (LAYERS layers, ~200 MB in all; random
so that nothing compresses), pushes it to a source registry, then copies it by digest ROUNDS times with
each tool, every time into a fresh destination registry (a registry that already holds a blob would
make the copy cheaper). Prints the median wall times and the ratio (target ≤ 1.3× skopeo), the time of a
second copy of the same digest (nothing missing; target ≤ 100 ms), and the peak RSS of the copying process
for a 20 MB and the 200 MB image (memory must stay flat in the layer size).

    .venv/bin/python bench/registry_copy.py
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from devstack import Registry, engine_environment  # noqa: E402

LAYERS = 4
ROUNDS = 3


def build_image(root: Path, source: Registry, name: str, megabytes: int, env: dict[str, str]) -> str:
    """Build and push an image of `megabytes` of random files in LAYERS layers; returns its digest."""
    context = root / f"context-{name}"
    context.mkdir()
    lines = ["FROM scratch"]
    for index in range(LAYERS):
        (context / f"part{index}.bin").write_bytes(os.urandom(megabytes * 1_000_000 // LAYERS))
        lines.append(f"COPY part{index}.bin /data/part{index}.bin")
    (context / "Containerfile").write_text("\n".join(lines) + "\n")
    storage = ["--storage-driver", "vfs", "--root", str(root / "buildah"), "--runroot", str(root / "run")]
    image = f"{source.host}/bench/{name}:latest"
    subprocess.run(["buildah", *storage, "bud", "--isolation", "chroot", "-q", "-f", str(context / "Containerfile"),
                    "-t", image, str(context)], check=True, env=env, stdout=subprocess.DEVNULL)
    digest_file = root / f"{name}.digest"
    subprocess.run(["buildah", *storage, "push", "--tls-verify=false", "--digestfile", str(digest_file), image],
                   check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    shutil.rmtree(context)
    return digest_file.read_text().strip()


def fresh_registry(root: Path, label: str) -> Registry:
    return Registry(Path(tempfile.mkdtemp(prefix=f"{label}-", dir=root))).start()


def skopeo_copy(source: Registry, destination: Registry, name: str, digest: str) -> float:
    start = time.perf_counter()
    subprocess.run(["skopeo", "copy", "-q", "--src-tls-verify=false", "--dest-tls-verify=false",
                    f"docker://{source.host}/bench/{name}@{digest}", f"docker://{destination.host}/bench/{name}"],
                   check=True)
    return time.perf_counter() - start


def conveyor_copy(source: Registry, destination: Registry, name: str, digest: str, journal: Path) -> dict:
    """registry.copy in a child process, so its peak RSS is its own (ru_maxrss of the child)."""
    start = time.perf_counter()
    out = subprocess.run([sys.executable, __file__, "--child", f"{source.host}/bench/{name}",
                          f"{destination.host}/bench/{name}", digest, str(journal)],
                         check=True, capture_output=True, text=True).stdout
    seconds = time.perf_counter() - start
    return {"seconds": seconds, **json.loads(out)}


def child(source_repo: str, destination_repo: str, digest: str, journal: str) -> None:
    from conveyor.registry.client import Registry as Client
    from conveyor.registry.copy import UploadJournal, copy_image

    source, destination = Client(source_repo, insecure=True), Client(destination_repo, insecure=True)
    copied = copy_image(source, destination, digest, journal=UploadJournal(Path(journal)), tag="latest")
    # A second copy of the same digest, in the same process (as a release does): nothing is missing.
    start = time.perf_counter()
    again = copy_image(Client(source_repo, insecure=True), Client(destination_repo, insecure=True), digest,
                       journal=UploadJournal(Path(journal)), tag="latest")
    second_ms = (time.perf_counter() - start) * 1000
    assert again.already_there, again
    print(json.dumps({"bytes": copied.bytes_sent, "second_ms": second_ms,
                      "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def main() -> None:
    root = Path(tempfile.mkdtemp(prefix="conveyor-bench-copy-"))
    registries: list[Registry] = []
    try:
        env = {**os.environ}
        source = fresh_registry(root, "source")
        registries.append(source)
        env.update(engine_environment(root / "engine", [source.host]))
        digests = {"small": build_image(root, source, "small", 20, env),
                   "large": build_image(root, source, "large", 200, env)}
        shutil.rmtree(root / "buildah", ignore_errors=True)
        ours, theirs, seconds_ms, rss = [], [], [], {}
        for round_ in range(ROUNDS):
            for tool in ("conveyor", "skopeo") if round_ % 2 == 0 else ("skopeo", "conveyor"):
                destination = fresh_registry(root, f"{tool}-{round_}")
                registries.append(destination)
                if tool == "skopeo":
                    theirs.append(skopeo_copy(source, destination, "large", digests["large"]))
                else:
                    run = conveyor_copy(source, destination, "large", digests["large"], root / "journal")
                    ours.append(run["seconds"])
                    seconds_ms.append(run["second_ms"])
                    rss["200 MB"] = max(rss.get("200 MB", 0), run["rss_mb"])
                destination.stop()
        small_destination = fresh_registry(root, "small")
        registries.append(small_destination)
        rss["20 MB"] = conveyor_copy(source, small_destination, "small", digests["small"], root / "journal")["rss_mb"]
        report(ours, theirs, seconds_ms, rss)
    finally:
        for registry in registries:
            registry.stop()
        shutil.rmtree(root, ignore_errors=True)


def report(ours: list[float], theirs: list[float], second_ms: list[float], rss: dict[str, float]) -> None:
    mine, skopeo = statistics.median(ours), statistics.median(theirs)
    ratio = mine / skopeo
    print(f"image: {LAYERS} layers, 200 MB of random content; {ROUNDS} rounds, each into a fresh registry")
    print(f"skopeo copy          median {skopeo:6.2f} s  ({', '.join(f'{t:.2f}' for t in theirs)})")
    print(f"conveyor copy        median {mine:6.2f} s  ({', '.join(f'{t:.2f}' for t in ours)})  "
          f"{ratio:.2f}x skopeo (target <= 1.3x -> {'met' if ratio <= 1.3 else 'MISSED'})")
    second = statistics.median(second_ms)
    print(f"second copy, same digest: median {second:.1f} ms (target <= 100 ms -> "
          f"{'met' if second <= 100 else 'MISSED'})")
    print(f"peak RSS of the copying process: 20 MB image {rss['20 MB']:.0f} MB, 200 MB image {rss['200 MB']:.0f} MB")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        child(*sys.argv[2:6])
    else:
        main()
