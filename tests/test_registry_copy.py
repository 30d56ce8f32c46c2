"""registry.copy between real registries: Debian's docker-registry anonymous (the session's), behind
htpasswd, and behind a bearer-token server (tests/fakes/registries.py)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from conveyor.errors import BadInput
from conveyor.registry.client import Registry
from conveyor.registry.copy import DigestMismatch, UploadJournal, copy_image
from tests.fakes.registries import AuthRegistry, push_test_blob, push_test_image, push_test_index

USERS = {"deployer": "s3cret-pw"}


@pytest.fixture(scope="module")
def basic_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AuthRegistry]:
    reg = AuthRegistry(tmp_path_factory.mktemp("basic-registry"), "basic", USERS).start()
    yield reg
    reg.stop()


@pytest.fixture(scope="module")
def token_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AuthRegistry]:
    reg = AuthRegistry(tmp_path_factory.mktemp("token-registry"), "token", USERS).start()
    yield reg
    reg.stop()


@pytest.fixture
def credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COPY_TEST_USER", "deployer")
    monkeypatch.setenv("COPY_TEST_PASSWORD", USERS["deployer"])


def _anonymous(registry: object, repo: str) -> Registry:
    return Registry(f"{registry.host}/{repo}", insecure=True)  # type: ignore[attr-defined]


def _with_credentials(reg: AuthRegistry, repo: str) -> Registry:
    return Registry(f"{reg.host}/{repo}", insecure=True, username_env="COPY_TEST_USER",
                    password_env="COPY_TEST_PASSWORD")


def _blob(reg_host: str, repo: str, digest: str) -> bytes:
    response = httpx.get(f"http://{reg_host}/v2/{repo}/blobs/{digest}", auth=("deployer", USERS["deployer"]))
    response.raise_for_status()
    return response.content


def test_copy_sends_only_the_blobs_the_destination_lacks(registry, basic_registry, credentials, tmp_path):
    shared, fresh = os.urandom(300_000), os.urandom(200_000)
    digest, blobs = push_test_image(registry.host, "copy/one", [shared, fresh])
    with httpx.Client(auth=("deployer", USERS["deployer"])) as client:  # the destination has one layer
        push_test_blob(client, f"http://{basic_registry.host}/v2/team/one", shared)
    journal = UploadJournal(tmp_path / "uploads")
    lines: list[str] = []
    result = copy_image(_anonymous(registry, "copy/one"), _with_credentials(basic_registry, "team/one"), digest,
                        journal=journal, progress=lines.append, tag="v1")
    assert (result.blobs_present, result.blobs_uploaded, result.blobs_mounted) == (1, 2, 0)
    assert result.bytes_sent == 200_000 + len(_blob(basic_registry.host, "team/one", blobs[0]))
    assert _blob(basic_registry.host, "team/one", blobs[2]) == fresh
    assert _with_credentials(basic_registry, "team/one").digest_for_tag("v1") == digest
    assert any("uploading" in line for line in lines)
    again = copy_image(_anonymous(registry, "copy/one"), _with_credentials(basic_registry, "team/one"), digest,
                       journal=journal, tag="v1")
    assert again.already_there and again.bytes_sent == 0


def test_an_index_is_copied_with_every_image_it_names(registry, basic_registry, credentials, tmp_path):
    amd64, _ = push_test_image(registry.host, "copy/multi", [os.urandom(10_000)], tag="amd64")
    arm64, arm_blobs = push_test_image(registry.host, "copy/multi", [os.urandom(10_000)], tag="arm64")
    index = push_test_index(registry.host, "copy/multi", [amd64, arm64])
    result = copy_image(_anonymous(registry, "copy/multi"), _with_credentials(basic_registry, "team/multi"), index,
                        journal=UploadJournal(tmp_path), tag="v1")
    assert result.blobs_uploaded == 4
    copied = _with_credentials(basic_registry, "team/multi")
    assert copied.digest_for_tag("v1") == index
    assert copied.has_digest(amd64) and copied.has_digest(arm64)
    assert len(_blob(basic_registry.host, "team/multi", arm_blobs[1])) == 10_000


def test_copy_inside_one_registry_mounts_every_blob(registry, tmp_path):
    digest, _ = push_test_image(registry.host, "copy/mount-from", [os.urandom(100_000)])
    result = copy_image(_anonymous(registry, "copy/mount-from"), _anonymous(registry, "copy/mount-to"), digest,
                        journal=UploadJournal(tmp_path))
    assert (result.blobs_mounted, result.blobs_uploaded, result.bytes_sent) == (2, 0, 0)
    assert _anonymous(registry, "copy/mount-to").has_digest(digest)


def test_an_interrupted_copy_resumes_where_the_destination_got_to(registry, basic_registry, credentials,
                                                                    tmp_path):
    layer = os.urandom(1_000_000)
    digest, blobs = push_test_image(registry.host, "copy/resume", [layer])
    with httpx.Client(auth=("deployer", USERS["deployer"])) as client:  # only the layer is copied below
        config = httpx.get(f"http://{registry.host}/v2/copy/resume/blobs/{blobs[0]}").content
        push_test_blob(client, f"http://{basic_registry.host}/v2/team/resume", config)
    journal = UploadJournal(tmp_path / "uploads")

    class CutOff(Exception):
        pass

    def cut_after_first_chunk(line: str) -> None:
        if line.startswith("sent") and _layer_digest(layer)[7:19] in line:
            raise CutOff(line)

    with pytest.raises(CutOff):
        copy_image(_anonymous(registry, "copy/resume"), _with_credentials(basic_registry, "team/resume"), digest,
                   journal=journal, progress=cut_after_first_chunk, chunk_bytes=262_144)
    assert not _with_credentials(basic_registry, "team/resume").has_digest(digest)
    result = copy_image(_anonymous(registry, "copy/resume"), _with_credentials(basic_registry, "team/resume"),
                        digest, journal=journal, chunk_bytes=262_144)
    assert result.bytes_resumed == 262_144
    assert result.bytes_sent == 1_000_000 - 262_144
    assert _blob(basic_registry.host, "team/resume", _layer_digest(layer)) == layer
    assert not list((tmp_path / "uploads").glob("*.json"))  # nothing left to resume


def _layer_digest(blob: bytes) -> str:
    import hashlib

    return "sha256:" + hashlib.sha256(blob).hexdigest()


def test_copy_through_a_bearer_token_flow_asks_for_push(registry, token_registry, credentials, tmp_path):
    digest, _ = push_test_image(registry.host, "copy/token", [os.urandom(50_000)])
    result = copy_image(_anonymous(registry, "copy/token"), _with_credentials(token_registry, "team/token"),
                        digest, journal=UploadJournal(tmp_path), tag="v1")
    assert result.blobs_uploaded == 2
    assert any("repository:team/token:pull,push" in scopes for scopes in token_registry.tokens.issued)
    assert _with_credentials(token_registry, "team/token").digest_for_tag("v1") == digest


@pytest.mark.parametrize("kind", ["basic", "token"])
def test_a_wrong_credential_is_one_readable_failure(registry, basic_registry, token_registry, monkeypatch,
                                                     tmp_path, kind):
    monkeypatch.setenv("COPY_TEST_USER", "deployer")
    monkeypatch.setenv("COPY_TEST_PASSWORD", "wrong")
    destination = basic_registry if kind == "basic" else token_registry
    digest, _ = push_test_image(registry.host, "copy/wrong", [os.urandom(1000)])
    with pytest.raises(BadInput, match="rejected the credentials for .*team/wrong"):
        copy_image(_anonymous(registry, "copy/wrong"), _with_credentials(destination, "team/wrong"), digest,
                   journal=UploadJournal(tmp_path))


def test_a_blob_that_arrives_different_is_not_committed(tmp_path, basic_registry, credentials):
    source = AuthRegistry(tmp_path / "rotten", "basic", USERS).start()
    try:
        layer = os.urandom(100_000)
        digest, blobs = push_test_image(source.host, "copy/rot", [layer], auth=("deployer", USERS["deployer"]))
        source.blob_file(blobs[1]).write_bytes(os.urandom(100_000))  # bit rot on the source's disk
        with pytest.raises(DigestMismatch, match=f"{blobs[1]} .* arrived as sha256:"):
            copy_image(_with_credentials(source, "copy/rot"), _with_credentials(basic_registry, "team/rot"),
                       digest, journal=UploadJournal(tmp_path / "uploads"))
        response = httpx.head(f"http://{basic_registry.host}/v2/team/rot/blobs/{blobs[1]}",
                              auth=("deployer", USERS["deployer"]))
        assert response.status_code == 404
        assert not _with_credentials(basic_registry, "team/rot").has_digest(digest)
    finally:
        source.stop()


def test_journal_entries_are_per_destination(tmp_path: Path):
    journal = UploadJournal(tmp_path)
    one, two = Registry("127.0.0.1:1/a", insecure=True), Registry("127.0.0.1:1/b", insecure=True)
    journal.save(one, "sha256:ab", "http://x/upload/1", 5)
    assert journal.get(one, "sha256:ab") == ("http://x/upload/1", 5)
    assert journal.get(two, "sha256:ab") is None
