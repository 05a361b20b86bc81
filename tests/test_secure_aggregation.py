"""Secure aggregation: keys exchanged as documents, masks that cancel exactly in the server's float64 mean,
a decoded aggregate equal to plain FedAvg, uploads that say nothing of a site's values, and every refusal's
exact message. Expected values are computed here independently: limbs with Python integers and Fractions,
FedAvg with float64 numpy, the server's mean with the aggregator's own arithmetic.

Its length (~380 lines) is the independent oracles (limbs, Fractions, float64 FedAvg) beside the tests
that use them.
"""

from __future__ import annotations

import hashlib
import math
from fractions import Fraction

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from scipy import stats

from fedgrove_common.fedavg import weighted_mean
from fedgrove.documents import document_fields, read_documents
from fedgrove.fixed_point import decode, fixed_point_for, limb_sums
from fedgrove.lockstep import sum_fields
from fedgrove.secure_aggregation import (
    SecureAggregationError,
    SiteKeys,
    make_keys,
    mask_upload,
    pair_secrets,
    public_key_document,
    read_public_keys,
    unmask_aggregate,
)

RUN = "run-7f3a"


def server_mean(uploads: list[list[np.ndarray]], rng: np.random.Generator) -> list[np.ndarray]:
    """What the aggregation server does: the aggregator's own float64 weighted sum with every upload's
    weighting 1.0, in an arbitrary arrival order, divided by the total weighting into the uploads' dtype."""
    order = rng.permutation(len(uploads))
    return weighted_mean([(uploads[i], 1.0) for i in order])


def bits(sites: int) -> tuple[int, int]:
    """(L, P) as the module docstring states them: L = 51 - ceil(log2 N), P = L - ceil(log2 N)."""
    headroom = math.ceil(math.log2(sites))
    return 51 - headroom, 51 - 2 * headroom


def limbs_of(value: float, sites: int) -> tuple[int, int]:
    """The documented encoding, in Python integers: X = round(value * 2^40) = hi * 2^P + lo, hi modulo 2^L."""
    modulus_bits, payload_bits = bits(sites)
    high, low = divmod(round(Fraction(value) * 2**40), 2**payload_bits)
    return high % 2**modulus_bits, low


def exchange_keys(roster: list[str]) -> dict[str, dict[str, bytes]]:
    """Every site's pair secrets after a key exchange through summed documents, as the leaves run it."""
    keys = {site: make_keys(site) for site in roster}
    combined = sum_fields([document_fields(public_key_document(keys[site]), roster=roster, site=site)
                           for site in roster])
    public = read_public_keys(read_documents(combined, roster=roster), roster)
    return {site: pair_secrets(keys[site], public, run_id=RUN) for site in roster}


def layouts(layers: list[np.ndarray]) -> list[tuple[tuple[int, ...], np.dtype]]:
    return [(layer.shape, layer.dtype) for layer in layers]


def random_federation(sites: int, rng: np.random.Generator, shapes: list[tuple[int, ...]]
                      ) -> tuple[list[str], dict[str, list[np.ndarray]], dict[str, float]]:
    roster = [f"site-{i:02d}" for i in range(sites)]
    layers = {site: [rng.normal(0, 3, size=shape).astype(np.float32) for shape in shapes] for site in roster}
    weights = {site: float(rng.integers(1, 50_000)) for site in roster}
    return roster, layers, weights


@pytest.mark.parametrize("sites", [2, 3, 17])
def test_masks_cancel_exactly_in_the_sum_for_2_3_and_17_sites_with_random_weights(sites: int) -> None:
    rng = np.random.default_rng(sites)
    roster, layers, weights = random_federation(sites, rng, [(5, 4), (6,)])
    secrets = exchange_keys(roster)
    uploads = [mask_upload(layers[s], weights[s], site=s, roster=roster, secrets=secrets[s], run_id=RUN,
                           round_number=1) for s in roster]
    modulus = 2 ** bits(sites)[0]
    for upload in uploads:
        flat = np.concatenate([layer.reshape(-1) for layer in upload])
        assert flat.dtype == np.float64 and np.all(flat == np.floor(flat)) and flat.min() >= 0 and flat.max() < modulus
    for index in range(2):
        summed = sum(upload[index].astype(np.int64) for upload in uploads)  # below 17 * 2^46: exact in int64
        for position in np.ndindex(layers[roster[0]][index].shape):
            expected = [0, 0]
            for site in roster:
                high, low = limbs_of(weights[site] * float(layers[site][index][position]), sites)
                expected = [expected[0] + high, expected[1] + low]
            assert [int(summed[(0, *position)]) % modulus, int(summed[(1, *position)]) % modulus] == \
                   [expected[0] % modulus, expected[1] % modulus]
    control = sum(upload[-1].astype(np.int64) for upload in uploads)
    weighting = [sum(limbs_of(weights[site], sites)[limb] for site in roster) % modulus for limb in range(2)]
    assert [int(control[0]) % modulus, int(control[1]) % modulus] == weighting


@pytest.mark.parametrize("sites", [2, 3, 17])
def test_the_decoded_aggregate_equals_plain_fedavg_to_1e_6_relative(sites: int) -> None:
    rng = np.random.default_rng(100 + sites)
    roster, layers, weights = random_federation(sites, rng, [(40, 30), (30,), (3, 2, 5)])
    secrets = exchange_keys(roster)
    uploads = [mask_upload(layers[s], weights[s], site=s, roster=roster, secrets=secrets[s], run_id=RUN,
                           round_number=4) for s in roster]
    decoded, total = unmask_aggregate(server_mean(uploads, rng), shapes_dtypes=layouts(layers[roster[0]]),
                                      sites=sites, run_id=RUN, round_number=4)
    assert total == sum(weights.values())
    for index, got in enumerate(decoded):
        plain = sum(weights[s] * layers[s][index].astype(np.float64) for s in roster) / sum(weights.values())
        assert got.dtype == np.float32
        np.testing.assert_allclose(got, plain.astype(np.float32), rtol=1e-6, atol=0)


def test_fractional_weightings_decode_to_their_weighted_mean() -> None:
    rng = np.random.default_rng(5)
    roster = ["a", "b", "c", "d", "e"]
    layers = {site: [rng.normal(size=64)] for site in roster}  # float64 layers stay float64
    weights = {site: float(rng.uniform(0.01, 3.0)) for site in roster}
    secrets = exchange_keys(roster)
    uploads = [mask_upload(layers[s], weights[s], site=s, roster=roster, secrets=secrets[s], run_id=RUN,
                           round_number=0) for s in roster]
    (got,), total = unmask_aggregate(server_mean(uploads, rng), shapes_dtypes=[((64,), np.dtype("float64"))], sites=5,
                                     run_id=RUN, round_number=0)
    plain = sum(weights[s] * layers[s][0] for s in roster) / sum(weights.values())
    assert got.dtype == np.float64
    assert abs(total - sum(weights.values())) <= 5 * 2**-41  # each weighting rounded to 2^-40
    np.testing.assert_allclose(got, plain, rtol=0, atol=1e-11)


def test_an_upload_is_uncorrelated_with_the_sites_true_values_and_never_near_them() -> None:
    rng = np.random.default_rng(11)
    roster, size = ["a", "b", "c"], 200_000
    layers = {site: [rng.normal(0, 1, size=size)] for site in roster}
    weights = {"a": 1000.0, "b": 2000.0, "c": 500.0}
    secrets = exchange_keys(roster)
    upload = mask_upload(layers["a"], weights["a"], site="a", roster=roster, secrets=secrets["a"], run_id=RUN,
                         round_number=2)
    truth = layers["a"][0]
    for limb in upload[0]:
        assert abs(np.corrcoef(limb, truth)[0, 1]) < 0.05
    # The server's best guess: read the single upload as if it were unmasked.
    encoding = fixed_point_for(3)
    guess = decode(upload[0].astype(np.uint64), encoding) / weights["a"]
    assert abs(np.corrcoef(guess, truth)[0, 1]) < 0.05
    # A masked value is uniform over the encoding's range (2 × limit / weighting wide): chance of landing within 1e-3.
    chance = 2e-3 / (2 * encoding.limit / weights["a"])
    near = int(np.sum(np.abs(guess - truth) < 1e-3)) + int(np.sum(np.abs(upload[0] - truth) < 1e-3))
    assert near <= stats.binom.ppf(1 - 1e-9, 3 * size, chance)


def test_one_changed_byte_of_one_pair_secret_is_detected_by_the_checksum() -> None:
    rng = np.random.default_rng(3)
    roster, layers, weights = random_federation(3, rng, [(10,)])
    secrets = exchange_keys(roster)
    wrong = bytearray(secrets["site-00"]["site-02"])
    wrong[17] ^= 0x01
    secrets["site-00"]["site-02"] = bytes(wrong)
    uploads = [mask_upload(layers[s], weights[s], site=s, roster=roster, secrets=secrets[s], run_id=RUN,
                           round_number=9) for s in roster]
    with pytest.raises(SecureAggregationError) as raised:
        unmask_aggregate(server_mean(uploads, rng), shapes_dtypes=layouts(layers["site-00"]), sites=3, run_id=RUN,
                         round_number=9)
    assert str(raised.value) == (
        "expected the aggregate's masked checksum to match its values, got a mismatch in round 9: the pairwise masks "
        "did not cancel (fix: every one of the 3 sites must upload in the round, with pair secrets derived from the "
        "same key exchange and run id; restart the run's key exchange)")


def test_an_aggregate_of_fewer_uploads_than_sites_is_refused() -> None:
    rng = np.random.default_rng(4)
    roster, layers, weights = random_federation(3, rng, [(10,)])
    secrets = exchange_keys(roster)
    uploads = [mask_upload(layers[s], weights[s], site=s, roster=roster, secrets=secrets[s], run_id=RUN,
                           round_number=1) for s in roster[:2]]
    with pytest.raises(SecureAggregationError, match=(
            r"^expected the server's mean × 3 to be whole numbers in \[0, 3 × 2\^49\), got [0-9.e+]+ \(fix: every site "
            r"must upload its masked float64 layers with weighting 1.0, and the aggregation must combine exactly 3 "
            r"uploads\)$")):
        unmask_aggregate(server_mean(uploads, rng), shapes_dtypes=layouts(layers["site-00"]), sites=3, run_id=RUN,
                         round_number=1)


def test_pair_secrets_agree_within_a_pair_and_differ_across_pairs_runs_and_outsiders() -> None:
    keys = {site: make_keys(site) for site in ("a", "b", "c")}
    public = {site: k.public for site, k in keys.items()}
    ab = pair_secrets(keys["a"], public, run_id=RUN)
    ba = pair_secrets(keys["b"], public, run_id=RUN)
    ca = pair_secrets(keys["c"], public, run_id=RUN)
    assert ab["b"] == ba["a"] and ab["c"] == ca["a"] and len(ab["b"]) == 32
    assert len({ab["b"], ab["c"], ba["c"]}) == 3
    assert pair_secrets(keys["a"], public, run_id="another-run")["b"] != ab["b"]
    impostor = X25519PrivateKey.generate()  # knows b's name and public key, not b's private key
    posing = SiteKeys(site="b", private=impostor, public=public["b"])
    assert pair_secrets(posing, public, run_id=RUN)["a"] != ab["b"]


def test_the_same_secrets_run_and_round_give_the_same_masks_and_another_round_or_run_others() -> None:
    rng = np.random.default_rng(8)
    roster, layers, weights = random_federation(3, rng, [(2000,)])
    secrets = exchange_keys(roster)

    def upload(run_id: str, round_number: int) -> np.ndarray:
        return mask_upload(layers["site-01"], weights["site-01"], site="site-01", roster=roster,
                           secrets=secrets["site-01"], run_id=run_id, round_number=round_number)[0]

    assert np.array_equal(upload(RUN, 5), upload(RUN, 5))
    assert np.mean(upload(RUN, 5) == upload(RUN, 6)) < 0.01
    assert np.mean(upload(RUN, 5) == upload("run-other", 5)) < 0.01


def test_worst_case_uploads_at_256_sites_are_summed_exactly_through_the_servers_mean() -> None:
    rng = np.random.default_rng(256)
    encoding = fixed_point_for(256)
    assert (encoding.modulus_bits, encoding.payload_bits) == bits(256) == (43, 35)
    top = 2**encoding.modulus_bits
    integers = [rng.integers(top - 2**20, top, size=4096, dtype=np.int64) for _ in range(256)]
    for values in integers:
        values[:2] = top - 1  # the largest upload, from every site, in the first positions
    mean = server_mean([[values.astype(np.float64)] for values in integers], rng)[0]
    exact = [sum(int(values[i]) for values in integers) % top for i in range(4096)]
    assert limb_sums(mean, encoding).tolist() == exact


def test_the_suggested_48_bits_at_256_sites_would_not_be_summed_exactly() -> None:
    """Why L = 51 - ceil(log2 N): with L = 48 and 256 sites the server's float64 sums pass 2^53 and round."""
    rng = np.random.default_rng(48)
    top = 2**48
    integers = [rng.integers(top - 2**20, top, size=4096, dtype=np.int64) for _ in range(256)]
    mean = server_mean([[values.astype(np.float64)] for values in integers], rng)[0]
    recovered = np.rint(mean * 256).astype(np.int64)
    exact = np.array([sum(int(values[i]) for values in integers) for i in range(4096)], dtype=np.int64)
    assert np.mean(recovered != exact) > 0.5


def test_the_largest_representable_values_from_256_sites_decode_exactly() -> None:
    sites = 256
    roster = [f"s{i:03d}" for i in range(sites)]
    # Pair secrets as any 32 bytes both ends share (their derivation is tested above): 256 sites in well under 1 s.
    secret = {(a, b): hashlib.sha256(f"{a}|{b}".encode()).digest() for a in roster for b in roster if a < b}
    secrets = {s: {p: secret[min(s, p), max(s, p)] for p in roster if p != s} for s in roster}
    encoding = fixed_point_for(sites)
    largest = math.nextafter(encoding.limit, 0.0)  # 2^29 - 2^-24: hi limbs 2^34 - 1, sums of 256 at 2^42 - 256
    assert encoding.limit == 2.0**29
    values = np.array([largest, -largest, largest / 3, -(2.0**-41), 2**-40, 0.0])
    uploads = [mask_upload([values], 1.0, site=s, roster=roster, secrets=secrets[s], run_id=RUN, round_number=1)
               for s in roster]
    (got,), total = unmask_aggregate(server_mean(uploads, np.random.default_rng(0)),
                                     shapes_dtypes=[((6,), np.dtype("float64"))], sites=sites, run_id=RUN,
                                     round_number=1)
    assert total == 256.0
    expected = [float(round(Fraction(v) * 2**40) * sites / Fraction(2**40) / sites) for v in values]
    assert got.tolist() == expected


def test_a_value_outside_the_representable_range_is_refused() -> None:
    roster = ["a", "b"]
    secrets = {"a": {"b": bytes(32)}}
    limit = fixed_point_for(2).limit
    assert limit == 2.0**57
    with pytest.raises(SecureAggregationError) as raised:
        mask_upload([np.array([1.0, 2.0**50])], 256.0, site="a", roster=roster, secrets=secrets["a"], run_id=RUN,
                    round_number=0)
    assert str(raised.value) == (
        "expected every weighting × parameter (layer 0) within ±1.44115e+17 for secure aggregation among 2 sites, got "
        "2.8823e+17 (fix: scale every site's weighting down by the same factor, which leaves the weighted mean "
        "unchanged, or look for a diverging model)")
    with pytest.raises(SecureAggregationError, match=r"^expected every weighting × parameter \(layer 1\) within "
                                                     r"±1\.44115e\+17 for secure aggregation among 2 sites, got nan "):
        mask_upload([np.zeros(3), np.array([0.0, np.nan])], 1.0, site="a", roster=roster, secrets=secrets["a"],
                    run_id=RUN, round_number=0)


@pytest.mark.parametrize(("weighting", "message"), [
    (0.0, "expected a finite weighting > 0, got 0.0 (fix: weight by the number of records the site trained on)"),
    (math.inf, "expected a finite weighting > 0, got inf (fix: weight by the number of records the site trained on)"),
])
def test_a_weighting_that_is_not_positive_and_finite_is_refused(weighting: float, message: str) -> None:
    with pytest.raises(SecureAggregationError) as raised:
        mask_upload([np.zeros(2)], weighting, site="a", roster=["a", "b"], secrets={"b": bytes(32)}, run_id=RUN,
                    round_number=0)
    assert str(raised.value) == message


def test_a_roster_of_one_site_a_site_outside_it_and_missing_secrets_are_refused() -> None:
    cases = [
        (dict(site="a", roster=["a"], secrets={}),
         "expected between 2 and 256 sites for secure aggregation, got 1 (fix: with one site there is nothing to hide "
         "it among; beyond 256 the fixed-point range becomes too small)"),
        (dict(site="z", roster=["a", "b"], secrets={"a": bytes(32)}),
         "expected site 'z' to be one of the roster's sites ['a', 'b'] (fix: name the site as the spec's sites do)"),
        (dict(site="a", roster=["a", "b", "c"], secrets={"b": bytes(32)}),
         "expected pair secrets for peers ['b', 'c'], got ['b'] (fix: derive them with pair_secrets from the keys of "
         "every site of the roster)"),
        (dict(site="a", roster=["a", "b", "a"], secrets={"b": bytes(32)}),
         "expected distinct site names in the roster, got a more than once (fix: give every site its own name)"),
    ]
    for arguments, message in cases:
        with pytest.raises(SecureAggregationError) as raised:
            mask_upload([np.zeros(2)], 1.0, run_id=RUN, round_number=0, **arguments)
        assert str(raised.value) == message


def test_an_aggregate_of_another_shape_is_refused() -> None:
    with pytest.raises(SecureAggregationError) as raised:
        unmask_aggregate([np.zeros((2, 4)), np.zeros(3)], shapes_dtypes=[((5,), np.dtype("float32"))], sites=2,
                         run_id=RUN, round_number=0)
    assert str(raised.value) == ("expected masked layers of shapes [(2, 5), (3,)], got [(2, 4), (3,)] (fix: every site "
                                 "must mask the same model with mask_upload)")


def exchanged(roster: list[str]) -> dict[str, dict[str, str]]:
    return {site: public_key_document(make_keys(site)) for site in roster}


def test_a_public_key_list_of_the_wrong_length_is_refused() -> None:
    documents = exchanged(["a", "b"])
    with pytest.raises(SecureAggregationError) as raised:
        read_public_keys(documents, ["a", "b", "c"])
    assert str(raised.value) == (
        "expected public keys from 3 sites (a, b, c), got 2 (a, b) (fix: give every site the same list of sites, run "
        "one leaf per site, all of the same fedgrove version)")


def test_a_public_key_under_a_wrong_name_is_refused() -> None:
    documents = exchanged(["a", "b", "x"])
    with pytest.raises(SecureAggregationError) as raised:
        read_public_keys(documents, ["a", "b", "c"])
    assert str(raised.value) == (
        "expected a public key from site 'c', got none; keys came from 'a', 'b', 'x' (fix: give every site the same "
        "list of sites, run one leaf per site, all of the same fedgrove version)")
    documents = exchanged(["a", "b"])
    documents["b"]["site"] = "mallory"
    with pytest.raises(SecureAggregationError) as raised:
        read_public_keys(documents, ["a", "b"])
    assert str(raised.value) == (
        "expected site 'b''s key document to be signed 'b', got 'mallory' (fix: give every site the same list of "
        "sites, run one leaf per site, all of the same fedgrove version)")


@pytest.mark.parametrize(("key", "problem"), [
    ("ab" * 31, "62 characters"),
    ("zz" * 32, "characters that are not hexadecimal"),
    (12345, "a value of type int"),
    (None, "no 'x25519_public_key' field"),
])
def test_a_public_key_of_the_wrong_format_is_refused(key: object, problem: str) -> None:
    documents: dict[str, dict[str, object]] = dict(exchanged(["a", "b"]))
    if key is None:
        del documents["b"]["x25519_public_key"]
    else:
        documents["b"]["x25519_public_key"] = key
    with pytest.raises(SecureAggregationError) as raised:
        read_public_keys(documents, ["a", "b"])  # type: ignore[arg-type]
    assert str(raised.value) == (
        f"expected site 'b''s public key as 64 hexadecimal characters (32 bytes of X25519), got {problem} (fix: give "
        "every site the same list of sites, run one leaf per site, all of the same fedgrove version)")


def test_a_key_sent_twice_a_replaced_own_key_and_a_low_order_key_are_refused() -> None:
    documents = exchanged(["a", "b"])
    documents["b"]["x25519_public_key"] = documents["a"]["x25519_public_key"]
    with pytest.raises(SecureAggregationError) as raised:
        read_public_keys(documents, ["a", "b"])
    assert str(raised.value) == ("expected a different public key from every site, got the same key from 'a' and 'b' "
                                 "(fix: each site must make its own key pair for the run)")
    keys = make_keys("a")
    with pytest.raises(SecureAggregationError) as raised:
        pair_secrets(keys, {"a": make_keys("a").public, "b": make_keys("b").public}, run_id=RUN)
    assert str(raised.value) == ("expected the key exchange to hold site 'a''s own public key, got another one (fix: "
                                 "restart the run's key exchange; make sure only one leaf runs as 'a')")
    with pytest.raises(SecureAggregationError) as raised:
        pair_secrets(keys, {"a": keys.public, "b": bytes(32)}, run_id=RUN)
    assert str(raised.value) == ("expected site 'b''s public key to be a usable X25519 key, got one that yields no "
                                 "shared secret (fix: restart the run's key exchange; site 'b' must send a key made by "
                                 "make_keys)")
