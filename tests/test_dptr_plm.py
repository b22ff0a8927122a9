"""PARSeq permutation LM as DPTR uses it: permutations, attention masks (dptr.md §10 item 4), loss (item 5)."""

import numpy as np
import pytest

from clip_text_spot.models.dptr.parseq import plm_loss
from clip_text_spot.models.dptr.perms import batch_perm_masks, generate_perms, perm_masks


def spec_masks(perm):
    """The spec's construction, literally: M[p[i], p[i+1:]] = -inf; content = M[:-1, :-1]; then the diagonal is
    masked and query = M[1:, :-1]. Returns 'may attend' booleans (True where M is not -inf)."""
    size = len(perm)
    masked = np.zeros((size, size), bool)
    for i in range(size):
        masked[perm[i], perm[i + 1 :]] = True
    content = masked[:-1, :-1].copy()
    masked[np.eye(size, dtype=bool)] = True
    query = masked[1:, :-1]
    return ~content, ~query


def test_masks_of_a_small_permutation_by_hand():
    # BOS, then character 2 before character 1, then EOS: ranks 0 -> 0, 2 -> 1, 1 -> 2, 3 -> 3
    content, query = perm_masks(np.array([0, 2, 1, 3]))
    assert content.astype(int).tolist() == [[1, 0, 0], [1, 1, 1], [1, 0, 1]]
    assert query.astype(int).tolist() == [[1, 0, 1], [1, 0, 0], [1, 1, 1]]


def test_masks_match_the_spec_construction_for_all_generated_perms():
    perms = generate_perms(25, 6, np.random.default_rng(3))
    for perm in perms:
        content, query = perm_masks(perm)
        ref_content, ref_query = spec_masks(perm)
        assert content.shape == query.shape == (26, 26)
        np.testing.assert_array_equal(content, ref_content)
        np.testing.assert_array_equal(query, ref_query)
        assert query[:, 0].all()  # BOS is visible to every query: no fully masked row


def test_generated_perms_canonical_reverse_and_mirrored_pairs():
    perms = generate_perms(25, 6, np.random.default_rng(0))
    assert perms.shape == (6, 27)
    assert perms[0].tolist() == list(range(27))
    assert perms[1].tolist() == [0, 26, *range(25, 0, -1)]  # reverse context, null context for EOS
    for k in (2, 4):
        assert perms[k][0] == 0 and perms[k][-1] == 26 and perms[k + 1][-1] == 26
        assert perms[k + 1][1:-1].tolist() == perms[k][1:-1][::-1].tolist()
    for p in perms:
        assert sorted(p.tolist()) == list(range(27))
    assert perms[2].tolist() != perms[4].tolist()  # random, not repeated


def test_batch_masks_repeat_one_set_of_perms_per_sample():
    masks = batch_perm_masks(3, 25, 6, np.random.default_rng(1))
    content, query = masks["perm_content_mask"], masks["perm_query_mask"]
    assert content.shape == query.shape == (3, 6, 26, 26) and content.dtype == bool
    np.testing.assert_array_equal(content[0], content[2])
    ref_content, ref_query = spec_masks(generate_perms(25, 6, np.random.default_rng(1))[3])
    np.testing.assert_array_equal(content[1, 3], ref_content)
    np.testing.assert_array_equal(query[1, 3], ref_query)
    # the canonical order is causal: content i sees 0..i, query i sees content 0..i
    np.testing.assert_array_equal(content[0, 0], np.tril(np.ones((26, 26), bool)))
    np.testing.assert_array_equal(query[0, 0], np.tril(np.ones((26, 26), bool)))


def test_bad_perm_arguments_are_errors():
    with pytest.raises(ValueError, match="even"):
        generate_perms(25, 3, np.random.default_rng(0))
    with pytest.raises(ValueError, match="permutation"):
        perm_masks(np.array([0, 1, 1]))


def test_plm_loss_hand_computed():
    # C = 3 classes, EOS = 0, PAD = 5; targets: one character (class 1), EOS, PAD
    eos, pad = 0, 5
    tgt_out = np.array([[1, 0, pad]])
    logits = np.zeros((3, 1, 3, 3), np.float32)  # perms 0 and 1 uniform: CE = ln 3 on both supervised targets
    logits[2, 0, 0] = [0.0, np.log(2.0), 0.0]  # perm 2: p(class 1) = 2/4 -> CE = ln 2
    logits[2, 0, 1] = [-50.0, 0.0, 0.0]  # EOS target under perm 2: huge CE if it were (wrongly) counted
    logits[:, 0, 2] = [50.0, -50.0, -50.0]  # PAD target: never counted
    loss, count = plm_loss(logits, tgt_out, eos=eos, pad=pad)
    # sum_k n_k CE_k / sum_k n_k with n = (2, 2, 1)
    expected = (2 * np.log(3) + 2 * np.log(3) + np.log(2)) / 5
    assert int(count) == 5
    np.testing.assert_allclose(float(loss), expected, rtol=1e-6)
