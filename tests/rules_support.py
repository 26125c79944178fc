"""Helpers shared by the rules tests: rule directories from TOML text, and messages built with
Python's email package (so the MIME is real, not hand-typed)."""

from __future__ import annotations

import textwrap
from email.message import EmailMessage
from pathlib import Path

from filterd.message import Message
from filterd.rules import RuleSet, load_rule_set


def rule_dir(root: Path, name: str, files: dict[str, str]) -> Path:
    """A directory `root/name` holding the given rule files (TOML text, dedented)."""
    d = root / name
    d.mkdir(parents=True, exist_ok=True)
    for filename, text in files.items():
        (d / filename).write_text(textwrap.dedent(text), "utf-8")
    return d


def rules_from(tmp_path: Path, text: str, local: str | None = None) -> RuleSet:
    base = rule_dir(tmp_path, "default", {"rules.toml": text})
    local_dir = rule_dir(tmp_path, "local", {"local.toml": local}) if local is not None else ""
    return load_rule_set(base, local_dir)


def message(
    body: str = "Hello, see you at lunch.",
    subject: str = "lunch",
    html: str | None = None,
    headers: dict[str, str] | None = None,
    attachments: tuple[tuple[str, str, bytes], ...] = (),
    plain: bool = True,
) -> Message:
    """A message with a text part (and optionally an HTML alternative and attachments)."""
    m = EmailMessage()
    m["From"] = "Alice <alice@example.com>"
    m["To"] = "bob@example.org"
    m["Subject"] = subject
    m["Message-ID"] = "<1234@example.com>"
    m["Date"] = "Mon, 01 Jan 2024 10:00:00 +0000"
    for name, value in (headers or {}).items():
        del m[name]
        m[name] = value
    if plain:
        m.set_content(body)
        if html is not None:
            m.add_alternative(html, subtype="html")
    else:
        m.set_content(html or body, subtype="html")
    for filename, ctype, data in attachments:
        maintype, subtype = ctype.split("/")
        m.add_attachment(data, maintype=maintype, subtype=subtype, filename=filename)
    return Message(m.as_bytes())


def names(rule_set: RuleSet, msg: Message) -> set[str]:
    return {r.name for r in rule_set.match(msg)}
