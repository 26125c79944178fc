"""The statistics on small examples whose answers are worked out by hand (or by scipy)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.special import gammaincc
from sklearn.feature_extraction import FeatureHasher

from filterd.bayes.classifier import (
    Hasher,
    Params,
    TokenCounts,
    chi2_spamicity,
    classify,
    log_chi2_sf,
    token_probabilities,
)


def test_robinson_probability_by_hand() -> None:
    params = Params(robs=1.0, robx=0.5, prior_messages=1.0, prior_rate=0.03)
    # a token in 3 of 10 spam and 1 of 20 ham:
    # rs = (3 + 0.03) / 11, rh = (1 + 0.03) / 21, p = rs / (rs + rh); n = 4; f = (1 * 0.5 + 4 p) / 5
    rs, rh = 3.03 / 11, 1.03 / 21
    f = token_probabilities(np.array([3]), np.array([1]), 10, 20, params)
    assert f[0] == pytest.approx((0.5 + 4 * rs / (rs + rh)) / 5)
    # with a vanishing class prior it is Graham's ratio: p = 0.3 / (0.3 + 0.05) = 6/7
    graham = Params(robs=1.0, robx=0.5, prior_messages=1e-12)
    f = token_probabilities(np.array([3]), np.array([1]), 10, 20, graham)
    assert f[0] == pytest.approx((0.5 + 4 * 6 / 7) / 5)
    # never seen: f is the prior x
    assert token_probabilities(np.array([0]), np.array([0]), 10, 20, params)[0] == 0.5
    # seen only in ham, often: f tends to 0 but never reaches it
    f = token_probabilities(np.array([0]), np.array([1000]), 1000, 1000, params)[0]
    assert 0 < f < 0.001


def test_a_class_seen_little_is_weak_evidence() -> None:
    """200 spam and 2 ham: a word in 40 spam and neither ham is spammy, but far from certain."""
    params = Params()
    early = token_probabilities(np.array([40]), np.array([0]), 200, 2, params)[0]
    assert 0.9 < early < 0.96  # without the class prior: 0.9996
    late = token_probabilities(np.array([40]), np.array([0]), 200, 2000, params)[0]
    assert late > 0.99


def test_log_chi2_survival_matches_scipy_and_survives_underflow() -> None:
    for n, x in [(1, 0.5), (3, 2.0), (40, 60.0), (300, 700.0)]:
        assert math.exp(log_chi2_sf(x, n)) == pytest.approx(gammaincc(n, x / 2), rel=1e-9)
    assert log_chi2_sf(0.0, 5) == 0.0
    # gammaincc underflows to exactly 0 here; the log keeps going
    assert gammaincc(10, 5000.0) == 0.0
    lq = log_chi2_sf(10000.0, 10)
    assert -5000.0 < lq < -4900.0


def test_chi2_combining() -> None:
    spamicity, ratio = chi2_spamicity(np.array([0.99] * 10))
    assert spamicity > 0.99 and ratio > 0
    spamicity, ratio = chi2_spamicity(np.array([0.01] * 10))
    assert spamicity < 0.01 and ratio < 0
    assert chi2_spamicity(np.array([])) == (0.5, 0.0)
    # strong evidence both ways: unsure
    spamicity, _ = chi2_spamicity(np.array([0.99] * 10 + [0.01] * 10))
    assert spamicity == pytest.approx(0.5, abs=1e-6)
    # exact 0 and 1 are clipped, not log(0)
    assert 0.0 <= chi2_spamicity(np.array([0.0, 1.0, 1.0]))[0] <= 1.0


def test_hasher_matches_feature_hasher() -> None:
    tokens = ["free", "subject:free", "bi:click here", "cjk:免费", "url:dom:example.com"]
    hasher = Hasher(2**20)
    fh = FeatureHasher(n_features=2**20, input_type="string", alternate_sign=False)
    expected = sorted(fh.transform([tokens]).indices)
    assert sorted(hasher.buckets(tokens)) == expected
    assert sorted(hasher.buckets(tokens)) == expected  # from the cache now
    X = hasher.matrix([tokens, tokens[:2]])
    assert X.shape == (2, 2**20) and set(X.data) == {1.0}


def test_pairs_are_hashed_from_their_words_and_named_on_demand() -> None:
    from filterd.bayes.classifier import Features
    from filterd.bayes.tokenizer import Tokens

    hasher = Hasher(2**20)
    pairs, at = hasher.pair_buckets(["click", "here", "", "click", "here", "now"])
    assert list(at) == [0, 3, 4]  # no pair across the break
    assert pairs[0] == pairs[1] != pairs[2]  # the same pair, the same bucket
    reverse, _ = hasher.pair_buckets(["here", "click"])
    assert reverse[0] != pairs[0]
    assert all(0 <= b < 2**20 for b in pairs)
    found = Features(Tokens(["click", "subject:hi"], ["click", "here", "click", "here"]), hasher)
    names = sorted(found[i] for i in range(len(found)))
    assert names == ["bi:click here", "bi:here click", "click", "here", "subject:hi"]
    assert len(set(found.buckets)) == len(found)  # distinct


def test_partial_fit_and_unlearn() -> None:
    hasher = Hasher(1024)
    counts = TokenCounts(1024)
    X = hasher.matrix([["a", "b"], ["b", "c"], ["c"]])
    counts.partial_fit(X, [1, 0, 0])
    a, b, c = (hasher.bucket(t) for t in "abc")
    assert (counts.spam[a], counts.spam[b], counts.ham[b], counts.ham[c]) == (1, 1, 1, 2)
    assert (counts.nspam, counts.nham) == (1, 2)
    counts.partial_fit(X[2:], [0], sample_weight=[-1])
    assert counts.ham[c] == 1 and counts.nham == 1
    counts.add(np.array([c, c]), 0, -5)  # more than was learned: clipped at zero
    assert counts.ham[c] == 0 and counts.nham == 0


def test_classify_returns_evidence() -> None:
    hasher = Hasher(4096)
    counts = TokenCounts(4096)
    spam = [["viagra", "cheap", "hello"]] * 20
    ham = [["meeting", "agenda", "hello"]] * 20
    counts.partial_fit(hasher.matrix(spam + ham), [1] * 20 + [0] * 20)
    tokens = ["viagra", "cheap", "hello", "unknownword"]
    result = classify(counts, hasher.buckets(tokens), tokens, Params())
    assert result.spamicity > 0.99
    assert {c.token for c in result.clues} == {"viagra", "cheap"}  # neutral and unknown are not clues
    assert result.clues[0].spam == 20 and result.clues[0].ham == 0
    tokens = ["meeting", "agenda"]
    assert classify(counts, hasher.buckets(tokens), tokens, Params()).spamicity < 0.01
    assert classify(counts, hasher.buckets(["x"]), ["x"], Params()).spamicity == 0.5
