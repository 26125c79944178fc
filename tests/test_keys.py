"""Key layout: canonical inputs, hash tags that keep a script's keys in one Redis Cluster slot."""

from __future__ import annotations

import ipaddress

import pytest
from redis.crc import key_slot

from filterd.keys import Keys, client_network, domain_of, normalize_sender


def test_greylist_keys_of_one_triplet_share_a_cluster_slot() -> None:
    keys = Keys("filterd:")
    for net in ("192.0.2.0/24", "2001:db8::/64", "198.51.100.0/24"):
        triplet = keys.greylist_triplet(net, "a@b.test", "c@d.test")
        counter = keys.greylist_network(net)
        assert key_slot(triplet.encode()) == key_slot(counter.encode())
        assert triplet.startswith("filterd:gl:{") and counter.endswith(":n")
    assert key_slot(keys.greylist_network("192.0.2.0/24").encode()) != key_slot(
        keys.greylist_network("198.51.100.0/24").encode()
    )


def test_keys_do_not_show_addresses_and_are_case_insensitive() -> None:
    keys = Keys("p:")
    k = keys.greylist_triplet("192.0.2.0/24", "a@b.test", "Carol@Ours.test")
    assert "carol" not in k.lower() and k == keys.greylist_triplet(
        "192.0.2.0/24", "a@b.test", "carol@ours.test"
    )
    assert keys.reputation("from", "Example.COM") == keys.reputation("from", "example.com")
    assert keys.reputation("from", "example.com") != keys.reputation("auth", "example.com")


def test_prefix_with_braces_is_refused() -> None:
    with pytest.raises(ValueError, match="must not contain"):
        Keys("{filterd}:")


@pytest.mark.parametrize(
    ("sender", "normal"),
    [
        (None, "<>"),
        ("", "<>"),
        ("Alice@Example.TEST", "alice@example.test"),
        ("alice+lists@example.test", "alice@example.test"),
        ("prvs=1234abcd=alice@example.test", "alice@example.test"),
        ("bounce-12345-678@lists.example.test", "bounce-#-#@lists.example.test"),
    ],
)
def test_normalize_sender(sender: str | None, normal: str) -> None:
    assert normalize_sender(sender) == normal


def test_client_network_and_domain_of() -> None:
    assert client_network(ipaddress.ip_address("192.0.2.77")) == "192.0.2.0/24"
    assert client_network(ipaddress.ip_address("2001:db8:1:2:3::9")) == "2001:db8:1:2::/64"
    assert client_network(ipaddress.ip_address("192.0.2.77"), v4_prefix=32) == "192.0.2.77/32"
    assert domain_of("<A@Example.Test>") == "example.test"
    assert domain_of("") is None and domain_of("postmaster") is None
