"""The exponential moving average of a network's weights."""

from __future__ import annotations

import pytest
import torch

from pbf_core.model.averaging import WeightAverage


def _net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))


def test_the_average_trails_the_weights_at_the_ramped_rate():
    net = _net()
    avg = WeightAverage(net, decay=0.99)
    start = {k: v.clone() for k, v in avg.model.state_dict().items()}
    assert avg.rate() == pytest.approx(0.1)  # (1 + 0) / (10 + 0): the first update moves 90 %
    with torch.no_grad():
        net[0].weight.add_(1.0)
    net.train()(torch.randn(8, 4))  # BatchNorm's running stats and step count move too
    avg.update(net)
    now = avg.model.state_dict()
    expected = start["0.weight"] + 0.9 * (net[0].weight.detach() - start["0.weight"])
    torch.testing.assert_close(now["0.weight"], expected)
    assert now["1.num_batches_tracked"] == net[1].num_batches_tracked == 1  # integers: copied
    assert not torch.equal(now["1.running_mean"], start["1.running_mean"])
    assert avg.updates == 1 and avg.rate() == pytest.approx(2 / 11)
    for _ in range(1000):
        avg.update(net)
    assert avg.rate() == 0.99  # ramp over: the configured decay
    torch.testing.assert_close(now["0.weight"], net[0].weight.detach())  # it converges


def test_the_average_is_a_frozen_copy_in_eval_mode():
    net = _net()
    avg = WeightAverage(net, decay=0.9)
    assert not avg.model.training and not any(p.requires_grad for p in avg.model.parameters())
    assert avg.model[0].weight.data_ptr() != net[0].weight.data_ptr()
    with torch.no_grad():
        net[0].weight.zero_()
    assert avg.model[0].weight.abs().sum() > 0  # the copy does not follow until updated


@pytest.mark.parametrize("decay", [0.0, 1.0, -0.5, 1.5])
def test_decay_outside_0_1_is_refused(decay):
    with pytest.raises(ValueError, match="decay"):
        WeightAverage(_net(), decay)
