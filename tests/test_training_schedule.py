"""The HyperIQA schedule, the three revertible fixes, and the original solver."""

import keras_hyperiqa  # noqa: F401
import keras
import numpy as np
import pytest
import torch

from keras_hyperiqa.training.optimizer import HyperAdam
from keras_hyperiqa.training.schedule import Fixes, HyperIQASchedule, epoch_rates
from doubles import (
    ArrayTrainSource,
    TinyIQA,
    toy_dataset,
)
from keras_hyperiqa.training.trainer import Trainer

FIXED_TABLE = (
    [(2e-5, 2e-4)] * 7 + [(2e-6, 2e-5)] * 3 + [(2e-6, 2e-6)] * 3
    + [(2e-7, 2e-7)] * 3
)
# Fix 2 reverted: backbone constant, hypernet follows lr / 10**(t//6) * ratio.
NO_BACKBONE_DECAY_TABLE = (
    [(2e-5, 2e-4)] * 7 + [(2e-5, 2e-5)] * 3 + [(2e-5, 2e-6)] * 3
    + [(2e-5, 2e-7)] * 3
)


def _numpy(v):
    return np.array(keras.ops.convert_to_numpy(v), copy=True)


class Probe(keras.callbacks.Callback):
    """Reads the optimizer at the first batch of every epoch."""

    def __init__(self, model, optimizer):
        super().__init__()
        self.m, self.opt = model, optimizer
        self.rows = []

    def on_train_batch_begin(self, batch, logs=None):
        opt = self.opt
        if batch == 1:  # after one step of this epoch
            self.rows[-1]["moment_abs_after_step"] = sum(
                float(np.abs(_numpy(v)).sum()) for v in opt.momentums)
            self.rows[-1]["iterations_after_step"] = int(
                _numpy(opt.iterations))
        if batch:
            return
        self.rows.append({
            "rates": (
                opt.effective_learning_rate(self.m.backbone_variables[0]),
                opt.effective_learning_rate(self.m.hypernet_variables[0]),
            ),
            "slot_ids": [id(v) for v in opt.momentums + opt.velocities],
            "moment_abs": sum(float(np.abs(_numpy(v)).sum())
                              for v in opt.momentums + opt.velocities),
            "iterations": int(_numpy(opt.iterations)),
            "hypernet": [_numpy(v) for v in self.m.hypernet_variables],
            "backbone": [_numpy(v) for v in self.m.backbone_variables],
        })


def _run(fixes, epochs, lr=2e-5, ratio=10.0, images=4, batch_size=4):
    model = TinyIQA()
    opt = HyperAdam(learning_rate=lr)
    trainer = Trainer(model, opt)
    schedule = HyperIQASchedule(opt, model.backbone_variables,
                                model.hypernet_variables, lr=lr,
                                lr_ratio=ratio, fixes=fixes)
    probe = Probe(model, opt)
    x, y = toy_dataset(n_images=images)
    train = ArrayTrainSource(x, y, batch_size=batch_size)
    trainer.fit(train, epochs, callbacks=[schedule, probe], verbose=0)
    return model, opt, trainer, probe, train.steps_per_epoch


def test_epoch_rates_table_pure_function():
    np.testing.assert_allclose([epoch_rates(e) for e in range(16)],
                               FIXED_TABLE, rtol=1e-12)
    np.testing.assert_allclose(
        [epoch_rates(e, fixes=Fixes(backbone_lr_decays=False)) for e in range(16)],
        NO_BACKBONE_DECAY_TABLE, rtol=1e-12)
    frozen = [epoch_rates(e, fixes=Fixes(hypernet_trains=False)) for e in range(16)]
    assert frozen[0] == pytest.approx((2e-5, 2e-4))
    assert all(h == 0.0 for _, h in frozen[1:])


@pytest.mark.parametrize("fixes,table", [
    (Fixes(), FIXED_TABLE),
    (Fixes(backbone_lr_decays=False), NO_BACKBONE_DECAY_TABLE),
])
def test_schedule_16_epochs_rates_read_from_optimizer(fixes, table):
    model, opt, trainer, probe, steps = _run(fixes, 16)
    rates = [row["rates"] for row in probe.rows]
    assert len(rates) == 16
    for got, want in zip(rates, table):
        assert got == pytest.approx(want, rel=1e-6)
    # The logged rates are the ones that trained the epoch.
    logged = [(r["backbone_lr"], r["hypernet_lr"]) for r in trainer.history]
    for got, want in zip(logged, table):
        assert got == pytest.approx(want, rel=1e-6)
    # Same slot objects all along, non-zero moments carried across epoch
    # boundaries, and a step counter that keeps counting.
    assert all(row["slot_ids"] == probe.rows[0]["slot_ids"]
               for row in probe.rows)
    assert all(row["moment_abs"] > 0 for row in probe.rows[1:])
    assert [row["iterations"] for row in probe.rows] == [
        e * steps for e in range(16)
    ]


def test_fix1_reverted_freezes_hypernet_from_epoch_1():
    model, opt, _, probe, _ = _run(Fixes(hypernet_trains=False), 4, lr=1e-2)
    final = {"hypernet": [_numpy(v) for v in model.hypernet_variables],
             "backbone": [_numpy(v) for v in model.backbone_variables]}
    snapshots = probe.rows + [final]
    # Epoch 0 trains the hypernet...
    assert any(not np.array_equal(a, b) for a, b in
               zip(snapshots[0]["hypernet"], snapshots[1]["hypernet"]))
    # ...every later epoch leaves it bit-identical while the backbone moves.
    for e in range(1, 4):
        before, after = snapshots[e], snapshots[e + 1]
        for a, b in zip(before["hypernet"], after["hypernet"]):
            assert np.array_equal(a, b)
        assert any(not np.array_equal(a, b)
                   for a, b in zip(before["backbone"], after["backbone"]))


def test_fix3_reverted_resets_moments_and_step_count_each_epoch():
    model, opt, _, probe, steps = _run(Fixes(optimizer_state_kept=False), 3,
                                       lr=1e-2)
    assert steps > 1
    ids = probe.rows[0]["slot_ids"]
    for row in probe.rows:
        assert row["moment_abs"] == 0.0
        assert row["iterations"] == 0
        assert row["slot_ids"] == ids  # reset in place, never rebuilt
    # And the slots did fill up during each epoch.
    for row in probe.rows:
        assert row["moment_abs_after_step"] > 0
        assert row["iterations_after_step"] == 1
    # The reset happens when the next epoch begins: a finished run keeps the
    # last epoch's state.
    assert int(_numpy(opt.iterations)) == steps


# ----------------------------------------------- the original solver (torch)
class TorchTiny(torch.nn.Module):
    def __init__(self, keras_model):
        super().__init__()
        k = keras_model
        self.body = torch.nn.Linear(k.body.kernel.shape[0], k.body.units)
        self.head1 = torch.nn.Linear(k.body.units, k.head1.units)
        self.head2 = torch.nn.Linear(k.head1.units, 1)
        with torch.no_grad():
            for name in ("body", "head1", "head2"):
                layer, klayer = getattr(self, name), getattr(k, name)
                layer.weight.copy_(torch.tensor(_numpy(klayer.kernel).T))
                layer.bias.copy_(torch.tensor(_numpy(klayer.bias)))

    def forward(self, x):
        h = x.reshape(x.shape[0], -1) / 255.0
        h = torch.tanh(self.body(h))
        h = torch.tanh(self.head1(h))
        return self.head2(h)


def original_solver(net, train, epochs, lr, lrratio, weight_decay,
                    decay_every=6):
    """The original HyperIQA solver loop, rebuilt in torch (no fixes).

    ``decay_every`` is 6 in the original; the test shortens it so that the
    backbone-decay fix matters within 3 epochs."""
    backbone_params = list(map(id, net.body.parameters()))
    hypernet_params = filter(lambda p: id(p) not in backbone_params,
                             net.parameters())  # one-shot iterator (bug 1)
    l1 = torch.nn.L1Loss()
    paras = [{"params": hypernet_params, "lr": lr * lrratio},
             {"params": net.body.parameters(), "lr": lr}]
    solver = torch.optim.Adam(paras, weight_decay=weight_decay)
    for t in range(epochs):
        for x, y in train.train_batches(t):
            solver.zero_grad()
            pred = net(torch.tensor(x))
            loss = l1(pred.squeeze(), torch.tensor(y).float().detach())
            loss.backward()
            solver.step()
        lr_t = lr / pow(10, (t // decay_every))
        if t > 8:
            lrratio = 1
        paras = [{"params": hypernet_params, "lr": lr_t * lrratio},
                 {"params": net.body.parameters(), "lr": lr}]  # bug 2
        solver = torch.optim.Adam(paras, weight_decay=weight_decay)  # bug 3
    return net


@pytest.mark.parametrize("fixes,expect_equal", [
    (Fixes.original(), True),
    (Fixes(), False),
    # Each fix alone must make a difference, or the test proves nothing.
    (Fixes(hypernet_trains=True, backbone_lr_decays=False, optimizer_state_kept=False), False),
    (Fixes(hypernet_trains=False, backbone_lr_decays=True, optimizer_state_kept=False), False),
    (Fixes(hypernet_trains=False, backbone_lr_decays=False, optimizer_state_kept=True), False),
])
def test_all_fixes_reverted_equals_original_solver(fixes, expect_equal):
    lr, ratio, wd = 1e-3, 10.0, 5e-4
    model = TinyIQA()
    net = TorchTiny(model)
    x, y = toy_dataset(n_images=6)
    train = ArrayTrainSource(x, y, batch_size=4, seed=7)
    assert train.steps_per_epoch == 3

    opt = HyperAdam(learning_rate=lr, weight_decay=wd)
    trainer = Trainer(model, opt)
    schedule = HyperIQASchedule(opt, model.backbone_variables,
                                model.hypernet_variables, lr=lr,
                                lr_ratio=ratio, fixes=fixes, decay_every=1)
    trainer.fit(train, 3, callbacks=[schedule], verbose=0)
    original_solver(net, train, 3, lr, ratio, wd, decay_every=1)

    diffs = []
    for name in ("body", "head1", "head2"):
        layer, klayer = getattr(net, name), getattr(model, name)
        diffs.append(np.max(np.abs(
            layer.weight.detach().numpy() - _numpy(klayer.kernel).T)))
        diffs.append(np.max(np.abs(
            layer.bias.detach().numpy() - _numpy(klayer.bias))))
    if expect_equal:
        assert max(diffs) <= 1e-6
    else:  # the fixes really train differently
        assert max(diffs) > 1e-4


def test_fixes_from_reverted_names():
    assert Fixes.from_reverted([]) == Fixes()
    assert Fixes.from_reverted(["filter", "backbone_decay",
                                "optimizer_reset"]) == Fixes.original()
    assert Fixes.from_reverted(["filter"]) == Fixes(hypernet_trains=False)
    assert Fixes.from_reverted(["backbone-decay"]) == Fixes(backbone_lr_decays=False)
    assert Fixes.from_reverted(["optimizer-reset"]) == Fixes(optimizer_state_kept=False)
    with pytest.raises(ValueError):
        Fixes.from_reverted(["nope"])
