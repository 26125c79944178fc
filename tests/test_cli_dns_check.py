"""`filterctl dns check` against good and broken zones on the local DNS server."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner, Result

from filterd.cli.filterctl import cli
from tests.harness.auth import PublishedKey, publish_txt, unique
from tests.harness.dns import LocalDns


def dns_check(local_dns: LocalDns, tmp_path: Path, domain: str, *args: str, keys=None) -> Result:
    config = tmp_path / "filterd.toml"
    lines = [
        "[dns]",
        'nameservers = ["127.0.0.1"]',
        f"port = {local_dns.port}",
        "timeout = 0.4",
        "attempts = 1",
    ]
    for d, table in (keys or {}).items():
        lines.append(f'[checks.dkim_sign.keys."{d}"]')
        lines.extend(f'{s} = "{p}"' for s, p in table.items())
    config.write_text("\n".join(lines) + "\n")
    return CliRunner().invoke(cli, ["--config", str(config), "dns", "check", domain, *args])


def rows(result: Result) -> list[tuple[str, str, str]]:
    out = []
    for line in result.stdout.splitlines()[:-1]:
        status, check, detail = line.split(None, 1)[0], *line.split(None, 1)[1].split("  ", 1)
        out.append((status, check.strip(), detail.strip()))
    return out


def good_zone(local_dns: LocalDns, tmp_path: Path) -> tuple[str, dict]:
    d = unique("good")
    local_dns.add(f"{d}. 60 IN MX 10 mx1.{d}.")
    local_dns.add(f"{d}. 60 IN MX 20 mx2.{d}.")
    local_dns.add(f"mx1.{d}. 60 IN A 192.0.2.25")
    local_dns.add(f"mx2.{d}. 60 IN AAAA 2001:db8::25")
    local_dns.add(f'{d}. 60 IN TXT "v=spf1 mx include:_spf.{d} ip4:192.0.2.0/24 -all"')
    local_dns.add(f'_spf.{d}. 60 IN TXT "v=spf1 ip6:2001:db8::/32 a:out.{d} ~all"')
    publish_txt(local_dns, f"_dmarc.{d}", f"v=DMARC1; p=reject; rua=mailto:dmarc@{d}")
    rsa = PublishedKey(local_dns, d, "r1")
    ed = PublishedKey(local_dns, d, "e1", "ed25519")
    keys = {d: {"r1": str(rsa.write(tmp_path / "r1.key")), "e1": str(ed.write(tmp_path / "e1.key"))}}
    return d, keys


def test_good_zone_passes(local_dns: LocalDns, tmp_path: Path) -> None:
    d, keys = good_zone(local_dns, tmp_path)
    result = dns_check(local_dns, tmp_path, d, keys=keys)
    assert result.exit_code == 0, result.output
    found = rows(result)
    assert all(status == "PASS" for status, _, _ in found), result.output
    checks = [c for _, c, _ in found]
    assert checks.count("MX") == 2 and "SPF" in checks and "DMARC" in checks
    assert {"DKIM e1", "DKIM r1"} <= set(checks)
    spf = next(detail for _, c, detail in found if c == "SPF")
    assert "(3/10 DNS lookups)" in spf  # mx, include, and the included a:
    assert result.stdout.splitlines()[-1] == f"{d}: 0 failed, 0 warnings, {len(found)} passed"


def test_broken_zone_fails_with_reasons(local_dns: LocalDns, tmp_path: Path) -> None:
    d = unique("broken")
    local_dns.add(f"{d}. 60 IN MX 10 192.0.2.1.")  # an IP address where a host name belongs
    local_dns.add(f"{d}. 60 IN MX 20 nowhere.{d}.")  # a host with no address
    includes = " ".join(f"include:i{n}.{d}" for n in range(11))
    publish_txt(local_dns, d, f"v=spf1 {includes} ip4:300.1.1.1 +all")  # over 255 bytes: two strings
    for n in range(11):
        local_dns.add(f'i{n}.{d}. 60 IN TXT "v=spf1 ip4:192.0.2.{n} -all"')
    publish_txt(local_dns, f"_dmarc.{d}", "v=DMARC1; p=maybe; pct=150")
    other = PublishedKey(local_dns, d, "sel")  # published: but not the local key
    mine = PublishedKey(local_dns, d, "mine", publish=False)
    keys = {d: {"sel": str(mine.write(tmp_path / "sel.key")), "gone": str(tmp_path / "absent.key")}}
    result = dns_check(local_dns, tmp_path, d, "--selector", "unpublished", keys=keys)
    assert result.exit_code == 1
    out = result.stdout
    assert "an MX must name a host, not an IP address" in out
    assert f"nowhere.{d}: the host has no A or AAAA record" in out
    assert "11 DNS lookups: over the limit of 10" in out
    assert "'ip4:300.1.1.1': not an IP address" in out
    assert "'+all' lets any host on the internet send" in out
    assert "p='maybe' is not none, quarantine or reject" in out
    assert "does not match the local key" in out and other.public not in out
    assert "local key unusable" in out and "absent.key does not exist" in out
    assert f"no key published at unpublished._domainkey.{d}" in out


def test_missing_records(local_dns: LocalDns, tmp_path: Path) -> None:
    d = unique("empty")
    local_dns.add(f"{d}. 60 IN A 192.0.2.80")  # a web-only domain: no MX, no SPF, no DMARC
    result = dns_check(local_dns, tmp_path, d)
    assert result.exit_code == 1
    found = {(status, check) for status, check, _ in rows(result)}
    assert ("WARN", "MX") in found  # implicit MX
    assert ("FAIL", "SPF") in found and ("FAIL", "DMARC") in found
    assert ("WARN", "DKIM") in found  # no selector to look at


def test_warnings_alone_exit_zero(local_dns: LocalDns, tmp_path: Path) -> None:
    d = unique("lax")
    local_dns.add(f"{d}. 60 IN MX 10 mx.{d}.")
    local_dns.add(f"mx.{d}. 60 IN A 192.0.2.9")
    local_dns.add(f'{d}. 60 IN TXT "v=spf1 ptr ?all"')
    publish_txt(local_dns, f"_dmarc.{d}", "v=DMARC1; p=none")
    key = PublishedKey(local_dns, d, "pub")
    result = dns_check(local_dns, tmp_path, d, "-s", "pub")
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "'ptr' is slow" in out and "'?all' asserts nothing" in out
    assert "p=none: monitoring only" in out and "no rua=" in out
    assert "published (rsa); no local key to compare" in out
    assert key.domain == d


def test_dns_failure_is_a_fail_not_a_crash(local_dns: LocalDns, tmp_path: Path) -> None:
    d = unique("dnsdown")
    local_dns.make_silent(d)
    result = dns_check(local_dns, tmp_path, d)
    assert result.exit_code == 1
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert "DNS lookup failed" in result.stdout


def test_bad_domain_argument(local_dns: LocalDns, tmp_path: Path) -> None:
    result = dns_check(local_dns, tmp_path, "not a domain")
    assert result.exit_code == 2 and "is not a domain name" in result.output


def test_spf_include_chain_of_30_stops_at_the_lookup_limit(local_dns: LocalDns, tmp_path: Path) -> None:
    """Before: every include was followed, 30 of them (36 queries); a wide tree of includes grew
    exponentially (5 includes a record, 4 deep: 786 queries).  Now the walk stops past 10."""
    base = unique("chain")
    for i in range(30):
        local_dns.add(f'l{i}.{base}. 60 IN TXT "v=spf1 include:l{i + 1}.{base} -all"')
    local_dns.add(f'l30.{base}. 60 IN TXT "v=spf1 ip4:192.0.2.1 -all"')
    result = dns_check(local_dns, tmp_path, f"l0.{base}")
    assert result.exit_code != 0
    spf = [d for s, c, d in rows(result) if c == "SPF" and s == "FAIL"]
    assert any(d.startswith("at least 1") and "over the limit of 10" in d for d in spf), result.output
    asked = [q for q in local_dns.queries if q.endswith("." + base) and q.startswith("l")]
    assert len(set(asked)) <= 12  # l0 .. l11: the limit and the one that went past it


def test_spf_wide_include_tree_stays_within_the_lookup_limit(local_dns: LocalDns, tmp_path: Path) -> None:
    base = unique("tree")

    def node(path: str, depth: int) -> None:
        terms = " ".join(f"include:n{path}x{k}.{base}" for k in range(5)) if depth else "ip4:192.0.2.1"
        local_dns.add(f'n{path}.{base}. 60 IN TXT "v=spf1 {terms} -all"')
        for k in range(5 if depth else 0):
            node(f"{path}x{k}", depth - 1)

    node("r", 4)
    result = dns_check(local_dns, tmp_path, f"nr.{base}")
    assert result.exit_code != 0
    assert local_dns.queries_under(base) <= 20


def test_spf_include_loop_is_reported_once_followed(local_dns: LocalDns, tmp_path: Path) -> None:
    base = unique("loop")
    local_dns.add(f'a.{base}. 60 IN TXT "v=spf1 include:b.{base} -all"')
    local_dns.add(f'b.{base}. 60 IN TXT "v=spf1 include:c.{base} -all"')
    local_dns.add(f'c.{base}. 60 IN TXT "v=spf1 include:a.{base} -all"')
    result = dns_check(local_dns, tmp_path, f"a.{base}")
    assert result.exit_code != 0
    spf = [d for s, c, d in rows(result) if c == "SPF" and s == "FAIL"]
    assert any("loops back" in d and f"include:a.{base}" in d for d in spf), result.output
    assert local_dns.queries_under(f"b.{base}") == 1 and local_dns.queries_under(f"c.{base}") == 1
