"""The registry on a real directory store with a real (tiny) ONNX model run in ONNX Runtime."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from models_registry import store as store_module
from models_registry.errors import (
    CardMismatchError,
    DuplicateVersionError,
    InvalidAliasError,
    InvalidCardError,
    InvalidModelRefError,
    ModelIntegrityError,
    StoreError,
    UnknownAliasError,
    UnknownModelError,
    UnknownStoreSchemeError,
    UnknownVersionError,
)
from models_registry.registry import ModelVersion, Registry
from models_registry.store import (
    EXTRA_STORES_ENV,
    SHIPPED_STORE,
    STAGING_DIR,
    DirectoryStore,
    Store,
    default_store_locations,
    open_store,
    register_store_scheme,
    sha256_file,
)
from tests.models_registry.conftest import BIAS, SIZE, draft_dict, fp16_draft_dict, tamper


@pytest.fixture
def two_versions(registry: Registry, onnx_file: Path) -> Registry:
    registry.register("tiny", onnx_file, draft_dict())
    registry.register("tiny", onnx_file, draft_dict())
    return registry


def test_register_assigns_numbers_hash_and_size(
    two_versions: Registry, onnx_file: Path, store_dir: Path
) -> None:
    assert two_versions.names() == ["tiny"]
    assert two_versions.versions("tiny") == [1, 2]
    card = two_versions.card("tiny@2")
    assert (card.name, card.version) == ("tiny", 2)
    assert card.onnx.sha256 == sha256_file(onnx_file)
    assert card.onnx.size_bytes == onnx_file.stat().st_size
    stored = store_dir / "tiny" / "2"
    assert sorted(p.name for p in stored.iterdir()) == ["card.json", "model.onnx"]
    assert json.loads((stored / "card.json").read_text())["version"] == 2
    assert (stored / "model.onnx").stat().st_mode & 0o222 == 0  # read-only


def _settle(folder: Path, seconds_ago: int) -> None:
    """Date the folder's mtime back, as a folder untouched for a while (the memo trusts it)."""
    stamp = (int(time.time()) - seconds_ago) * 1_000_000_000
    os.utime(folder, ns=(stamp, stamp))


def test_versions_and_aliases_are_read_again_when_the_folder_changes(
    two_versions: Registry, store_dir: Path, onnx_file: Path
) -> None:
    """Versions and aliases are kept per model folder while its mtime (and the alias file's)
    holds: a pin costs a stat, not a scan and a read. They are read again once a version comes
    or goes (the folder's mtime moves) or the alias file is replaced or edited in place."""
    store, folder = DirectoryStore(store_dir), store_dir / "tiny"
    aliases = folder / "aliases.json"
    two_versions.promote("tiny", 1, "production")
    _settle(folder, 3600)
    _settle(aliases, 3600)
    assert store.versions("tiny") == [1, 2] and store.read_aliases("tiny") == {"production": 1}
    # a card file removed by hand leaves every stamp alone: the memo still lists version 2
    card = (folder / "2" / "card.json").read_bytes()
    (folder / "2" / "card.json").unlink()
    _settle(folder, 3600)
    assert store.versions("tiny") == [1, 2]
    (folder / "2" / "card.json").write_bytes(card)
    _settle(folder, 3600)
    aliases.write_text('{"production": 2}')  # an edit in place, as an editor may write it
    _settle(aliases, 3500)
    assert store.read_aliases("tiny") == {"production": 2}
    two_versions.promote("tiny", 2, "staging")  # an atomic replace
    _settle(folder, 3500)
    _settle(aliases, 3400)
    assert store.read_aliases("tiny") == {"production": 2, "staging": 2}
    two_versions.register("tiny", onnx_file, draft_dict())
    _settle(folder, 3400)
    assert store.versions("tiny") == [1, 2, 3] and two_versions.resolve("tiny@latest").version == 3
    shutil.rmtree(folder / "3")  # a version retired by hand
    _settle(folder, 3300)
    assert store.versions("tiny") == [1, 2]
    store.versions("tiny").append(9)  # callers get copies
    assert store.versions("tiny") == [1, 2]


def test_model_names_are_read_again_when_the_store_changes(
    two_versions: Registry, store_dir: Path, onnx_file: Path
) -> None:
    """The store's model names are kept while its root folder's mtime holds (a request that
    finds its stage's model costs a stat, not a directory scan); a model folder that comes or
    goes moves it, and a folder without versions is never a name."""
    store = DirectoryStore(store_dir)
    _settle(store_dir, 3600)
    assert store.names() == ["tiny"]
    (store_dir / "Not-A-Name").mkdir()
    (store_dir / "empty").mkdir()  # no version yet
    _settle(store_dir, 3500)
    assert store.names() == ["tiny"]
    two_versions.register("other", onnx_file, draft_dict(name="other"))
    _settle(store_dir, 3400)
    _settle(store_dir / "other", 3400)
    assert store.names() == ["other", "tiny"]
    shutil.rmtree(store_dir / "other")
    _settle(store_dir, 3300)
    assert store.names() == ["tiny"]
    store.names().append("x")  # callers get copies
    assert store.names() == ["tiny"]


def test_resolve_references(two_versions: Registry) -> None:
    assert two_versions.resolve("tiny") == ModelVersion("tiny", 2)  # no production: latest
    assert two_versions.promote("tiny", 1, "production") is None
    assert two_versions.resolve("tiny") == ModelVersion("tiny", 1)
    assert two_versions.resolve("tiny@production") == ModelVersion("tiny", 1)
    assert two_versions.resolve("tiny@2") == ModelVersion("tiny", 2)
    assert two_versions.resolve("tiny@latest") == ModelVersion("tiny", 2)
    assert str(two_versions.resolve("tiny@1")) == "tiny@1"


def test_aliases_move(two_versions: Registry) -> None:
    two_versions.promote("tiny", 1, "production")
    two_versions.promote("tiny", 2, "staging")
    assert two_versions.promote("tiny", 2, "production") == 1
    assert two_versions.aliases("tiny") == {"production": 2, "staging": 2}
    assert two_versions.resolve("tiny") == ModelVersion("tiny", 2)


def test_register_with_alias(registry: Registry, onnx_file: Path) -> None:
    card = registry.register("tiny", onnx_file, draft_dict(), alias="staging")
    assert registry.resolve("tiny@staging") == ModelVersion("tiny", card.version)


def test_load_checks_and_runs_in_onnxruntime(two_versions: Registry) -> None:
    loaded = two_versions.load("tiny@1")
    assert loaded.ref == "tiny@1"
    spec = loaded.card.input
    session = ort.InferenceSession(str(loaded.onnx_path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    image = rng.random((3, spec.channels, *spec.size), dtype=np.float32)  # (B, C, H, W)
    mask, logit = session.run([o.name for o in loaded.card.outputs], {spec.name: image})
    assert mask.shape == (3, 1, SIZE, SIZE)
    np.testing.assert_allclose(mask, image, atol=1e-6)
    np.testing.assert_allclose(logit[:, 0], image.mean(axis=(1, 2, 3)) * 2 + BIAS, rtol=1e-5)


@pytest.mark.parametrize("how", ["flip", "append"])
def test_tampered_onnx_is_refused(two_versions: Registry, store_dir: Path, how: str) -> None:
    expected = two_versions.card("tiny@1").onnx.sha256
    tamper(store_dir / "tiny" / "1" / "model.onnx", how)
    with pytest.raises(ModelIntegrityError) as info:
        two_versions.load("tiny@1")
    error = info.value
    assert error.code == "model_integrity"
    assert "tiny@1" in error.message
    assert expected[:12] in error.message
    actual = sha256_file(store_dir / "tiny" / "1" / "model.onnx")
    assert actual[:12] in error.message
    assert error.context["expected_sha256"] == expected[:12]
    two_versions.load("tiny@2")  # the other version is untouched
    reports = {r.version: r for r in two_versions.verify()}
    assert reports[2].ok
    assert not reports[1].ok
    assert [c.name for c in reports[1].checks if not c.ok] == ["model_integrity"]


def test_fp16_variant_is_stored_and_checked(
    registry: Registry, onnx_file: Path, onnx_fp16_file: Path, store_dir: Path
) -> None:
    card = registry.register("tiny", onnx_file, fp16_draft_dict(), fp16_path=onnx_fp16_file)
    assert card.onnx.fp16 is not None
    assert card.onnx.fp16.sha256 == sha256_file(onnx_fp16_file)
    assert registry.load("tiny", fp16=True).onnx_path.name == "model.fp16.onnx"
    assert registry.verify("tiny@1")[0].ok
    tamper(store_dir / "tiny" / "1" / "model.fp16.onnx", "flip")
    with pytest.raises(ModelIntegrityError, match=r"model\.fp16\.onnx"):
        registry.load("tiny", fp16=True)
    registry.load("tiny")  # fp32 file still fine


def test_fp16_file_and_parity_go_together(
    registry: Registry, onnx_file: Path, onnx_fp16_file: Path
) -> None:
    with pytest.raises(InvalidCardError, match="give both or neither"):
        registry.register("tiny", onnx_file, draft_dict(), fp16_path=onnx_fp16_file)
    with pytest.raises(InvalidCardError, match="give both or neither"):
        registry.register("tiny", onnx_file, fp16_draft_dict())


def test_versions_are_never_overwritten(two_versions: Registry, store_dir: Path) -> None:
    store = DirectoryStore(store_dir)
    card = store.read_card("tiny", 2)
    before = (store_dir / "tiny" / "2" / "card.json").read_bytes()
    other = store_dir / "other.onnx"
    other.write_bytes(b"not the same model")
    with pytest.raises(DuplicateVersionError, match="tiny@2 already exists") as info:
        store.put_version(card, {"model.onnx": other})
    assert info.value.code == "duplicate_model_version"
    assert (store_dir / "tiny" / "2" / "card.json").read_bytes() == before
    two_versions.load("tiny@2")


def test_failed_write_leaves_no_version(
    registry: Registry, onnx_file: Path, store_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry.register("tiny", onnx_file, draft_dict())

    def copy_half_then_fail(source: Path, target: Path) -> None:
        target.write_bytes(source.read_bytes()[:100])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(store_module, "_copy_file", copy_half_then_fail)
    with pytest.raises(StoreError, match=r"cannot copy model\.onnx of tiny@2: No space left"):
        registry.register("tiny", onnx_file, draft_dict())
    assert not (store_dir / "tiny" / "2").exists()
    assert list((store_dir / STAGING_DIR).iterdir()) == []
    assert registry.versions("tiny") == [1]
    monkeypatch.undo()
    assert registry.register("tiny", onnx_file, draft_dict()).version == 2


def test_crash_leftovers_are_not_versions(registry: Registry, store_dir: Path) -> None:
    (store_dir / STAGING_DIR / "tiny-1-abc").mkdir(parents=True)
    (store_dir / STAGING_DIR / "tiny-1-abc" / "model.onnx").write_bytes(b"half")
    (store_dir / "tiny" / "1").mkdir(parents=True)  # a folder without its card
    assert registry.names() == []
    with pytest.raises(UnknownModelError):
        registry.resolve("tiny")


@pytest.mark.parametrize("alias", ["Production", "1st", "a_b", "", "x" * 33, "latest"])
def test_alias_names_are_validated(two_versions: Registry, alias: str) -> None:
    with pytest.raises(InvalidAliasError, match="alias") as info:
        two_versions.promote("tiny", 1, alias)
    assert info.value.code == "invalid_alias"


@pytest.mark.parametrize("ref", ["Tiny", "tiny@", "tiny@Prod", "tiny@0", "../etc", "a@b@c"])
def test_bad_references_are_refused(two_versions: Registry, ref: str) -> None:
    with pytest.raises(InvalidModelRefError):
        two_versions.resolve(ref)


def test_unknown_names_list_the_valid_ones(two_versions: Registry, onnx_file: Path) -> None:
    two_versions.register("other", onnx_file, draft_dict())
    two_versions.promote("tiny", 1, "production")
    with pytest.raises(UnknownModelError, match="unknown model 'nope'; known models: other, tiny"):
        two_versions.resolve("nope")
    with pytest.raises(UnknownVersionError, match="no version 7; valid versions: 1, 2"):
        two_versions.resolve("tiny@7")
    with pytest.raises(UnknownAliasError, match="no alias 'staging'; valid aliases: production"):
        two_versions.resolve("tiny@staging")
    with pytest.raises(UnknownVersionError, match="valid versions: 1, 2"):
        two_versions.promote("tiny", 9, "production")


def test_card_that_does_not_match_the_onnx_is_refused(
    registry: Registry, onnx_file: Path, store_dir: Path
) -> None:
    outputs = draft_dict()["outputs"]
    renamed = [outputs[0], {**outputs[1], "name": "score"}]
    with pytest.raises(CardMismatchError, match="card outputs"):
        registry.register("tiny", onnx_file, draft_dict(outputs=renamed))
    spec = draft_dict()["input"]
    bigger = {**spec, "size": [64, 64], "preprocess": {"input_size": [64, 64], "channels": 1}}
    with pytest.raises(CardMismatchError, match="card shape"):
        registry.register("tiny", onnx_file, draft_dict(input=bigger))
    assert registry.names() == []


def test_draft_name_and_preprocess_are_checked(registry: Registry, onnx_file: Path) -> None:
    with pytest.raises(InvalidCardError, match="names model 'other', not 'tiny'"):
        registry.register("tiny", onnx_file, draft_dict(name="other"))
    spec = {**draft_dict()["input"], "preprocess": {"input_size": [SIZE, SIZE], "channels": 3}}
    with pytest.raises(InvalidCardError, match="the two must agree"):
        registry.register("tiny", onnx_file, draft_dict(input=spec))


def test_verify_reports_a_file_onnxruntime_cannot_load(registry: Registry, tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x08\x07garbage")
    registry.register("broken", garbage, draft_dict(), check_contract=False)
    (report,) = registry.verify("broken")
    failed = [c for c in report.checks if not c.ok]
    assert [c.name for c in failed] == ["load model.onnx"]
    assert report.to_dict()["ok"] is False


def test_several_stores_first_owner_wins(tmp_path: Path, onnx_file: Path) -> None:
    shipped, extra = DirectoryStore(tmp_path / "shipped"), DirectoryStore(tmp_path / "extra")
    Registry([extra]).register("large", onnx_file, draft_dict())
    registry = Registry([shipped, extra])
    assert registry.names() == ["large"]
    assert registry.store_of("large") is extra
    registry.load("large")
    assert registry.register("large", onnx_file, draft_dict()).version == 2
    assert extra.versions("large") == [1, 2]
    registry.register("small", onnx_file, draft_dict())
    assert shipped.names() == ["small"]


def test_open_store_schemes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert isinstance(open_store(tmp_path), DirectoryStore)
    by_uri = open_store(tmp_path.as_uri())
    assert isinstance(by_uri, DirectoryStore)
    assert by_uri.root == tmp_path
    assert isinstance(open_store(str(tmp_path)), Store)
    with pytest.raises(UnknownStoreSchemeError, match=r"'s3'; known schemes: file://"):
        open_store("s3://bucket/models")
    monkeypatch.setattr(store_module, "_SCHEMES", dict(store_module._SCHEMES))

    @register_store_scheme("mem")
    def _mem(uri: str) -> Store:
        return DirectoryStore(tmp_path / uri.removeprefix("mem://"))

    mem = open_store("mem://x")
    assert isinstance(mem, DirectoryStore)
    assert mem.root == tmp_path / "x"
    assert sorted(store_module.known_schemes()) == ["file", "mem"]


def test_default_store_locations() -> None:
    assert default_store_locations(environ={}) == [SHIPPED_STORE]
    assert SHIPPED_STORE.is_dir()
    env = {EXTRA_STORES_ENV: " /srv/models, file:///mnt/big ,"}
    assert default_store_locations("/a", env) == ["/a", "/srv/models", "file:///mnt/big"]


def test_malformed_aliases_file_is_reported(two_versions: Registry, store_dir: Path) -> None:
    (store_dir / "tiny" / "aliases.json").write_text('{"production": "two"}')
    with pytest.raises(StoreError, match="alias -> version number"):
        two_versions.resolve("tiny")


def test_card_in_the_wrong_folder_is_refused(two_versions: Registry, store_dir: Path) -> None:
    (store_dir / "tiny" / "3").mkdir()
    source = store_dir / "tiny" / "2" / "card.json"
    (store_dir / "tiny" / "3" / "card.json").write_bytes(source.read_bytes())
    with pytest.raises(InvalidCardError, match="describes tiny@2"):
        two_versions.card("tiny@3")


def test_a_card_is_read_again_once_its_file_changed(
    two_versions: Registry, store_dir: Path
) -> None:
    """Cards are kept parsed by file (a version never changes), yet a file replaced or edited
    in place is read anew: a tampered card is never served from memory."""
    assert two_versions.card("tiny@1").intended_use != "changed"
    path = store_dir / "tiny" / "1" / "card.json"
    body = json.loads(path.read_text()) | {"intended_use": "changed"}
    path.chmod(0o644)
    path.write_text(json.dumps(body))
    assert two_versions.card("tiny@1").intended_use == "changed"
    path.write_text("{not json")
    with pytest.raises(InvalidCardError):
        two_versions.card("tiny@1")


def test_the_default_registry_reads_its_own_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BREASTDX_MODEL_STORE", str(tmp_path / "primary"))
    monkeypatch.setenv(EXTRA_STORES_ENV, f"{tmp_path / 'extra'}")
    uris = [store.uri for store in Registry.default().stores]
    assert uris == [(tmp_path / "primary").as_uri(), (tmp_path / "extra").as_uri()]
    given = [store.uri for store in Registry.default(tmp_path / "mine").stores]
    assert given == [(tmp_path / "mine").as_uri(), (tmp_path / "extra").as_uri()]
    monkeypatch.delenv("BREASTDX_MODEL_STORE")
    assert Registry.default().stores[0].uri == SHIPPED_STORE.as_uri()
