"""Tests of ankle_jax.voting against hand-worked examples."""

import numpy as np
import pytest

from ankle_jax import voting


def _cases(case_ids, labels):
  return voting.index_cases(case_ids, labels)


def test_image_votes_threshold_and_exact_half_is_fracture():
  np.testing.assert_array_equal(
      voting.image_votes(np.array([0.0, 0.49, 0.5, 0.51, 1.0])),
      [False, False, True, True, True],
  )


def test_index_cases_sorts_and_counts_views():
  cases = _cases(['b', 'a', 'b', 'c', 'a', 'b'], [1, 0, 1, 0, 0, 1])
  np.testing.assert_array_equal(cases.case_ids_c, ['a', 'b', 'c'])
  np.testing.assert_array_equal(cases.case_index_v, [1, 0, 1, 2, 0, 1])
  np.testing.assert_array_equal(cases.labels_c, [0, 1, 0])
  np.testing.assert_array_equal(cases.views_per_case_c, [2, 3, 1])


def test_index_cases_rejects_mixed_labels():
  with pytest.raises(ValueError, match='disagree on the label'):
    _cases(['a', 'a'], [0, 1])


def test_case_hard_majority_three_views():
  # Case a: 2 of 3 fracture -> fracture. Case b: 1 of 3 -> normal.
  cases = _cases(['a'] * 3 + ['b'] * 3, [1] * 3 + [0] * 3)
  votes = np.array([1, 0, 1, 0, 0, 1], bool)
  np.testing.assert_array_equal(
      voting.case_hard_votes(votes, cases), [True, False]
  )


def test_case_hard_tie_in_two_view_case_goes_to_fracture():
  # Case a has 2 views, 1 fracture vote: a tie -> fracture.
  # Case b has 2 views, 0 fracture votes -> normal. Case c, 1 view, 1 vote.
  cases = _cases(['a', 'a', 'b', 'b', 'c'], [1, 1, 0, 0, 1])
  votes = np.array([0, 1, 0, 0, 1], bool)
  np.testing.assert_array_equal(
      voting.case_hard_votes(votes, cases), [True, False, True]
  )


def test_case_soft_is_mean_probability():
  cases = _cases(['a', 'a', 'b', 'b', 'b'], [1, 1, 0, 0, 0])
  probs = np.array([0.2, 0.6, 0.1, 0.4, 0.7])
  np.testing.assert_allclose(voting.case_soft_probs(probs, cases), [0.4, 0.4])
  # Soft and hard can disagree: case b has 1 of 3 votes but mean 0.4.
  probs2 = np.array([0.45, 0.6, 0.9, 0.3, 0.3])
  np.testing.assert_allclose(
      voting.case_soft_probs(probs2, cases), [0.525, 0.5]
  )
  np.testing.assert_array_equal(
      voting.case_hard_votes(voting.image_votes(probs2), cases), [True, False]
  )


def test_ensemble_one_of_one_is_the_model_itself():
  probs_rv = np.array([[0.2, 0.7, 0.5]])
  np.testing.assert_array_equal(
      voting.ensemble_hard_votes(probs_rv, [0]), [False, True, True]
  )
  np.testing.assert_allclose(
      voting.ensemble_soft_probs(probs_rv, [0]), probs_rv[0]
  )


def test_ensemble_three_of_five_hard_and_soft():
  probs_rv = np.array(
      [
          [0.9, 0.1, 0.6, 0.0],
          [0.2, 0.3, 0.4, 0.0],  # not a member
          [0.8, 0.6, 0.4, 0.0],
          [0.9, 0.9, 0.9, 0.0],  # not a member
          [0.1, 0.7, 0.45, 0.0],
      ]
  )
  members = (0, 2, 4)
  # Votes of members per view: [1,1,0], [0,1,1], [1,0,0], [0,0,0].
  np.testing.assert_array_equal(
      voting.ensemble_hard_votes(probs_rv, members), [True, True, False, False]
  )
  np.testing.assert_allclose(
      voting.ensemble_soft_probs(probs_rv, members),
      [0.6, 1.4 / 3, 1.45 / 3, 0.0],
  )


def test_decide_case_hard_votes_members_first_then_views():
  # Two runs x two 3-view cases.
  probs_rv = np.array(
      [
          [0.9, 0.9, 0.1, 0.4, 0.4, 0.4],
          [0.9, 0.1, 0.1, 0.6, 0.6, 0.4],
          [0.1, 0.9, 0.1, 0.6, 0.6, 0.4],
      ]
  )
  labels_v = np.array([1, 1, 1, 0, 0, 0])
  cases = _cases(['a'] * 3 + ['b'] * 3, labels_v)
  d = voting.decide(probs_rv, labels_v, cases, (0, 1, 2), 'case', 'hard')
  # Per-view ensemble votes: [1,1,0] and [1,1,0] -> both cases fracture.
  np.testing.assert_array_equal(d.preds, [True, True])
  np.testing.assert_array_equal(d.labels, [1, 0])
  np.testing.assert_array_equal(d.clusters, [0, 1])
  # Scores are soft: mean over members and views.
  np.testing.assert_allclose(
      d.scores, [probs_rv[:, :3].mean(), probs_rv[:, 3:].mean()]
  )
  d_soft = voting.decide(probs_rv, labels_v, cases, (0, 1, 2), 'case', 'soft')
  np.testing.assert_array_equal(
      d_soft.preds,
      [probs_rv[:, :3].mean() >= 0.5, probs_rv[:, 3:].mean() >= 0.5],
  )
  d_img = voting.decide(probs_rv, labels_v, cases, (1,), 'image', 'hard')
  np.testing.assert_array_equal(d_img.preds, probs_rv[1] >= 0.5)
  np.testing.assert_array_equal(d_img.clusters, [0, 0, 0, 1, 1, 1])


def test_decide_rejects_bad_level_and_voting():
  cases = _cases(['a'], [0])
  with pytest.raises(ValueError, match='level'):
    voting.decide(np.zeros((1, 1)), [0], cases, (0,), 'study', 'hard')
  with pytest.raises(ValueError, match='voting'):
    voting.decide(np.zeros((1, 1)), [0], cases, (0,), 'case', 'weighted')


@pytest.mark.parametrize(
    'num_runs,expected', [(1, 1), (2, 2), (3, 4), (4, 8), (5, 16)]
)
def test_subset_counts(num_runs, expected):
  subsets = voting.odd_subsets(num_runs)
  assert len(subsets) == expected == voting.num_odd_subsets(num_runs)
  assert all(len(s) % 2 == 1 for s in subsets)
  assert len(set(subsets)) == len(subsets)


def test_subsets_of_three_by_hand():
  assert voting.odd_subsets(3) == [(0,), (1,), (2,), (0, 1, 2)]


def test_subset_cap_keeps_singles_and_full_ensemble_and_is_seeded():
  capped = voting.odd_subsets(12, max_subsets=40, seed=3)
  assert len(capped) == 40 == len(set(capped))
  for i in range(12):
    assert (i,) in capped
  assert tuple(range(11)) in capped
  assert all(len(s) % 2 == 1 for s in capped)
  assert capped == voting.odd_subsets(12, max_subsets=40, seed=3)
  # Many runs: never enumerates 2**39 subsets.
  assert len(voting.odd_subsets(40, max_subsets=50)) == 50
  with pytest.raises(ValueError, match='max_subsets'):
    voting.odd_subsets(5, max_subsets=3)
