"""One contract for every store adapter, run against Qdrant Edge and qdrant-client local mode."""

from __future__ import annotations

import socket
import tarfile
import uuid
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from kbguard.core.durable import copy_tree_sparse
from kbguard.errors import SnapshotError, StoreError, StoreUnavailable
from kbguard.kb.read_service import SharedStore
from kbguard.store import CollectionInfo, Point, Store, VectorSpec, open_store
from kbguard.store._common import canonical_ids
from kbguard.store.edge import EdgeStore
from kbguard.store.qdrant import QdrantStore

SPECS = (VectorSpec("local", 8, "cosine"), VectorSpec("primary", 16, "dot"))


def _edge(tmp_path: Path) -> Store:
    return EdgeStore(tmp_path / "shard")


def _qdrant_local(tmp_path: Path) -> Store:
    return QdrantStore("kb", path=tmp_path / "qdrant")


@pytest.fixture(params=[_edge, _qdrant_local], ids=["edge", "qdrant-local"])
def make_store(request, tmp_path) -> Callable[[], Store]:
    """A factory of stores on one location, so a test can close and reopen it."""
    opened: list[Store] = []

    def make() -> Store:
        store = request.param(tmp_path)
        opened.append(store)
        return store

    yield make
    for store in opened:
        store.close()


@pytest.fixture
def store(make_store) -> Store:
    s = make_store()
    s.create(SPECS)
    return s


def _unit(rng: np.random.Generator, dim: int) -> np.ndarray:
    """A float32 vector whose float32 norm is exactly 1.

    One division by the norm leaves about a third of vectors a rounding step off 1, and
    qdrant-client's local mode divides every cosine vector by its norm again on write, so only
    exact unit vectors can be expected back bit-for-bit from every adapter.
    """
    while True:
        v = rng.normal(size=dim).astype(np.float32)
        v = (v / np.linalg.norm(v)).astype(np.float32)
        if np.linalg.norm(v) == np.float32(1.0):
            return v


def _points(n: int, seed: int = 0) -> list[Point]:
    rng = np.random.default_rng(seed)
    return [
        Point(
            id=str(uuid.UUID(int=(int(rng.integers(1, 2**62)) << 64) | i)),
            vectors={"local": _unit(rng, 8), "primary": _unit(rng, 16)},
            payload={"path": f"docs/{i}.md", "n": i, "tags": ["a", str(i)], "meta": {"h": i * 7}},
        )
        for i in range(n)
    ]


def _by_id(points: list[Point]) -> dict[str, Point]:
    return {p.id: p for p in points}


def _assert_same(got: Point, want: Point) -> None:
    assert got.id == want.id
    assert got.payload == want.payload
    assert set(got.vectors) == set(want.vectors)
    for name, vec in want.vectors.items():
        assert got.vectors[name].dtype == np.float32
        assert np.array_equal(got.vectors[name], vec), name


def test_describe_before_and_after_create(make_store):
    s = make_store()
    assert s.describe() == CollectionInfo(exists=False)
    s.create(SPECS)
    assert s.describe() == CollectionInfo(exists=True, vectors=SPECS, points=0)
    s.upsert(_points(3))
    assert s.describe().points == 3


def test_ensure_accepts_same_config_and_rejects_a_different_one(store):
    store.ensure(SPECS)
    store.create(SPECS)
    changed = (VectorSpec("local", 8, "cosine"), VectorSpec("primary", 32, "dot"))
    with pytest.raises(StoreError, match=r"primary\(16-d dot\).*rebuild --full"):
        store.ensure(changed)
    with pytest.raises(StoreError, match="rebuild --full"):
        store.create((VectorSpec("local", 8, "euclid"),))
    assert store.describe().vectors == SPECS


def test_create_rejects_bad_specs(make_store):
    s = make_store()
    with pytest.raises(StoreError, match="manhattan"):
        s.create((VectorSpec("x", 4, "manhattan"),))
    with pytest.raises(StoreError, match="twice"):
        s.create((VectorSpec("x", 4), VectorSpec("x", 4)))
    assert s.describe().exists is False


def test_upsert_then_retrieve_and_scroll_are_bit_exact(store):
    points = _points(50)
    store.upsert(points)
    want = _by_id(points)

    got = store.retrieve([p.id for p in points[:10]])
    assert sorted(p.id for p in got) == sorted(p.id for p in points[:10])
    for p in got:
        _assert_same(p, want[p.id])

    scrolled = [p for page in store.scroll(batch_size=16) for p in page]
    assert len(scrolled) == 50
    for p in scrolled:
        _assert_same(p, want[p.id])


def test_cosine_vectors_come_back_as_stored_by_the_engine(store):
    # Vectors normalised by one division, as an embedder does: some have a float32 norm one
    # rounding step off 1. Edge keeps any vector that is normalised within rounding as it is;
    # local mode stores exactly v / norm(v). verify has to compare against what each keeps.
    rng = np.random.default_rng(11)
    points = []
    for i in range(200):
        raw = rng.normal(size=8).astype(np.float32)
        vec = (raw / np.linalg.norm(raw)).astype(np.float32)
        points.append(Point(str(uuid.UUID(int=i + 1)), {"local": vec}, {}))
    store.upsert(points)
    got = _by_id(store.retrieve([p.id for p in points]))
    off_by_rounding = sum(np.linalg.norm(p.vectors["local"]) != np.float32(1.0) for p in points)
    assert off_by_rounding > 20
    for p in points:
        sent = p.vectors["local"]
        if isinstance(store, EdgeStore):
            assert np.array_equal(got[p.id].vectors["local"], sent)
        else:
            assert np.array_equal(got[p.id].vectors["local"], sent / np.linalg.norm(sent))


def test_ids_come_back_canonical_and_missing_ids_are_skipped(store):
    point = _points(1)[0]
    store.upsert([Point(point.id.upper(), point.vectors, point.payload)])
    got = store.retrieve([point.id.upper(), str(uuid.uuid4())], with_vectors=False)
    assert [p.id for p in got] == [point.id]
    assert got[0].vectors == {}
    assert got[0].payload == point.payload
    assert store.retrieve([]) == []


def test_canonical_ids_pass_canonical_lists_through_and_refuse_non_uuids():
    a, b = str(uuid.uuid4()), str(uuid.uuid4())
    assert canonical_ids([a, b]) == [a, b]
    assert canonical_ids([a.upper(), uuid.UUID(b)]) == [a, b]
    assert canonical_ids([]) == []
    for bad in (["not-a-uuid"], [a + "\n" + b], [7]):
        with pytest.raises(StoreError, match="not a UUID"):
            canonical_ids(bad)


def test_a_point_may_carry_only_some_of_the_vectors(store):
    point = _points(1)[0]
    store.upsert([Point(point.id, {"local": point.vectors["local"]}, {})])
    [got] = store.retrieve([point.id])
    assert set(got.vectors) == {"local"}
    assert np.array_equal(got.vectors["local"], point.vectors["local"])
    assert got.payload == {}


def test_retrieve_arrays_holds_what_retrieve_returns(store):
    points = _points(40, seed=3)
    some = Point(str(uuid.uuid4()), {"local": points[0].vectors["local"]}, {"only": "local"})
    store.upsert([*points, some])
    want = _by_id([*points, some])
    ids = [p.id for p in points[::3]] + [some.id.upper(), str(uuid.uuid4())]
    store.will_read_all()  # a read-ahead hint: changes nothing

    for dims in ({"local": 8, "primary": 16}, {"local": 8}, {"primary": 16}):
        for arrays in (store.retrieve_arrays(ids, dims), Store.retrieve_arrays(store, ids, dims)):
            assert sorted(arrays.ids) == sorted([p.id for p in points[::3]] + [some.id])
            assert len(arrays.payloads) == len(arrays.ids)
            for name, dim in dims.items():
                assert arrays.vectors[name].shape == (len(arrays.ids), dim)
                assert arrays.vectors[name].dtype == np.float32
                assert arrays.odd[name] == {}
            for row, pid in enumerate(arrays.ids):
                assert arrays.payloads[row] == want[pid].payload
                for name in dims:
                    stored = arrays.vector(name, row)
                    if name in want[pid].vectors:
                        assert arrays.present[name][row]
                        assert np.array_equal(stored, want[pid].vectors[name])
                    else:
                        assert not arrays.present[name][row] and stored is None

    # asked for another length than the collection's: the vectors come back as they are, aside
    arrays = store.retrieve_arrays([points[1].id], {"local": 4})
    assert not arrays.present["local"][0]
    assert np.array_equal(arrays.odd["local"][0], points[1].vectors["local"])

    # no vectors asked for: ids and payloads only
    arrays = store.retrieve_arrays([points[2].id], {})
    assert arrays.ids == [points[2].id] and arrays.vectors == {}
    assert arrays.payloads == [points[2].payload]
    assert store.retrieve_arrays([], dims).ids == []


def test_upserting_an_id_twice_leaves_one_point(store):
    first, second = _points(2)
    store.upsert([first])
    store.upsert([Point(first.id, second.vectors, {"v": 2})])
    assert store.count() == 1
    [got] = store.retrieve([first.id])
    assert got.payload == {"v": 2}
    assert np.array_equal(got.vectors["primary"], second.vectors["primary"])


def test_delete_removes_points_and_ignores_missing_ids(store):
    points = _points(5)
    store.upsert(points)
    store.delete([points[0].id, points[1].id, str(uuid.uuid4())])
    assert store.count() == 3
    assert store.retrieve([points[0].id, points[1].id]) == []
    store.delete([])
    store.delete([points[0].id])
    assert sorted(p.id for page in store.scroll() for p in page) == sorted(p.id for p in points[2:])


def test_scroll_pages_cover_every_point_once(store):
    # qdrant-client's local mode is slow to write (2,500 points took 40-55 s on a busy 2-core
    # machine): a tenth of the points and of the page size checks the same paging there.
    # Edge writes them in well under a second and keeps the full size.
    n, size = (2500, 1000) if isinstance(store, EdgeStore) else (250, 100)
    points = _points(n, seed=7)
    store.upsert(points)
    pages = list(store.scroll(batch_size=size, with_vectors=False))
    assert [len(p) for p in pages] == [size, size, size // 2]
    ids = [p.id for page in pages for p in page]
    assert len(ids) == len(set(ids)) == n
    assert set(ids) == {p.id for p in points}
    assert all(p.vectors == {} for page in pages for p in page)


def test_scroll_of_an_empty_collection_yields_no_pages(store):
    assert list(store.scroll()) == []


def test_query_returns_the_nearest_point_first_with_its_payload(store):
    points = _points(40, seed=3)
    store.upsert(points)
    target = points[17]
    rng = np.random.default_rng(1)
    probe = target.vectors["primary"] + 0.01 * rng.normal(size=16).astype(np.float32)
    hits = store.query("primary", probe, 5)
    assert len(hits) == 5
    assert hits[0].id == target.id
    assert hits[0].payload == target.payload
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    assert hits[0].score == pytest.approx(float(np.dot(probe, target.vectors["primary"])), abs=1e-5)


def test_unknown_vector_name_or_wrong_dimension_is_a_store_error(store):
    point = _points(1)[0]
    with pytest.raises(StoreError):
        store.upsert([Point(point.id, {"local": np.ones(3, dtype=np.float32)}, {})])
    with pytest.raises(StoreError):
        store.query("nope", np.ones(8, dtype=np.float32), 1)
    with pytest.raises(StoreError, match="not a UUID"):
        store.upsert([Point("chunk-1", point.vectors, {})])
    assert store.count() == 0


def test_flush_close_and_reopen_keep_the_data(make_store):
    s = make_store()
    s.create(SPECS)
    points = _points(30)
    s.upsert(points)
    s.delete([points[0].id])
    s.flush()
    s.close()
    s.close()

    reopened = make_store()
    assert reopened.describe() == CollectionInfo(exists=True, vectors=SPECS, points=29)
    got = _by_id(reopened.retrieve([p.id for p in points]))
    assert set(got) == {p.id for p in points[1:]}
    for p in points[1:]:
        _assert_same(got[p.id], p)


def test_drop_removes_everything(store, make_store):
    store.upsert(_points(10))
    store.drop()
    assert store.describe() == CollectionInfo(exists=False)
    store.drop()
    store.close()
    fresh = make_store()
    assert fresh.describe().exists is False
    fresh.create(SPECS)
    assert fresh.count() == 0


# -- Edge only -----------------------------------------------------------------------------


def test_edge_drop_deletes_the_folder_and_no_other(tmp_path):
    s = EdgeStore(tmp_path / "shard")
    s.create(SPECS)
    s.drop()
    assert not (tmp_path / "shard").exists()

    other = tmp_path / "not-a-shard"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    with pytest.raises(StoreError, match="does not look like an Edge store"):
        EdgeStore(other).drop()
    assert (other / "notes.txt").read_text() == "keep me"


def test_edge_second_opener_is_told_to_wait(tmp_path):
    # The engine locks the WAL per open, so a second opener in this process is refused exactly
    # as one in another process would be.
    first = EdgeStore(tmp_path / "shard")
    first.create(SPECS)
    second = EdgeStore(tmp_path / "shard")
    try:
        locked = "is open in another process; wait for it to finish"
        with pytest.raises(StoreUnavailable, match=locked):
            second.count()
        with pytest.raises(StoreUnavailable, match="open in another process"):
            second.drop()
        assert first.count() == 0
        first.close()
        assert second.count() == 0
    finally:
        first.close()
        second.close()


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_edge_damaged_segment_is_store_unavailable(tmp_path, damage):
    folder = tmp_path / "shard"
    s = EdgeStore(folder)
    s.create(SPECS)
    s.upsert(_points(20))
    s.close()
    [segment_json] = folder.glob("segments/*/segment.json")
    if damage == "truncate":
        segment_json.write_bytes(segment_json.read_bytes()[:7])
    else:
        segment_json.write_bytes(bytes(range(256)))

    damaged = EdgeStore(folder)
    advice = r"cannot be opened.*kbguard restore --latest.*rebuild --full"
    with pytest.raises(StoreUnavailable, match=advice):
        damaged.describe()
    damaged.drop()
    assert not folder.exists()


def test_edge_missing_store_says_how_to_build_it(tmp_path):
    with pytest.raises(StoreUnavailable, match="no Edge store.*kbguard rebuild`: it writes"):
        EdgeStore(tmp_path / "nowhere").count()


# -- qdrant-client only --------------------------------------------------------------------


def test_qdrant_unreachable_server_names_the_url():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    s = QdrantStore("kb", url=url)
    with pytest.raises(StoreUnavailable, match=f"Qdrant server at {url} cannot be reached"):
        s.describe()
    s.close()


def test_qdrant_local_folder_held_by_another_client(tmp_path):
    first = QdrantStore("kb", path=tmp_path / "q")
    first.create(SPECS)
    second = QdrantStore("kb", path=tmp_path / "q")
    try:
        with pytest.raises(StoreUnavailable, match="open in another process"):
            second.describe()
    finally:
        first.close()
        second.close()


def test_qdrant_store_needs_exactly_one_location(tmp_path):
    with pytest.raises(StoreError, match="exactly one"):
        QdrantStore("kb")
    with pytest.raises(StoreError, match="exactly one"):
        QdrantStore("kb", url="http://localhost:6333", path=tmp_path)


# -- open_store ----------------------------------------------------------------------------


def test_open_store_picks_the_adapter(tmp_path):
    edge = open_store("edge", path=tmp_path / "shard")
    assert isinstance(edge, EdgeStore) and edge.path == tmp_path / "shard"
    local = open_store("qdrant", path=tmp_path / "q", collection="docs")
    assert isinstance(local, QdrantStore) and local.collection == "docs"
    remote = open_store("qdrant", url="http://localhost:6333")
    assert isinstance(remote, QdrantStore) and remote.url == "http://localhost:6333"
    with pytest.raises(StoreError, match="needs the shard folder path"):
        open_store("edge", url="http://localhost:6333")


def test_open_store_rejects_an_unknown_backend():
    known = r"Unknown store backend 'chroma'; the known backends are edge, qdrant\."
    with pytest.raises(StoreError, match=known):
        open_store("chroma", path=Path("x"))


def test_a_staging_store_swaps_in_and_drop_leftovers_clears_the_rest(make_store):
    live = make_store()
    live.create(SPECS)
    old, new = _points(3, seed=1), _points(4, seed=2)
    live.upsert(old)
    live.flush()
    staging = live.staging("t1")
    staging.create(SPECS)
    staging.upsert(new)
    staging.flush()
    assert live.count() == 3                       # building beside it changes nothing

    live.swap_in(staging)
    live.swap_in(staging)                          # a second call (a rerun) is a no-op
    live.close()
    reopened = make_store()
    got = _by_id(reopened.retrieve([p.id for p in new + old]))
    assert set(got) == {p.id for p in new}
    for p in new:
        _assert_same(got[p.id], p)
    if isinstance(reopened, EdgeStore):
        with EdgeStore(reopened.path.with_name("shard.replaced")) as replaced:
            assert replaced.count() == 3               # the old shard waits until dropped
    reopened.drop_leftovers()
    assert reopened.count() == 4
    assert sorted(p.name for p in reopened.path.parent.iterdir()) == [reopened.path.name]


def test_swap_in_refuses_a_store_that_is_not_its_staging(make_store, tmp_path):
    live = make_store()
    live.create(SPECS)
    other = EdgeStore(tmp_path / "elsewhere") if isinstance(live, QdrantStore) else \
        QdrantStore("kb", path=tmp_path / "elsewhere")
    with pytest.raises(StoreError, match="is not a staging"):
        live.swap_in(other)


# -- the store's own files: what snapshots copy and restores copy back -------------------------


def test_native_files_handed_over_closed_and_held_are_the_store(make_store):
    """A store with files of its own hands them over closed and held: no other opener gets in
    meanwhile, a copy of them loads as the same store, and the store reopens afterwards. A
    store without such files says so and hands over nothing."""
    live = make_store()
    live.create(SPECS)
    points = _points(20)
    live.upsert(points)
    live.flush()
    native = live.native_files()
    if native is None:
        with pytest.raises(StoreError, match="keeps no files of its own"), \
                live.closed_and_held():
            pass
        assert live.count() == 20
        return
    assert native.engine and native.engine_version is not None  # installed: it reads them
    copy = live.staging("copy")
    target = copy.native_files()
    assert target is not None and target.path != native.path
    assert (target.engine, target.engine_version) == (native.engine, native.engine_version)
    with live.closed_and_held() as folder:
        assert folder == native.path
        with pytest.raises(StoreUnavailable):
            make_store().count()                   # held: nobody writes while it is read
        copy_tree_sparse(folder, target.path)
    assert live.count() == 20                      # reopened by the next call
    try:
        assert copy.describe() == CollectionInfo(exists=True, vectors=SPECS, points=20)
        got = _by_id(copy.retrieve([p.id for p in points]))
        for p in points:
            _assert_same(got[p.id], p)
    finally:
        copy.close()


def test_a_shard_snapshot_unpacks_only_into_a_store_that_takes_them(make_store, tmp_path):
    from tests.kbtest import shard_snapshot

    source = EdgeStore(tmp_path / "source")
    source.create(SPECS)
    points = _points(10)
    source.upsert(points)
    source.close()
    archive = shard_snapshot(tmp_path / "source", tmp_path / "shard.snapshot")
    with tarfile.open(archive, "a") as tar:        # a member outside a shard's layout
        stray = tmp_path / "notes.txt"
        stray.write_text("not part of a shard")
        tar.add(stray, arcname="notes.txt")
    scratch = tmp_path / "scratch.tar"
    target = make_store().staging("import")
    if not target.unpacks_shard_snapshots:
        with pytest.raises(StoreError, match="cannot take in a Qdrant shard snapshot"):
            target.unpack_shard_snapshot(archive, scratch)
        assert target.describe().exists is False
        return
    junk = tmp_path / "junk.snapshot"
    junk.write_bytes(b"not a tar archive" * 100)
    with pytest.raises(SnapshotError, match="is not a Qdrant shard snapshot the engine can"):
        target.unpack_shard_snapshot(junk, scratch)
    assert target.unpack_shard_snapshot(archive, scratch) == ["notes.txt"]
    assert not scratch.exists()
    try:
        assert target.describe() == CollectionInfo(exists=True, vectors=SPECS, points=10)
        got = _by_id(target.retrieve([p.id for p in points]))
        for p in points:
            _assert_same(got[p.id], p)
    finally:
        target.close()


def test_a_shared_store_has_the_capabilities_of_the_store_it_wraps(make_store):
    inner = make_store()
    shared = SharedStore(inner)
    assert shared.native_files() == inner.native_files()
    assert shared.unpacks_shard_snapshots == inner.unpacks_shard_snapshots
