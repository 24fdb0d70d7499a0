"""Planner invariants: every tensor byte is covered once, requests aligned and bounded."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from loader.format import Header, TensorInfo
from loader.plan import ALIGN, FileSpec, Kind, assign_owners, build_plan


def header(sizes: list[int], hlen: int, path: str = "f") -> Header:
    ts, pos = [], 0
    for i, n in enumerate(sizes):
        ts.append(TensorInfo(f"{path}.t{i}", "U8", (n,), pos, pos + n))
        pos += n
    return Header(path, hlen, 8 + hlen + pos, tuple(ts), None, b"")


def check(plan_files: list[FileSpec]) -> None:
    plan = build_plan(plan_files)
    covered: dict[int, list[tuple[int, int]]] = {}
    for r in plan.requests:
        spec = plan_files[r.file]
        assert r.offset % ALIGN == 0 and r.length % ALIGN == 0
        assert 0 < r.length <= spec.chunk
        assert r.need <= r.length
        for p in r.pieces:
            t = plan.tensors[p.tensor]
            assert t.file == r.file
            # The piece's bytes are at the right file position.
            assert r.offset + p.src == t.start + p.dst
            assert p.src + p.length <= r.need
            covered.setdefault(p.tensor, []).append((p.dst, p.length))
        if r.own >= 0:
            t = plan.tensors[r.own]
            assert t.kind is Kind.OWN
            assert r.offset - t.own_base == r.own_offset
    for t in plan.tensors:
        if t.kind is Kind.EMPTY:
            assert not t.requests
            continue
        spans = sorted(covered[t.index])
        pos = 0
        for dst, n in spans:
            assert dst == pos
            pos += n
        assert pos == t.nbytes
        assert t.requests == sorted(t.requests)
    # Requests are in file order.
    keys = [(r.file, r.offset) for r in plan.requests]
    assert keys == sorted(keys)


sizes_s = st.lists(st.one_of(st.integers(0, 300), st.integers(0, 3 * 65536)), max_size=40)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(sizes_s, min_size=1, max_size=3),
    st.integers(2, 300),
    st.sampled_from([16, 17, 32]),
    st.sampled_from([None, 1, 5000, 40000]),
)
def test_plan_covers_every_byte(
    files: list[list[int]], hlen: int, pages: int, own: int | None
) -> None:
    specs = [FileSpec(header(s, hlen, f"f{i}"), pages * ALIGN, own) for i, s in enumerate(files)]
    check(specs)


def test_small_tensors_coalesce_and_big_ones_are_owned() -> None:
    h = header([100] * 1000 + [10 << 20] + [7], 120)
    plan = build_plan([FileSpec(h, 16 << 20, 1 << 20)])
    assert plan.tensors[1000].kind is Kind.OWN
    staged = [r for r in plan.requests if r.own < 0]
    assert len(staged) == 2  # 1000 tiny tensors in one read, the last one in another
    assert len(plan.tensors[1000].requests) == 1


def test_tensor_fitting_a_chunk_is_not_split() -> None:
    h = header([60000, 60000, 60000], 8)
    plan = build_plan([FileSpec(h, 16 * ALIGN, None)])
    for t in plan.tensors:
        assert len(t.requests) == 1


def test_owners_balanced_by_bytes() -> None:
    h = header([1 << 20] * 64, 8)
    plan = build_plan([FileSpec(h, 1 << 20, None)])
    assign_owners(plan, 3)
    per = [0, 0, 0]
    for r in plan.requests:
        per[r.owner] += r.length
    assert max(per) - min(per) <= 2 * (1 << 20)
    owners = [r.owner for r in plan.requests]
    assert owners == sorted(owners)  # contiguous shares
