"""Meta-GRPO's rewards and loss arithmetic, pinned to hand-computed values."""

import math

import numpy as np
import pytest
import torch

from conceptseg.training.grpo import group_advantages, k3_kl, mask_loss, policy_loss, total_loss
from conceptseg.training.rewards import box_reward, format_reward, mask_iou_reward

GOOD = "<think>t</think><rule>r</rule><bbox>[0, 0, 9, 9]</bbox><answer>a</answer>"
GOOD_CHECK = "<think>t</think><rule>r</rule><check>[0, 0, 4, 9]</check><bbox>[0, 0, 9, 9]</bbox><answer>a</answer>"


class TestFormatReward:
    def test_valid_and_invalid(self):
        assert format_reward(GOOD, with_check=False) == 1.0
        assert format_reward(GOOD, with_check=True) == 0.0  # a proxy demands <check>
        assert format_reward(GOOD_CHECK, with_check=True) == 1.0
        assert format_reward("no tags at all", with_check=False) == 0.0
        assert format_reward("", with_check=False) == 0.0


class TestBoxReward:
    def test_squared_iou_without_proxy(self):
        # bbox [0,0,9,9] (100 px) vs gt [0,0,4,9] (50 px): IoU 0.5 → 0.25
        assert box_reward(GOOD, (0, 0, 4, 9)) == pytest.approx(0.25)

    def test_product_with_proxy(self):
        # target IoU 0.5 (as above) × check [0,0,4,9] vs proxy [0,0,9,9]: 0.5 → 0.25
        assert box_reward(GOOD_CHECK, (0, 0, 4, 9), proxy_box=(0, 0, 9, 9)) == pytest.approx(0.25)
        assert box_reward(GOOD_CHECK, (0, 0, 9, 9), proxy_box=(0, 0, 4, 9)) == pytest.approx(1.0)

    def test_unparsable_is_zero_and_empty_target_unscorable(self):
        assert box_reward("garbage", (0, 0, 4, 9)) == 0.0
        assert box_reward(GOOD, None) is None


class TestOfficialRewards:
    """The default rewards (method.md §2.5), against hand values; where they part from the strict ones."""

    def test_format_needs_the_tags_in_order_not_a_parsable_completion(self):
        from conceptseg.training.rewards import official_format_reward as fmt

        assert fmt(GOOD, False) == 1.0 and fmt(GOOD, True) == 0.0 and fmt(GOOD_CHECK, True) == 1.0
        # text around the tags, and a box the strict parser refuses (out of range, floats), pass
        loose = "Sure! <think>t</think>\n<rule>r</rule> <bbox>[0.5, 0, 900, 9]</bbox><answer>a</answer> done"
        assert fmt(loose, False) == 1.0 and format_reward(loose, with_check=False) == 0.0
        # the check must hold 4 integers; the rule must come first
        assert fmt(GOOD_CHECK.replace("[0, 0, 4, 9]", "[0, 0, 4]"), True) == 0.0
        assert fmt("<rule>r</rule><think>t</think><bbox>[0, 0, 9, 9]</bbox><answer>a</answer>", False) == 0.0

    def test_box_iou_is_the_official_one(self):
        from conceptseg.training.rewards import official_box_iou as iou

        # areas 10·10 = 100 and 5·10 = 50 (no +1), overlap (5 − 0)·(10 − 0) = 50: IoU 0.5
        assert iou((0, 0, 10, 10), (0, 0, 5, 10)) == pytest.approx(0.5)
        assert iou((0, 0, 9, 9), (0, 0, 4, 9)) == pytest.approx(36 / 81)  # 4·9 of 81 + 36 − 36
        assert iou((0, 0, 10, 10), (9, 0, 20, 10)) == 0.0  # a one-pixel-wide overlap counts as none
        assert iou((0, 0, 10, 10), (8, 0, 20, 10)) == pytest.approx(20 / (100 + 120 - 20))
        assert iou((3, 3, 3, 3), (3, 3, 3, 3)) == 0.0  # zero area: no union

    def test_box_reward_reads_the_last_well_formed_box(self):
        from conceptseg.training.rewards import official_box_reward as box

        assert box(GOOD, (0, 0, 4, 9)) == pytest.approx((36 / 81) ** 2)
        assert box(GOOD_CHECK, (0, 0, 9, 9), proxy_box=(0, 0, 4, 9)) == pytest.approx(1.0 * 1.0)
        assert box(GOOD_CHECK, (0, 0, 4, 9), proxy_box=(0, 0, 9, 9)) == pytest.approx((36 / 81) ** 2)
        # an unparsable rest of the completion does not matter; the last box does
        messy = "<bbox>[0, 0, 2, 2]</bbox> and then <bbox>[0, 0, 9, 9]</bbox> <answer>"
        assert box(messy, (0, 0, 9, 9)) == 1.0 and box_reward(messy, (0, 0, 9, 9)) == 0.0
        assert box(GOOD, (0, 0, 9, 9), proxy_box=(0, 0, 4, 9)) == 0.0  # proxy but no <check>
        assert box("garbage", (0, 0, 4, 9)) == 0.0 and box(GOOD, None) is None

    def test_the_sets(self):
        from conceptseg.training.rewards import REWARDS, official_box_reward, official_format_reward

        assert REWARDS["official"] == (official_format_reward, official_box_reward)
        assert REWARDS["strict"] == (format_reward, box_reward)


class TestSchedule:
    def test_linear_is_the_trainers_without_warmup(self):
        from conceptseg.training.config import TrainConfig

        config = TrainConfig(steps=4)
        assert [config.lr_factor(s) for s in (1, 2, 3, 4)] == [1.0, 0.75, 0.5, 0.25]
        assert TrainConfig(steps=4, lr_schedule="constant").lr_factor(4) == 1.0
        assert config.weight_decay == 0.0 and config.reward == "official"
        assert TrainConfig(learning_rate=1e-3).translator_lr == 1e-3
        assert TrainConfig(learning_rate=1e-3, translator_learning_rate=3e-5).translator_lr == 3e-5


class TestMaskReward:
    def test_hand_values(self):
        a = np.zeros((4, 4), bool)
        a[:2] = True
        b = np.zeros((4, 4), bool)
        b[:, :2] = True
        assert mask_iou_reward(a, b) == pytest.approx(4 / 12)
        assert mask_iou_reward(np.zeros((2, 2)), np.zeros((2, 2))) == 1.0


class TestGroupAdvantages:
    def test_normalised_with_unbiased_std(self):
        rewards = torch.tensor([1.0, 2.0, 3.0, 4.0, 0.0, 0.0, 1.0, 1.0])
        adv = group_advantages(rewards, 4)
        std = math.sqrt(((1.5**2) * 2 + 0.5**2 * 2) / 3)  # unbiased std of 1,2,3,4
        assert adv[:4].tolist() == pytest.approx([(r - 2.5) / (std + 1e-4) for r in (1, 2, 3, 4)])
        std2 = math.sqrt(4 * 0.25 / 3)
        assert adv[4:].tolist() == pytest.approx([(r - 0.5) / (std2 + 1e-4) for r in (0, 0, 1, 1)])

    def test_equal_rewards_give_zero(self):
        assert group_advantages(torch.ones(4), 2).tolist() == [0.0] * 4

    def test_unscorable_rollouts_get_zero_and_leave_the_statistics(self):
        adv = group_advantages(torch.tensor([1.0, float("nan"), 3.0, float("nan")]), 4)
        std = math.sqrt(2.0)  # unbiased std of 1, 3
        assert adv.tolist() == pytest.approx([-1 / (std + 1e-4), 0.0, 1 / (std + 1e-4), 0.0])

    def test_group_size_checks(self):
        with pytest.raises(ValueError, match="at least 2"):
            group_advantages(torch.ones(4), 1)
        with pytest.raises(ValueError, match="groups of 3"):
            group_advantages(torch.ones(4), 3)


class TestPolicyLoss:
    def test_k3_hand_value(self):
        logp, ref = torch.tensor([0.0]), torch.tensor([math.log(0.5)])
        assert k3_kl(logp, ref).item() == pytest.approx(0.5 - math.log(0.5) - 1)
        assert k3_kl(ref, ref).item() == 0.0

    def test_ratio_one_reduces_to_minus_advantage_token_mean(self):
        logp = torch.zeros(2, 3)
        mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
        loss, parts = policy_loss(logp, logp, logp, torch.tensor([2.0, -1.0]), mask)
        assert loss.item() == pytest.approx((-2.0 + 1.0) / 2)
        assert parts["kl"] == 0.0 and parts["clip_fraction"] == 0.0

    def test_clipping_hand_value(self):
        old = torch.zeros(1, 1)
        logp = torch.log(torch.tensor([[1.5]]))  # ratio 1.5, clipped to 1.2 for a positive advantage
        loss, parts = policy_loss(logp, old, None, torch.tensor([1.0]), torch.ones(1, 1))
        assert loss.item() == pytest.approx(-1.2)
        assert parts["clip_fraction"] == 1.0

    def test_kl_enters_with_beta(self):
        logp = torch.zeros(1, 1)
        ref = torch.full((1, 1), math.log(0.5))
        loss, _ = policy_loss(logp, logp, ref, torch.tensor([0.0]), torch.ones(1, 1))
        assert loss.item() == pytest.approx(0.04 * (0.5 - math.log(0.5) - 1))


class TestMaskLoss:
    def test_hand_value(self):
        logits = torch.zeros(1, 2, 2)  # sigmoid 0.5 everywhere
        target = torch.tensor([[[1.0, 0.0], [0.0, 0.0]]])
        bce = math.log(2)
        dice = 1 - (2 * 0.5 + 1) / (2.0 + 1 + 1)
        assert mask_loss(logits, target).item() == pytest.approx(bce + dice)
        assert total_loss(torch.tensor(1.0), mask_loss(logits, target)).item() == pytest.approx(1 + 0.01 * (bce + dice))
