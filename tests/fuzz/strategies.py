"""Hypothesis strategies for the fuzz tests: seed messages, and seeds damaged or disguised.

Seeds: a few built-in messages (so the fuzz tests run without the corpus), a fixed sample of the
shared corpus when it is there ($FILTERD_CORPUS), and every message of corpus/hostile/ when it
exists.  A drawn input is one seed with up to `MAX_OPS` mutations from tests/fuzz/mutations.py
applied in turn; hypothesis shrinks a failure towards fewer, smaller mutations of a smaller seed.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from hypothesis import strategies as st

from tests.fuzz import mutations as m
from tests.fuzz.harness import profile_name
from tests.fuzz.offline import CORPUS, HOSTILE

MAX_OPS = 5
SEED_SAMPLE = 160  # corpus messages used as seeds (a fixed, spread-out sample)
MAX_SEED_BYTES = 256 * 1024
# The longest header line made.  The short run stays at 40 KB: enough to show a quadratic cost
# against the 2 s bound (tests/fuzz/test_fuzz_regressions.py pins the known ones) without one
# input costing minutes; the long run goes past Postfix's default header_size_limit (100 KB).
MAX_HEADER = 40_000 if profile_name() == "ci" else 200_000

BUILTIN_SEEDS: tuple[bytes, ...] = (
    b"From: a@example.org\r\nTo: b@example.net\r\nSubject: hello\r\n\r\nhello world\r\n",
    b"From: =?utf-8?B?w6l0w6k=?= <x@example.com>\r\nSubject: =?iso-8859-1?Q?caf=E9?=\r\n"
    b"Content-Type: text/html; charset=utf-8\r\n\r\n<html><body><a href='http://x.example/a'>"
    b"click</a><!-- c --><script>x</script><p>buy now</body></html>\r\n",
    b"From: s@example.biz\r\nSubject: offer\r\nMIME-Version: 1.0\r\n"
    b'Content-Type: multipart/alternative; boundary="b1"\r\n\r\n--b1\r\n'
    b"Content-Type: text/plain\r\n\r\nFREE money http://spam.example/x\r\n--b1\r\n"
    b"Content-Type: text/html\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n"
    b'<b>FREE=20money</b> <a href=3D"http://spam.example/x">here</a>\r\n--b1--\r\n',
    b"From: f@example.net\r\nSubject: file\r\nMIME-Version: 1.0\r\n"
    b'Content-Type: multipart/mixed; boundary="z"\r\n\r\n--z\r\nContent-Type: text/plain\r\n\r\nsee\r\n'
    b'--z\r\nContent-Type: application/octet-stream; name="a.exe"\r\n'
    b"Content-Transfer-Encoding: base64\r\n\r\nTVqQAAMAAAAEAAAA//8AALgAAAAA\r\n--z--\r\n",
)


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file()) if folder.is_dir() else []


def corpus_files() -> list[Path]:
    """Every message of the shared corpus, ham and spam, in a fixed order ([] without it)."""
    names = ("spamassassin-public", "csdmc2010", "spamassassin-testdata", "malware-testmails")
    return [p for name in names for label in ("ham", "spam") for p in _files(CORPUS / name / label)]


def spam_files() -> list[Path]:
    names = ("spamassassin-public", "csdmc2010", "spamassassin-testdata")
    return [p for name in names for p in _files(CORPUS / name / "spam")]


def sample(paths: list[Path], count: int) -> list[bytes]:
    """`count` messages spread evenly over `paths`, skipping very large ones (seeds are mutated)."""
    if not paths:
        return []
    step = max(1, len(paths) // count)
    out = [p.read_bytes() for p in paths[::step]]
    return [raw for raw in out if len(raw) <= MAX_SEED_BYTES][:count]


def hostile_messages() -> list[tuple[str, bytes]]:
    """corpus/hostile/ (built by corpus/make_hostile.py), when it exists."""
    return [(p.name, p.read_bytes()) for p in _files(HOSTILE)]


SEEDS: list[bytes] = [
    *BUILTIN_SEEDS,
    *sample(corpus_files(), SEED_SAMPLE),
    *(r for _, r in hostile_messages()),
]


def _ops() -> st.SearchStrategy[Callable[[bytes], bytes]]:
    """One mutation, its parameters drawn."""
    pos = st.integers(0, 1 << 20)
    small = st.integers(1, 4096)
    junk = st.binary(min_size=1, max_size=64) | st.sampled_from(
        [b"\x00", b"\r", b"\n", b"\r\n\r\n", b"\xff\xfe", b"\x80\x81\xc3", b"=?", b"?=", b"--", b":"]
    )
    charset = st.sampled_from(m.CHARSETS) | st.text(max_size=12)
    header_name = st.sampled_from([b"Subject", b"From", b"To", b"Content-Type", b"Received", b"X-Mailer"])
    return st.one_of(
        st.builds(lambda p, k: lambda r: m.flip(r, p, k), pos, st.integers(1, 255)),
        st.builds(lambda p, d: lambda r: m.insert(r, p, d), pos, junk),
        st.builds(lambda p, n: lambda r: m.delete(r, p, n), pos, small),
        st.builds(
            lambda p, n, t: lambda r: m.duplicate(r, p, n, t), pos, st.integers(1, 256), st.integers(2, 200)
        ),
        st.builds(lambda n: lambda r: m.truncate(r, n), pos),
        st.builds(
            lambda n, s: lambda r: m.wrap_in_multipart(r, n, s),
            st.integers(1, 300),
            st.sampled_from([b"mixed", b"alternative", b"related", b"x-weird"]),
        ),
        st.builds(lambda n: lambda r: m.nest(r, n), st.integers(1, 120)),
        st.builds(lambda e: lambda r: m.reencode(r, e), st.sampled_from(["base64", "quoted-printable"])),
        st.just(m.as_attachment_forward),
        st.builds(lambda n: lambda r: m.fold_headers(r, n), st.integers(1, 5)),
        st.builds(
            lambda name, text, cs, q, i: (
                lambda r: m.add_header(
                    r, name + b": " + m.encoded_word(text, cs.encode("ascii", "replace").decode(), q), i
                )
            ),
            header_name,
            st.binary(max_size=80),
            charset,
            st.booleans(),
            st.integers(0, 30),
        ),
        st.builds(
            lambda name, d, i: lambda r: m.add_header(r, name + b": a" + d + b"b", i),
            header_name,
            junk,
            st.integers(0, 30),
        ),
        st.builds(
            lambda name, n, s: lambda r: m.long_header(r, name, n, s),
            header_name,
            st.integers(1000, MAX_HEADER),
            st.booleans(),
        ),
        st.builds(lambda n, name: lambda r: m.many_headers(r, n, name), st.integers(10, 5000), header_name),
        st.builds(
            lambda trap, n, p: lambda r: m.insert(r, p, trap.encode() * n),
            st.sampled_from(m.HTML_TRAPS),
            st.integers(1, 5000),
            pos,
        ),
    )


@st.composite
def messages(draw: st.DrawFn, seeds: list[bytes] | None = None, max_ops: int = MAX_OPS) -> bytes:
    """A seed with up to `max_ops` mutations."""
    raw = draw(st.sampled_from(seeds or SEEDS))
    for op in draw(st.lists(_ops(), max_size=max_ops)):
        raw = op(raw)
    return raw


# HTML for the scanner alone: pieces of markup, traps and text glued in any order.
html_fragments = st.lists(
    st.sampled_from(m.HTML_TRAPS)
    | st.sampled_from([">", "-->", "</script>", "</style>", "'", '"', "=", " ", "\n", "word", "http://a.b/"])
    | st.text(max_size=20),
    max_size=200,
).map("".join)


@st.composite
def repeated_html(draw: st.DrawFn) -> str:
    """One trap repeated thousands of times, possibly with text between: the shape of a slow input."""
    trap = draw(st.sampled_from(m.HTML_TRAPS))
    filler = draw(st.sampled_from(["", " ", "x", "a b ", "\n"]))
    return (trap + filler) * draw(st.integers(1, 20_000))
