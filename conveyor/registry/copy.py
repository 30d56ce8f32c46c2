"""Copy an image by digest from one registry to another (or to another repository of the same one).

Why not a library: the Python OCI clients on PyPI (oras, docker-registry-client, dxf) either buffer a
layer in memory, cannot mount across repositories, or cannot resume an upload; skopeo does all of it but
is a Go binary the product would then need on every machine. This module is the few Distribution API calls
a copy needs, on registry.client's authenticated session:

- the manifest (and, for an index, each child manifest) is read by digest and its bytes verified;
- a blob the destination has is skipped (HEAD), one in another repository of the same registry is mounted
  (`POST …/blobs/uploads/?mount=DIGEST&from=REPO`), any other is streamed from the source's GET into
  chunked PATCHes, hashed as it passes, and committed with PUT only when its sha256 is the digest;
- each chunk's upload URL is written to an UploadJournal, so a copy cut off mid-layer resumes where the
  destination says it got to (`GET` on the upload URL answers its Range) instead of starting again;
- the manifest is written last, by digest, and the destination's Docker-Content-Digest must be the digest.
"""

from __future__ import annotations

import hashlib
import json
import queue
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from conveyor.errors import OperationFailed
from conveyor.registry.client import MANIFEST_TYPES, Registry

INDEX_TYPES = {"application/vnd.oci.image.index.v1+json",
               "application/vnd.docker.distribution.manifest.list.v2+json"}
CHUNK_BYTES = 64 * 1024 * 1024  # one PATCH; what an interruption can cost at most
READ_BYTES = 1024 * 1024  # what is in memory at once per blob, whatever the layer's size
PARALLEL_BLOBS = 4  # blobs copied at once, as skopeo does: one stream rarely fills a link or a disk
Progress = Callable[[str], None]


class DigestMismatch(OperationFailed):
    """What arrived is not what the digest names: nothing is committed under it."""


@dataclass
class CopyResult:
    digest: str
    already_there: bool = False
    blobs_present: int = 0
    blobs_mounted: int = 0
    blobs_uploaded: int = 0
    bytes_sent: int = 0
    bytes_resumed: int = 0  # bytes an earlier, interrupted copy had already sent
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, name: str, count: int = 1) -> None:
        with self._lock:
            setattr(self, name, getattr(self, name) + count)

    def summary(self) -> str:
        if self.already_there:
            return f"{self.digest} is already in the destination: nothing to copy"
        return (f"copied {self.digest}: {self.blobs_uploaded} blob(s) uploaded ({_mb(self.bytes_sent)}"
                + (f", {_mb(self.bytes_resumed)} resumed from an earlier copy" if self.bytes_resumed else "")
                + f"), {self.blobs_mounted} mounted, {self.blobs_present} already there")


class UploadJournal:
    """Upload URLs of blobs whose copy is under way, one small file each, so an interrupted copy resumes."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _file(self, destination: Registry, digest: str) -> Path:
        key = hashlib.sha256(f"{destination.base}\n{digest}".encode()).hexdigest()[:32]
        return self.root / f"{key}.json"

    def get(self, destination: Registry, digest: str) -> tuple[str, int] | None:
        """The upload URL and the bytes confirmed by the last answer, when a copy of `digest` was cut off."""
        try:
            entry = json.loads(self._file(destination, digest).read_text())
            return entry["location"], int(entry["offset"])
        except (OSError, ValueError, KeyError):
            return None

    def save(self, destination: Registry, digest: str, location: str, offset: int) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        path = self._file(destination, digest)
        partial = path.with_suffix(".tmp")
        partial.write_text(json.dumps({"location": location, "offset": offset, "digest": digest}))
        partial.replace(path)  # never a half-written file for the next copy to read

    def forget(self, destination: Registry, digest: str) -> None:
        self._file(destination, digest).unlink(missing_ok=True)


def copy_image(source: Registry, destination: Registry, digest: str, *, journal: UploadJournal,
               progress: Progress = lambda _: None, tag: str | None = None,
               chunk_bytes: int = CHUNK_BYTES) -> CopyResult:
    """Make `destination` hold the image `digest` of `source` (and tag it `tag` there, when given)."""
    result = CopyResult(digest)
    destination.allow(f"repository:{destination.name.path}:pull,push")
    there = destination.digest_for_tag(tag) if tag else destination.digest_for_tag(digest)
    if there == digest:
        result.already_there = True
        return result
    if source.host == destination.host:
        destination.allow(f"repository:{source.name.path}:pull")  # for cross-repository mounts
    _Copier(source, destination, journal, progress, chunk_bytes, result).manifest(digest, tag)
    return result


@dataclass
class _Copier:
    source: Registry
    destination: Registry
    journal: UploadJournal
    progress: Progress
    chunk_bytes: int
    result: CopyResult
    say: Progress = field(init=False, repr=False)  # a blob copy's progress line (through the relay)

    def __post_init__(self) -> None:
        self.say = self.progress

    def manifest(self, digest: str, tag: str | None = None) -> None:
        body, media_type = self._read_manifest(digest)
        if not self.destination.has_digest(digest):
            document = json.loads(body)
            if media_type in INDEX_TYPES:
                for child in document.get("manifests", []):
                    self.manifest(child["digest"])
            else:
                self._blobs([document["config"], *document.get("layers", [])])
            self._write_manifest(digest, body, media_type, digest)
        if tag is not None:
            self._write_manifest(digest, body, media_type, tag)

    def _read_manifest(self, digest: str) -> tuple[bytes, str]:
        what = f"the manifest {digest} of {self.source.repository}"
        response = self.source.call("GET", self.source.url(f"manifests/{digest}"), what,
                                    headers={"Accept": MANIFEST_TYPES})
        if response.status_code != 200:
            raise OperationFailed(f"registry {self.source.host} has no {what} (HTTP {response.status_code})")
        _verify(response.content, digest, what)
        return response.content, response.headers.get("Content-Type", "").split(";")[0]

    def _write_manifest(self, digest: str, body: bytes, media_type: str, reference: str) -> None:
        what = f"the manifest {digest} to {self.destination.repository}"
        response = self.destination.call("PUT", self.destination.url(f"manifests/{reference}"), what,
                                         headers={"Content-Type": media_type}, content=body)
        _expect(response, 201, what)
        arrived = response.headers.get("Docker-Content-Digest", digest)
        if arrived != digest:
            raise DigestMismatch(f"{self.destination.host} stored {what} as {arrived}")

    def _blobs(self, descriptors: list[dict[str, Any]]) -> None:
        relay = _Relay()
        self.say = relay.say
        jobs = [lambda d=d: self.blob(d["digest"], int(d.get("size", 0))) for d in descriptors]
        relay.run(jobs, self.progress, PARALLEL_BLOBS)

    def blob(self, digest: str, size: int) -> None:
        if self._destination_has_blob(digest):
            self.result.add("blobs_present")
            return
        if self._mounted(digest):
            self.result.add("blobs_mounted")
            self.say(f"mounted {_short(digest)} from {self.source.name.path}")
            return
        self._upload(digest, size)
        self.result.add("blobs_uploaded")

    def _destination_has_blob(self, digest: str) -> bool:
        what = f"blob {digest} in {self.destination.repository}"
        response = self.destination.call("HEAD", self.destination.url(f"blobs/{digest}"), what)
        return response.status_code == 200

    def _mounted(self, digest: str) -> bool:
        """Inside one registry a blob in the source repository is linked, not sent."""
        if self.source.host != self.destination.host or self.source.name.path == self.destination.name.path:
            return False
        url = self.destination.url(f"blobs/uploads/?mount={digest}&from={self.source.name.path}")
        response = self.destination.call("POST", url, f"a mount of {digest}")
        if response.status_code == 201:
            return True
        if response.status_code == 202:  # the registry opened an upload instead: cancel it, upload below
            self.destination.call("DELETE", self._location(response), "a cancelled upload")
        return False

    def _upload(self, digest: str, size: int) -> None:
        location, offset = self._resume_or_start(digest)
        if offset:
            self.result.add("bytes_resumed", offset)
            self.say(f"resuming {_short(digest)} at {_mb(offset)} of {_mb(size)}")
        else:
            self.say(f"uploading {_short(digest)} ({_mb(size)})")
        hasher = hashlib.sha256()
        what = f"blob {digest} of {self.source.repository}"
        with self.source.stream(self.source.url(f"blobs/{digest}"), what) as response:
            _expect(response, 200, what)
            pieces = _Pieces(response.iter_raw(READ_BYTES), hasher)
            pieces.skip(offset)  # already at the destination: hashed, not sent again
            while not pieces.done:
                location, offset = self._patch(digest, location, offset, pieces)
        arrived = "sha256:" + hasher.hexdigest()
        if arrived != digest:
            self.destination.call("DELETE", location, "a cancelled upload")
            self.journal.forget(self.destination, digest)
            raise DigestMismatch(f"{what} arrived as {arrived}: not copied")
        self._commit(digest, location)

    def _resume_or_start(self, digest: str) -> tuple[str, int]:
        saved = self.journal.get(self.destination, digest)
        if saved:
            response = self.destination.call("GET", saved[0], "an upload's progress")
            if response.status_code == 204:
                # The registry's Range is the truth (a chunk cut off mid-way may have landed in part), but
                # it says "0-0" for an empty upload too.
                held = _received(response) if saved[1] or response.headers.get("Range") != "0-0" else 0
                return self._location(response, saved[0]), held
        response = self.destination.call("POST", self.destination.url("blobs/uploads/"), f"an upload of {digest}")
        _expect(response, 202, f"an upload of {digest}")
        location = self._location(response)
        self.journal.save(self.destination, digest, location, 0)
        return location, 0

    def _patch(self, digest: str, location: str, offset: int, pieces: _Pieces) -> tuple[str, int]:
        body = pieces.take(self.chunk_bytes)
        response = self.destination.send_streamed(
            "PATCH", location, f"a chunk of {digest}", {"Content-Type": "application/octet-stream"}, body)
        _expect(response, 202, f"a chunk of {digest}")
        location = self._location(response, location)
        sent = _received(response) - offset
        self.journal.save(self.destination, digest, location, offset + sent)
        self.result.add("bytes_sent", sent)
        self.say(f"sent {_mb(offset + sent)} of {_short(digest)}")
        return location, offset + sent

    def _commit(self, digest: str, location: str) -> None:
        # Appended by hand: httpx's params= would replace the upload URL's own ?_state= query.
        url = location + ("&" if "?" in location else "?") + f"digest={digest}"
        response = self.destination.call("PUT", url, f"the commit of blob {digest}",
                                         headers={"Content-Length": "0"})
        _expect(response, 201, f"the commit of blob {digest}")
        self.journal.forget(self.destination, digest)
        arrived = response.headers.get("Docker-Content-Digest", digest)
        if arrived != digest:
            raise DigestMismatch(f"{self.destination.host} stored blob {digest} as {arrived}")

    def _location(self, response: Any, default: str | None = None) -> str:
        location = response.headers.get("Location") or default
        if not location:
            raise OperationFailed(f"registry {self.destination.host} gave no upload URL")
        if location.startswith("/"):
            base = self.destination.base.split("/v2/", 1)[0]
            location = base + location
        return location


class _Stopped(Exception):
    """A blob's copy stops at its next progress line: another failed, or the caller's callback raised."""


class _Relay:
    """Runs blob copies on worker threads and hands their progress lines to the caller's thread one at a
    time (the caller's callback writes the ledger, whose session is not shared across threads). A worker
    waits until its line is handled, so when the callback raises (or the caller is interrupted) every
    copy stops at its next line, its upload journalled for a resume."""

    def __init__(self) -> None:
        self._lines: queue.Queue[tuple[str, threading.Event] | None] = queue.Queue()
        self._finished = 0
        self.stopped = False

    def say(self, line: str) -> None:
        handled = threading.Event()
        self._lines.put((line, handled))
        # A signal can land between the caller taking the line and marking it handled: a stopped relay is
        # not waited for.
        while not handled.wait(0.5) and not self.stopped:
            pass
        if self.stopped:
            raise _Stopped(line)

    def run(self, jobs: list[Callable[[], None]], progress: Progress, parallel: int) -> None:
        with ThreadPoolExecutor(max(1, min(parallel, len(jobs)))) as pool:
            futures = [pool.submit(self._job, job) for job in jobs]
            try:
                self._relay(len(jobs), progress)
            except BaseException:
                self.stopped = True
                self._relay(len(jobs), None)  # let every worker reach its next line and end
                raise
        failures = [f.exception() for f in futures if f.exception() is not None]
        for failure in failures:  # a worker's own failure (a refused upload, a digest mismatch) first
            if not isinstance(failure, _Stopped):
                raise failure
        if failures:
            raise failures[0]

    def _job(self, job: Callable[[], None]) -> None:
        try:
            job()
        except BaseException:
            self.stopped = True  # the others stop too: the copy has failed
            raise
        finally:
            self._lines.put(None)

    def _relay(self, count: int, progress: Progress | None) -> None:
        while self._finished < count:
            item = self._lines.get()
            if item is None:
                self._finished += 1
                continue
            line, handled = item
            try:
                if progress is not None and not self.stopped:
                    progress(line)
            finally:
                handled.set()


class _Pieces:
    """The source blob's body as it arrives: hashed on the way, handed out in chunks of a given size."""

    def __init__(self, raw: Iterator[bytes], hasher: Any) -> None:
        self._raw = raw
        self._hasher = hasher
        self._left = b""
        self.done = False

    def _next(self) -> bytes:
        if self._left:
            piece, self._left = self._left, b""
            return piece
        for piece in self._raw:
            if piece:
                self._hasher.update(piece)
                return piece
        self.done = True
        return b""

    def skip(self, count: int) -> None:
        while count > 0 and not self.done:
            piece = self._next()
            self._left = piece[count:]
            count -= len(piece[:count])

    def take(self, limit: int) -> Iterator[bytes]:
        while limit > 0:
            piece = self._next()
            if not piece:
                return
            self._left = piece[limit:]
            limit -= len(piece[:limit])
            yield piece[: len(piece) - len(self._left)]
        if not self._left:  # at a chunk's end: learn whether the body ends here, so no empty PATCH follows
            self._left = self._next()


def _received(response: Any) -> int:
    """How many bytes of the upload the registry holds, from its `Range: 0-LAST` header."""
    value = response.headers.get("Range", "")
    _, _, last = value.partition("-")
    return int(last) + 1 if last.isdigit() else 0


def _verify(body: bytes, digest: str, what: str) -> None:
    arrived = "sha256:" + hashlib.sha256(body).hexdigest()
    if arrived != digest:
        raise DigestMismatch(f"{what} arrived as {arrived}: not copied")


def _expect(response: Any, status: int, what: str) -> None:
    if response.status_code != status:
        detail = ""
        try:
            errors = response.json().get("errors") or []
            detail = f": {errors[0].get('code')} {errors[0].get('message', '')}".rstrip() if errors else ""
        except Exception:  # noqa: BLE001 - a body that is not the registry's error JSON adds nothing
            pass
        raise OperationFailed(f"registry refused {what} (HTTP {response.status_code}{detail})")


def _short(digest: str) -> str:
    return digest.split(":")[-1][:12]


def _mb(count: int) -> str:
    return f"{count / 1_000_000:.1f} MB"
