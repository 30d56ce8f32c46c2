"""Run the test API server by hand, outside pytest, to point `kubectl` or `conveyor` at it:

    python -m tests.kube_apiserver serve --kubeconfig /tmp/kube/config [--port 6443]

It prints one ready line and serves (HTTPS, with its controllers and scripted kubelet; every image is
"healthy") until Ctrl-C or SIGTERM. The kubeconfig holds the session's CA and an admin token.
"""

from __future__ import annotations

import argparse
import signal
import sys
import tempfile
import threading
from pathlib import Path

import yaml

from .cluster import KubeApi


def _arguments(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tests.kube_apiserver")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="start the server and its controllers")
    serve.add_argument("--kubeconfig", required=True, type=Path, help="where to write the kubeconfig")
    serve.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (default: any free one)")
    return parser.parse_args(argv)


def serve(kubeconfig: Path, port: int) -> int:
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    with tempfile.TemporaryDirectory(prefix="kube-apiserver-") as scratch:
        try:
            api = KubeApi(Path(scratch), port=port)
        except OSError as exc:
            print(f"error: cannot listen on 127.0.0.1:{port}: {exc.strerror}", file=sys.stderr)
            return 2
        try:
            kubeconfig.parent.mkdir(parents=True, exist_ok=True)
            kubeconfig.write_text(yaml.safe_dump(api.kubeconfig()))
            kubeconfig.chmod(0o600)
            print(f"kube-apiserver (test) ready at {api.url}; kubeconfig {kubeconfig}", flush=True)
            stop.wait()
        finally:
            api.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _arguments(sys.argv[1:] if argv is None else argv)
    return serve(args.kubeconfig, args.port)


if __name__ == "__main__":
    sys.exit(main())
