"""SentenceCorpus: cleaning, de-duplication, deterministic shuffled batches, resume by skip.

Oracles are brute-force re-implementations of the documented rules on small files.
"""

from __future__ import annotations

import gzip
import random
import time
from pathlib import Path

import pytest

from csekit.data import SentenceCorpus
from csekit.errors import ConfigError, DataError


def write(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def flatten(batches) -> list[str]:
    return [s for b in batches for s in b]


@pytest.fixture()
def plain(tmp_path: Path) -> Path:
    return write(tmp_path / "c.txt", [f"sentence number {i}." for i in range(103)])


# ---------------------------------------------------------------- cleaning and dedup
def test_cleaning_rules(tmp_path: Path) -> None:
    raw = (b"\xef\xbb\xbf  first line \r\n\n   \n\tsecond\t\n"
           + "a\u2028b stays one line\n".encode() + b"last without newline")
    (tmp_path / "c.txt").write_bytes(raw)
    c = SentenceCorpus(tmp_path / "c.txt")
    assert list(c) == ["first line", "second", "a\u2028b stays one line", "last without newline"]
    assert c.stats["lines"] == 6 and c.stats["blank"] == 2 and c.stats["sentences"] == 4
    assert flatten(c.batches(1, seed=0, shuffle=False)) == list(c)


def test_dedup_matches_a_set(tmp_path: Path) -> None:
    rng = random.Random(1)
    vocab = [f"s{i}" for i in range(40)]
    lines = [rng.choice(vocab) + rng.choice(["", " ", "  \t"]) for _ in range(500)] + ["", "  "]
    rng.shuffle(lines)
    path = write(tmp_path / "d.txt", lines)
    seen: set[str] = set()
    expected = []
    for line in lines:
        s = line.strip()
        if s and s not in seen:
            seen.add(s)
            expected.append(s)
    c = SentenceCorpus(path, dedup=True)
    assert list(c) == expected
    non_blank = sum(1 for x in lines if x.strip())
    assert c.stats["duplicates"] == non_blank - len(seen)
    assert len(c) == len(seen)
    assert len(SentenceCorpus(path, dedup=False)) == non_blank


def test_min_chars(tmp_path: Path) -> None:
    c = SentenceCorpus(write(tmp_path / "m.txt", ["ab", "abc", "abcd"]), min_chars=3)
    assert list(c) == ["abc", "abcd"] and c.stats["too_short"] == 1


# ---------------------------------------------------------------- shuffling and batches
def test_shuffle_is_a_seeded_permutation(plain: Path) -> None:
    c = SentenceCorpus(plain)
    everything = flatten(c.batches(1, seed=3, epoch=0))
    assert sorted(everything) == sorted(c) and everything != list(c)
    b10 = list(c.batches(10, seed=3, epoch=0))
    assert len(b10) == c.num_batches(10) == 10 and all(len(b) == 10 for b in b10)
    flat = flatten(b10)
    assert len(set(flat)) == 100 and set(flat) <= set(c)  # 3 sentences dropped with the tail
    assert flat == everything[:100]  # batching cuts one permutation
    again = SentenceCorpus(plain)  # a second instance (another process) agrees
    assert list(again.batches(10, seed=3, epoch=0)) == b10
    assert list(c.batches(10, seed=3, epoch=1)) != b10
    assert list(c.batches(10, seed=4, epoch=0)) != b10
    assert list(c.batches(10, seed=3, epoch=1)) == list(again.batches(10, seed=3, epoch=1))


@pytest.mark.parametrize("k", [0, 1, 4, 9, 10])
def test_skip_gives_the_tail(plain: Path, k: int) -> None:
    c = SentenceCorpus(plain)
    full = list(c.batches(10, seed=7, epoch=2))
    assert list(c.batches(10, seed=7, epoch=2, skip=k)) == full[k:]


def test_skip_out_of_range(plain: Path) -> None:
    with pytest.raises(ConfigError):
        list(SentenceCorpus(plain).batches(10, seed=0, skip=11))


def test_gzip_equals_plain(tmp_path: Path, plain: Path) -> None:
    gz = tmp_path / "c.txt.gz"
    gz.write_bytes(gzip.compress(plain.read_bytes()))
    p, g = SentenceCorpus(plain), SentenceCorpus(gz)
    assert list(g) == list(p) and len(g) == len(p)
    assert list(g.batches(8, seed=0, shuffle=False)) == list(p.batches(8, seed=0, shuffle=False))
    # fits in the shuffle buffer: the very same permutation as the plain file
    assert list(g.batches(8, seed=5, epoch=1)) == list(p.batches(8, seed=5, epoch=1))


def test_gzip_is_read_from_its_decompressed_copy(tmp_path: Path, plain: Path) -> None:
    """A .gz of any size is decompressed once into the index: exact shuffle, resumable."""
    gz = tmp_path / "c.txt.gz"
    gz.write_bytes(gzip.compress(plain.read_bytes()))
    g = SentenceCorpus(gz)
    copies = list(g.index_dir.glob("data-*.txt"))
    assert [c.read_bytes() for c in copies] == [plain.read_bytes()]
    full = list(g.batches(10, seed=1, epoch=0))
    assert full == list(SentenceCorpus(plain).batches(10, seed=1, epoch=0))
    assert list(g.batches(10, seed=1, epoch=0, skip=3)) == full[3:]
    assert list(g.batches(10, seed=1, epoch=1)) != full


def test_corpus_smaller_than_one_batch(tmp_path: Path) -> None:
    c = SentenceCorpus(write(tmp_path / "s.txt", ["one", "two", "three"]))
    assert len(c) == 3 and c.num_batches(3) == 1 and c.num_batches(4) == 0
    c.check_batch_size(3)
    with pytest.raises(DataError, match=r"3 sentences, fewer than one global batch of 4"):
        c.check_batch_size(4)
    with pytest.raises(DataError):
        next(c.batches(4, seed=0))


def test_file_changed_after_indexing(plain: Path) -> None:
    c = SentenceCorpus(plain)
    plain.write_text("changed\n" * 200, encoding="utf-8")
    with pytest.raises(DataError, match="changed after it was indexed"):
        next(c.batches(10, seed=0))


# ---------------------------------------------------------------- bad input
def one_line(err: pytest.ExceptionInfo[BaseException]) -> str:
    msg = str(err.value)
    assert "\n" not in msg
    return msg


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found"):
        SentenceCorpus(tmp_path / "nope.txt")


@pytest.mark.parametrize("content", [b"", b"\n\n   \n\t\r\n"])
def test_empty_or_blank_corpus(tmp_path: Path, content: bytes) -> None:
    (tmp_path / "e.txt").write_bytes(content)
    with pytest.raises(DataError, match="no sentences") as err:
        SentenceCorpus(tmp_path / "e.txt")
    one_line(err)


@pytest.mark.parametrize("bad, problem", [(b"caf\xe9 au lait", "invalid UTF-8"),
                                          (b"nul\x00byte", "NUL byte")])
def test_bad_line_error_names_file_and_line(tmp_path: Path, bad: bytes, problem: str) -> None:
    path = tmp_path / "b.txt"
    path.write_bytes(b"good one\n\ngood two\n" + bad + b"\ngood three\n")
    with pytest.raises(DataError) as err:
        SentenceCorpus(path)
    msg = one_line(err)
    assert f"{path}:4:" in msg and problem in msg and "--on-bad-line skip" in msg


def test_bad_lines_skipped_and_counted(tmp_path: Path) -> None:
    path = tmp_path / "b.txt"
    path.write_bytes(b"a\n\xff\xfe\nb\nx\x00y\nc\n\xc3\n")
    c = SentenceCorpus(path, on_bad_line="skip")
    assert list(c) == ["a", "b", "c"]
    assert c.stats["bad_lines"] == 3 and c.bad_line_numbers == [2, 4, 6]
    assert sorted(flatten(c.batches(1, seed=0))) == ["a", "b", "c"]
    with pytest.raises(DataError, match="no sentences"):
        (tmp_path / "allbad.txt").write_bytes(b"\xff\n\x00\n")
        SentenceCorpus(tmp_path / "allbad.txt", on_bad_line="skip")


def test_bad_option() -> None:
    with pytest.raises(ConfigError):
        SentenceCorpus("x", on_bad_line="ignore")  # type: ignore[arg-type]


def test_corrupt_gzip(tmp_path: Path, plain: Path) -> None:
    gz = tmp_path / "cut.txt.gz"
    gz.write_bytes(gzip.compress(plain.read_bytes())[:-20])
    with pytest.raises(DataError, match="cannot read") as err:
        SentenceCorpus(gz)
    one_line(err)


def test_ten_megabyte_line_is_bounded(tmp_path: Path) -> None:
    import tracemalloc

    path = tmp_path / "long.txt"
    with open(path, "wb") as f:
        f.write(b"before\n")
        f.write(("word " * 2_000_000).encode())  # a single 10 MB line
        f.write(("\né" * 3).encode() + b"\nafter\n")
    tracemalloc.start()
    start = time.perf_counter()
    c = SentenceCorpus(path, max_chars=100)
    batches = flatten(c.batches(1, seed=0, shuffle=False))
    elapsed = time.perf_counter() - start
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert elapsed < 5.0
    assert peak < 3 * 2**20  # far below the 10 MB of the line
    assert batches == ["before", ("word " * 20).strip(), "é", "é", "é", "after"]
    assert c.stats["truncated"] == 1


# ---------------------------------------------------------------- the real corpus
def test_real_corpus_indexes_quickly(wiki_corpus: Path) -> None:
    start = time.perf_counter()
    c = SentenceCorpus(wiki_corpus)
    elapsed = time.perf_counter() - start
    assert len(c) == 417_601 and c.stats["bad_lines"] == 0
    assert elapsed < 10.0, f"indexing took {elapsed:.1f}s"
    first = next(c.batches(64, seed=42, epoch=0))
    with open(wiki_corpus, encoding="utf-8") as f:
        lines = {line.strip() for line in f}
    assert len(first) == 64 and set(first) <= lines


def test_random_lines_against_brute_force(tmp_path: Path) -> None:
    """Random lines around the byte cap, multi-byte characters, odd whitespace: the streamed
    reader (``list``), the random-access reader (``batches``) and a whole-line oracle agree."""
    rng = random.Random(0)
    max_chars = 16
    alphabet = ["a", "b", " ", "\t", "\r", "é", "€", "𝄞", "\u2028"]
    lines = ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 90))) for _ in range(400)]
    path = tmp_path / "r.txt"
    path.write_bytes("\n".join(lines).encode("utf-8"))  # no trailing newline
    expected = []
    for line in lines:
        full = line.strip()
        if not full:
            continue
        if len(line.encode("utf-8")) <= 4 * max_chars:  # within the byte cap: exact rule
            expected.append(full[:max_chars].rstrip())
        else:  # over the cap: a prefix of the same rule, never longer than max_chars
            expected.append(None)
    c = SentenceCorpus(path, max_chars=max_chars)
    got = list(c)
    assert len(got) == len(expected)
    stripped = [line.strip() for line in lines if line.strip()]
    for g, e, full in zip(got, expected, stripped):
        if e is not None:
            assert g == e
        else:
            assert full.startswith(g) and len(g) <= max_chars
    assert flatten(c.batches(1, seed=0, shuffle=False)) == got
    assert sorted(flatten(c.batches(1, seed=9))) == sorted(got)
