"""Tests of ankle_jax.evaluation.voting against hand-worked examples."""

import numpy as np
import pytest

from ankle_jax.evaluation import voting


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


# --------------------------------------------------------- multi-view runs
def _old_decide(probs_rv, labels_v, cases, members, level, vote):
  """The rules before multi-view runs, written out (members, then views)."""
  soft_v = probs_rv[list(members)].mean(axis=0)
  hard_v = (probs_rv[list(members)] >= 0.5).mean(axis=0) >= 0.5
  if level == 'image':
    return (hard_v if vote == 'hard' else soft_v >= 0.5), soft_v
  onehot_vc = np.zeros((cases.num_views, cases.num_cases))
  onehot_vc[np.arange(cases.num_views), cases.case_index_v] = 1.0
  soft_c = (soft_v @ onehot_vc) / cases.views_per_case_c
  if vote == 'soft':
    return soft_c >= 0.5, soft_c
  hard_c = (hard_v.astype(float) @ onehot_vc) / cases.views_per_case_c >= 0.5
  return hard_c, soft_c


def test_decide_without_case_probs_is_bit_identical_to_the_per_view_rules():
  rng = np.random.default_rng(0)
  case_ids = [f'c{c:02d}' for c in rng.permutation(40) for _ in range(2)]
  case_ids += [f'd{c:02d}' for c in range(30) for _ in range(3)]
  labels_v = np.array([int(c[1:]) % 2 for c in case_ids])
  cases = _cases(case_ids, labels_v)
  probs_rv = rng.uniform(size=(5, len(case_ids)))
  probs_rv[:, ::5] = 0.5  # exact ties
  for members in voting.odd_subsets(5):
    for level in voting.LEVELS:
      for vote in voting.VOTINGS:
        d = voting.decide(probs_rv, labels_v, cases, members, level, vote)
        preds, scores = _old_decide(
            probs_rv, labels_v, cases, members, level, vote
        )
        np.testing.assert_array_equal(d.preds, preds)
        assert (d.scores == scores).all()  # bit for bit, not approximately


def _mixed_example():
  """One 3-view fracture case; runs a, c, d per-view, b multi-view.

  View votes (rows: runs a, b, c, d):  0 1 1 / 0 0 0 / 1 0 1 / 0 0 0.
  """
  probs_rv = np.array(
      [
          [0.2, 0.7, 0.9],  # a: case vote 1 (2 of 3 views)
          [0.3, 0.45, 0.1],  # b: its case head on each view alone
          [0.8, 0.1, 0.6],  # c: case vote 1
          [0.1, 0.2, 0.4],  # d: case vote 0
      ]
  )
  labels_v = np.array([1, 1, 1])
  cases = _cases(['x', 'x', 'x'], labels_v)
  case_probs_rc = probs_rv.mean(axis=1, keepdims=True)
  case_probs_rc[1] = 0.3  # b's own case probability: case vote 0
  multiview_r = np.array([False, True, False, False])
  return probs_rv, labels_v, cases, case_probs_rc, multiview_r


def test_mixed_hard_vote_is_each_members_case_vote_then_their_majority():
  probs_rv, labels_v, cases, case_probs_rc, multiview_r = _mixed_example()
  kw = dict(case_probs_rc=case_probs_rc, multiview_r=multiview_r)
  # Members first, then views would say normal: per view the votes of a,
  # b, c are (0,0,1), (1,0,0), (1,0,1) -> 0, 0, 1 -> 1 of 3.
  members_first = voting.case_hard_votes(
      voting.ensemble_hard_votes(probs_rv, (0, 1, 2)), cases
  )
  np.testing.assert_array_equal(members_first, [False])
  # Each member's case vote: a 1, b 0 (0.3 < 0.5), c 1 -> fracture.
  np.testing.assert_array_equal(
      voting.run_case_hard_votes(probs_rv, cases, **kw)[:, 0],
      [True, False, True, False],
  )
  d = voting.decide(probs_rv, labels_v, cases, (0, 1, 2), 'case', 'hard', **kw)
  np.testing.assert_array_equal(d.preds, [True])
  # Soft: the mean of the members' case probabilities (b's own, 0.3).
  np.testing.assert_allclose(d.scores, [case_probs_rc[:3].mean()])
  d = voting.decide(probs_rv, labels_v, cases, (1,), 'case', 'soft', **kw)
  np.testing.assert_array_equal(d.scores, [0.3])
  # Image level: b's per-view probabilities, as before.
  d = voting.decide(probs_rv, labels_v, cases, (1,), 'image', 'hard', **kw)
  np.testing.assert_array_equal(d.preds, [False, False, False])
  np.testing.assert_array_equal(d.scores, probs_rv[1])


def test_mixed_evaluation_keeps_per_view_ensembles_members_first():
  probs_rv, labels_v, cases, case_probs_rc, multiview_r = _mixed_example()
  kw = dict(case_probs_rc=case_probs_rc, multiview_r=multiview_r)
  # a, c, d are per-view: members first (per view 0, 0, 1 -> normal), though
  # their own case votes (1, 1, 0) would say fracture.
  d = voting.decide(probs_rv, labels_v, cases, (0, 2, 3), 'case', 'hard', **kw)
  np.testing.assert_array_equal(d.preds, [False])
  # Soft scores come from case_probs_rc once given.
  np.testing.assert_allclose(d.scores, [case_probs_rc[[0, 2, 3]].mean()])


def test_decide_rejects_case_inputs_of_the_wrong_shape():
  probs_rv, labels_v, cases, case_probs_rc, multiview_r = _mixed_example()
  with pytest.raises(ValueError, match='case_probs_rc must be'):
    voting.decide(
        probs_rv,
        labels_v,
        cases,
        (0,),
        'case',
        'soft',
        case_probs_rc=case_probs_rc[:2],
        multiview_r=multiview_r,
    )
  with pytest.raises(ValueError, match='need case_probs_rc'):
    voting.decide(
        probs_rv,
        labels_v,
        cases,
        (0,),
        'case',
        'soft',
        multiview_r=multiview_r,
    )


def test_run_case_probs_are_single_run_soft_scores_bit_for_bit():
  rng = np.random.default_rng(1)
  case_ids = [f'c{c}' for c in rng.permutation(9) for _ in range(3)]
  labels_v = np.zeros(len(case_ids), int)
  cases = _cases(case_ids, labels_v)
  probs_rv = rng.uniform(size=(3, len(case_ids)))
  probs_rc = voting.run_case_probs(probs_rv, cases)
  for r in range(3):
    d = voting.decide(probs_rv, labels_v, cases, (r,), 'case', 'soft')
    assert (probs_rc[r] == d.scores).all()


# ------------------------------------------------- max and noisy-OR (issue 27)
def test_max_and_noisy_or_by_hand_one_positive_view_of_three():
  # Case f: a fracture seen in 1 view of 3. Case n: normal, 3 views at 0.3.
  cases = _cases(['f'] * 3 + ['n'] * 3, [1] * 3 + [0] * 3)
  probs = np.array([0.9, 0.1, 0.1, 0.3, 0.3, 0.3])
  soft = voting.case_soft_probs(probs, cases)
  np.testing.assert_allclose(soft, [1.1 / 3, 0.3])  # the mean dilutes 0.9
  np.testing.assert_allclose(voting.case_max_probs(probs, cases), [0.9, 0.3])
  # 1 - 0.1 * 0.9 * 0.9 and 1 - 0.7**3: noisy-OR rises with the views.
  np.testing.assert_allclose(
      voting.case_noisy_or_probs(probs, cases), [0.919, 0.657]
  )
  for vote, preds in (
      ('soft', [False, False]),
      ('hard', [False, False]),
      ('max', [True, False]),
      ('noisy_or', [True, True]),
  ):
    d = voting.decide(probs[None], probs > 0, cases, [0], 'case', vote)
    np.testing.assert_array_equal(d.preds, preds, err_msg=vote)
  # max and noisy_or score with their own probability, hard with the soft.
  d = voting.decide(probs[None], probs > 0, cases, [0], 'case', 'max')
  np.testing.assert_allclose(d.scores, [0.9, 0.3])
  d = voting.decide(probs[None], probs > 0, cases, [0], 'case', 'hard')
  np.testing.assert_allclose(d.scores, soft)


def test_noisy_or_view_at_one_and_extra_leading_axes():
  cases = _cases(['a', 'a', 'b', 'c', 'c'], [1, 1, 0, 0, 0])
  probs_rv = np.array([[1.0, 0.2, 0.0, 0.5, 0.5], [0.1, 0.2, 0.4, 0.0, 0.0]])
  np.testing.assert_allclose(
      voting.case_noisy_or_probs(probs_rv, cases),
      [[1.0, 0.0, 0.75], [1 - 0.9 * 0.8, 0.4, 0.0]],
  )
  np.testing.assert_allclose(
      voting.case_max_probs(probs_rv, cases), [[1.0, 0.0, 0.5], [0.2, 0.4, 0.0]]
  )


def test_max_and_noisy_or_ensembles_members_first_then_views():
  cases = _cases(['a', 'a'], [1, 1])
  probs_rv = np.array([[0.8, 0.0], [0.0, 0.6]])
  # Members' mean per view: (0.4, 0.3); max 0.4 (views first would give
  # the mean of 0.8 and 0.6 = 0.7); noisy-OR 1 - 0.6 * 0.7 = 0.58.
  preds, scores = voting.case_decisions(probs_rv, cases, [0, 1], 'max')
  np.testing.assert_allclose(scores, [0.4])
  np.testing.assert_array_equal(preds, [False])
  _, scores = voting.case_decisions(probs_rv, cases, [0, 1], 'noisy_or')
  np.testing.assert_allclose(scores, [0.58])


def test_max_with_a_multiview_member_averages_case_probabilities():
  cases = _cases(['a', 'a'], [1, 1])
  probs_rv = np.array([[0.8, 0.0], [0.0, 0.6]])
  case_probs_rc = np.array([[0.4], [0.1]])  # run 1 multi-view: its own 0.1
  _, scores = voting.case_decisions(
      probs_rv, cases, [0, 1], 'max', case_probs_rc, np.array([False, True])
  )
  np.testing.assert_allclose(scores, [(0.8 + 0.1) / 2])


def test_max_and_noisy_or_exist_at_case_level_only():
  cases = _cases(['a'], [1])
  with pytest.raises(ValueError, match='image level must be one of'):
    voting.decide(np.array([[0.9]]), [1], cases, [0], 'image', 'max')
  with pytest.raises(ValueError, match='vote must be one of'):
    voting.case_vote_probs(np.array([0.9]), cases, 'mean')
