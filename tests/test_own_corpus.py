"""The project's own hand-written corpus (corpus/ham, spam, edge) against its expected verdicts.

Every message is scanned as `filterctl scan FILE` scans it: `filterd.driver.scan` with no SMTP
context, the shipped default configuration with the checks that need the network turned off (no
DNS, Redis or clamd, as tests/fuzz/offline.py does it), so the rules and the shipped Bayes model
decide.  corpus/manifest.toml says, per file, the action expected and the symbols that must be
there or must not.  A spam that today's pipeline misses is marked `xfail` there with the reason,
and its action test is a strict xfail: it fails the day the pipeline catches it, so the mark is
dropped rather than forgotten.
"""

from __future__ import annotations

import calendar
import re
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from filterd.checks.header_sanity import HeaderSanity
from filterd.cli.scan_cmd import NOT_SPAM, offline
from filterd.config import Config, parse_config, registered_checks
from filterd.driver import SmtpContext, scan
from filterd.pipeline import Pipeline
from filterd.registry import known_symbols, network_checks
from filterd.results import Action, Verdict
from filterd.rules import shipped_dir
from filterd.rules.loader import load_rules
from tests.corpus_support import load_corpus_script
from tests.fuzz.offline import offline_config

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT / "corpus"
FOLDERS = ("ham", "spam", "edge")
# The messages are dated 2026-11-30 .. 2026-12-03; header_sanity's clock is pinned to this so
# DATE_IN_PAST (7 days) does not start to score them next week.
NOW = calendar.timegm((2026, 12, 3, 16, 0, 0))
SECONDS_PER_MESSAGE = 2.0  # CPU; the slowest (the 1 MiB attachment) takes ~10 ms
# Actions in increasing severity, as the default thresholds order them (greylist is off).
SEVERITY = [
    Action.ACCEPT,
    Action.ADD_HEADER,
    Action.REWRITE_SUBJECT,
    Action.QUARANTINE,
    Action.GREYLIST,
    Action.REJECT,
]


make_edge = load_corpus_script("make_edge")
GENERATED: dict[str, bytes] = make_edge.cases()
MANIFEST: list[dict[str, Any]] = tomllib.loads((CORPUS / "manifest.toml").read_text("utf-8"))["message"]
ENTRIES = {entry["file"]: entry for entry in MANIFEST}


def message_bytes(entry: dict[str, Any]) -> bytes:
    if entry.get("generated"):
        return GENERATED[Path(entry["file"]).stem]
    return (CORPUS / entry["file"]).read_bytes()


def scan_config() -> Config:
    """What `filterctl scan` runs with the shipped configuration, network checks off."""
    return offline(offline_config())


@pytest.fixture(scope="module")
def pipeline() -> Iterator[Pipeline]:
    p = Pipeline.from_config(scan_config())
    sanity = [c for c in p.checks if isinstance(c, HeaderSanity)]
    assert sanity, "header_sanity is on by default"
    for check in sanity:
        check.clock = lambda: NOW
    yield p
    p.close()


@pytest.fixture(scope="module")
def verdicts(pipeline: Pipeline) -> dict[str, tuple[Verdict, float]]:
    """Each file's verdict and the CPU seconds its scan took, scanned once for all the tests."""
    out: dict[str, tuple[Verdict, float]] = {}
    for name, entry in ENTRIES.items():
        started = time.process_time()
        _, verdict = scan(pipeline, message_bytes(entry), SmtpContext())
        out[name] = (verdict, time.process_time() - started)
    return out


def names(verdict: Verdict) -> set[str]:
    return {s.name for s in verdict.symbols}


def describe(verdict: Verdict) -> str:
    symbols = " ".join(f"{s.name}({s.score:g})" for s in verdict.symbols)
    return f"{verdict.score:.2f} {verdict.action.value}: {symbols}"


# -- the manifest and the files agree ------------------------------------------------------------


def test_every_file_has_one_manifest_entry() -> None:
    on_disk = {str(p.relative_to(CORPUS)) for folder in FOLDERS for p in (CORPUS / folder).glob("*.eml")}
    listed = [entry["file"] for entry in MANIFEST]
    assert len(listed) == len(set(listed)), "a file is listed twice"
    committed = {name for name in listed if not ENTRIES[name].get("generated")}
    assert committed == on_disk
    generated = {Path(name).stem for name in listed if ENTRIES[name].get("generated")}
    assert generated <= set(GENERATED)


def test_every_entry_is_complete_and_names_real_symbols() -> None:
    symbols = set(known_symbols()) | {r.name for r in load_rules(shipped_dir()) if not r.hidden}
    actions = {a.value for a in Action}
    for entry in MANIFEST:
        name = entry["file"]
        assert entry["label"] == name.split("/")[0], name
        assert entry.get("why"), name
        assert ("action" in entry) != ("min_action" in entry), f"{name}: give action or min_action"
        wanted = entry.get("action", entry.get("min_action"))
        assert set(wanted if isinstance(wanted, list) else [wanted]) <= actions, name
        for key in ("present", "absent"):
            unknown = set(entry.get(key, [])) - symbols
            assert not unknown, f"{name}: {key} names no symbol: {unknown}"
        if entry["label"] == "ham":
            assert entry.get("action") == "accept", f"{name}: a ham is accepted"
        if entry["label"] == "spam":
            assert entry.get("min_action", "") == "add_header" or entry.get("action") == "reject", name


def test_the_committed_generated_files_are_what_the_generator_writes() -> None:
    for name, raw in GENERATED.items():
        path = CORPUS / "edge" / f"{name}.eml"
        if len(raw) <= make_edge.COMMIT_LIMIT:
            assert path.read_bytes() == raw, f"run: python corpus/make_edge.py ({name})"
        else:
            assert not path.exists(), f"{name} is {len(raw)} bytes: generated, not committed"


def test_the_scan_configuration_is_the_shipped_default_without_the_network() -> None:
    cfg, shipped = scan_config(), parse_config({})
    assert cfg.actions == shipped.actions
    assert cfg.scoring == shipped.scoring
    offline_only = set(network_checks())
    for check in registered_checks():
        if check.name not in offline_only:
            assert cfg.check_settings(check.name) == shipped.check_settings(check.name), check.name
    assert shipped.check_settings("rules").enabled and shipped.check_settings("bayes").enabled


# -- each message: its symbols and its verdict ---------------------------------------------------


@pytest.mark.parametrize("name", list(ENTRIES))
def test_symbols(verdicts: dict[str, tuple[Verdict, float]], name: str) -> None:
    """No check fails; the required symbols are there and the excluded ones are not."""
    entry = ENTRIES[name]
    verdict, spent = verdicts[name]
    found = names(verdict)
    errors = [s.reason for s in verdict.symbols if s.name == "CHECK_ERROR"]
    assert errors == [], errors
    assert spent < SECONDS_PER_MESSAGE, f"{spent:.2f} s"
    missing = set(entry.get("present", [])) - found
    assert not missing, f"missing {sorted(missing)}; {describe(verdict)}"
    absent = set(entry.get("absent", [])) | ({"BAYES_SPAM"} if entry["label"] == "ham" else set())
    unwanted = absent & found
    assert not unwanted, f"unwanted {sorted(unwanted)}; {describe(verdict)}"


def _action_case(name: str) -> Any:
    reason = ENTRIES[name].get("xfail")
    if reason:
        return pytest.param(name, marks=pytest.mark.xfail(reason=reason, strict=True))
    return name


@pytest.mark.parametrize("name", [_action_case(n) for n in ENTRIES])
def test_action(verdicts: dict[str, tuple[Verdict, float]], name: str) -> None:
    entry = ENTRIES[name]
    verdict, _ = verdicts[name]
    if "action" in entry:
        wanted = entry["action"] if isinstance(entry["action"], list) else [entry["action"]]
        assert verdict.action.value in wanted, describe(verdict)
    else:
        floor = Action(entry["min_action"])
        assert verdict.action in SEVERITY, describe(verdict)
        assert SEVERITY.index(verdict.action) >= SEVERITY.index(floor), describe(verdict)
        assert verdict.action not in NOT_SPAM  # what `filterctl scan` counts as spam (exit 1)


@pytest.mark.parametrize("name", list(ENTRIES))
def test_crlf_line_ends_give_the_same_verdict(
    pipeline: Pipeline, verdicts: dict[str, tuple[Verdict, float]], name: str
) -> None:
    """The files are stored with LF (as in a Maildir); Postfix hands the milter CRLF."""
    raw = message_bytes(ENTRIES[name])
    _, crlf = scan(pipeline, raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n"), SmtpContext())
    stored, _ = verdicts[name]
    assert (crlf.score, crlf.action, names(crlf)) == (stored.score, stored.action, names(stored))


# -- single cases ----------------------------------------------------------------------------------


def test_forged_verdict_headers_count_for_nothing(
    pipeline: Pipeline, verdicts: dict[str, tuple[Verdict, float]]
) -> None:
    """The spam's own 'X-Spam-Status: No' and 'X-Filterd-Score: 0.0' change nothing."""
    name = "spam/forged-spam-status.eml"
    raw = message_bytes(ENTRIES[name])
    without = re.sub(rb"(?m)^X-(?:Spam|Filterd)-[\w-]+:.*\n(?:[ \t].*\n)*", b"", raw)
    assert b"X-Spam-Status" in raw and b"X-Spam-" not in without
    _, clean = scan(pipeline, without, SmtpContext())
    forged, _ = verdicts[name]
    assert forged.action is not Action.ACCEPT
    assert (forged.score, names(forged)) == (clean.score, names(clean))


def test_the_corpus_flag_rates(verdicts: dict[str, tuple[Verdict, float]]) -> None:
    """Every ham accepted; every spam not marked xfail flagged (the figures corpus/README.md gives)."""
    flagged = {
        label: [
            n for n, e in ENTRIES.items() if e["label"] == label and verdicts[n][0].action not in NOT_SPAM
        ]
        for label in ("ham", "spam")
    }
    assert flagged["ham"] == []
    expected_misses = {n for n, e in ENTRIES.items() if e["label"] == "spam" and e.get("xfail")}
    spam = {n for n, e in ENTRIES.items() if e["label"] == "spam"}
    assert set(flagged["spam"]) == spam - expected_misses
