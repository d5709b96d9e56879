"""Evaluation protocols: the cards parse and refuse unknown fields; the DC network is the published
ConvNet (parameter counts, and PyTorch's forward pass on the same weights); the centring, label
scale, weight decay towards the initial weights and DC's schedule follow their formulas, by hand;
networks trained together equal networks trained one by one; validation never sees the set's
sources or the random subsets."""

import dataclasses
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kip import InputError, cli, data, models, optim, protocols, train, transfer

FIXTURE = np.load(os.path.join(os.path.dirname(__file__), "fixtures", "torch_reference.npz"))


def test_every_built_in_card_parses_and_names_what_it_reproduces():
    assert {"dc", "dsa", "kip", "rfad"} <= set(protocols.names())
    for name in protocols.names():
        p = protocols.load(name)
        assert p.name == name and p.reproduces and p.published and p.description
        net, config = protocols.resolve(*protocols.for_set(p, "mnist", 10)[:1], 10, 100)
        config.check()


@pytest.mark.parametrize("text, message", [
    ('name = "x"\ndescription = "d"\nsteps = 10\nwidht = 3\n', "unknown field 'widht'"),
    ('name = "x"\ndescription = "d"\nsteps = 10\n[network]\nwidth = 8\ndepth = 4\n', "unknown field 'depth' in [network]"),
    ('name = "x"\ndescription = "d"\nsteps = 10\n[optimiser]\nlr = 0.1\n', "unknown field 'optimiser'"),
    ('name = "x"\ndescription = "d"\nsteps = 10\nwidth = "wide"\n', "field 'width' must be int"),
    ('name = "x"\ndescription = "d"\nsteps = 10\n[[hyperparameters]]\ndataset = "mnist"\nlrr = 1\n', "unknown field 'lrr'"),
    ('name = "x"\ndescription = "d"\n', "exactly one of epochs and steps"),
    ('name = "x"\ndescription = "d"\nsteps = 10\nlabels = "soft"\n', "labels must be one of"),
    ('name = "x"\ndescription = "d"\nsteps = 10\naugment = "dsa:warp"\n', "unknown: 'warp'"),
    ('name = "x"\ndescription = "d"\nsteps = 10\npatience = 5\nkeep_best = true\n', "need a validation split"),
    ('name = "x"\nsteps = 10\n', "needs a 'description'"),
])
def test_a_bad_card_exits_2_with_one_line(tmp_path, capsys, text, message):
    card = tmp_path / "card.toml"
    card.write_text(text)
    np.savez(tmp_path / "set.npz", images=np.zeros((10, 8, 8, 1)), labels=np.arange(10))
    out = tmp_path / "out.json"
    assert cli.main(["evaluate", "--distilled", str(tmp_path / "set.npz"), "--method", "train", "--protocol", str(card),
                     "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("kip: error:") and message in err[0], err
    assert not out.exists()


def test_overrides_are_checked_and_recorded():
    p, recorded = protocols.with_overrides(protocols.load("dc"), width=32, epochs=20, networks=None, lr=0.01)
    assert (p.width, p.epochs, p.steps) == (32, 20, 0) and recorded == {"width": 32, "epochs": 20}
    p, recorded = protocols.with_overrides(protocols.load("rfad"), epochs=5)
    assert (p.epochs, p.steps) == (5, 0) and recorded == {"epochs": 5, "steps": 0}
    with pytest.raises(InputError, match="cannot be overridden"):
        protocols.with_overrides(p, loss="mse")
    with pytest.raises(InputError, match="width must be at least 1"):
        protocols.with_overrides(p, width=0)


def test_per_size_rows_apply_to_their_data_set_only():
    rfad = protocols.load("rfad")
    p, row = protocols.for_set(rfad, "mnist", 10)
    assert (p.lr, p.label_scale, p.weight_decay) == (1e-2, 8.0, 1e-3) and row.ipc == 10
    p, _ = protocols.for_set(rfad, "cifar10_jpeg_lossy", 10)  # a copy of CIFAR-10 takes CIFAR-10's row
    assert (p.lr, p.label_scale, p.weight_decay) == (1e-3, 2.0, 0.0)
    assert protocols.for_set(rfad, "digits", 1) == (rfad, None)
    dc, row = protocols.for_set(protocols.load("dc"), "mnist", 50)
    assert (dc.augment, dc.epochs) == ("dc:crop_scale_rotate", 1000) and row.ipc is None
    assert protocols.for_set(protocols.load("dc"), "cifar10", 1)[0].epochs == 300


def test_overrides_win_over_the_per_size_rows():
    p, recorded = protocols.with_overrides(protocols.load("rfad"), lr=0.08, width=128)
    q, row = protocols.for_set(p, "mnist", 10)  # the row says lr 1e-2, label scale 8, wd 1e-3
    assert (q.lr, q.label_scale, q.weight_decay, row.lr) == (0.08, 8.0, 1e-3, 1e-2) and recorded == {"lr": 0.08, "width": 128}
    d, _ = protocols.with_overrides(protocols.load("dc"), steps=7)  # steps replace the row's epochs
    assert (protocols.for_set(d, "mnist", 1)[0].epochs, protocols.for_set(d, "mnist", 1)[0].steps) == (0, 7)
    assert protocols.resolve(protocols.for_set(d, "mnist", 1)[0], 10, 10)[1].milestones == (0.5,)  # DC's decay: halfway
    with pytest.raises(InputError, match="unknown field 'overridden'"):
        protocols.parse({"name": "x", "description": "y", "training": {"overridden": ["lr"]}}, "card.toml")


def test_dc_network_is_the_published_convnet():
    p = protocols.load("dc")
    for (h, c), count in (((28, 1), 317_706), ((32, 3), 320_010)):  # published parameter counts
        net, _ = protocols.resolve(p, 10, 10)
        variables = net.init(jax.random.PRNGKey(0), jnp.zeros((1, h, h, c)))
        assert sum(a.size for a in jax.tree_util.tree_leaves(variables)) == count
        assert variables["params"]["Dense_0"]["kernel"].shape == (2048, 10)  # 4 x 4 x 128 at 28x28 too


def _flax_from_torch(tag: str, width: int) -> dict:
    """The fixture's PyTorch ConvNet weights in the layout of our flax ConvNet."""
    get = lambda name: FIXTURE[f"{tag}_param_{name}"]
    params = {}
    for i, layer in enumerate((0, 4, 8)):  # Conv, GroupNorm, ReLU, AvgPool per block
        params[f"Conv_{i}"] = {"kernel": get(f"{layer}.weight").transpose(2, 3, 1, 0), "bias": get(f"{layer}.bias")}
        params[f"InstanceNorm_{i}"] = {"scale": get(f"{layer + 1}.weight"), "bias": get(f"{layer + 1}.bias")}
    w = get("13.weight")  # (classes, C * H * W) over NCHW-flattened features; ours flatten NHWC
    params["Dense_0"] = {"kernel": w.reshape(10, width, 4, 4).transpose(2, 3, 1, 0).reshape(-1, 10), "bias": get("13.bias")}
    return {"params": params}


@pytest.mark.parametrize("channels", [1, 3])
def test_dc_network_computes_what_pytorch_computes_on_the_same_weights(channels):
    tag, width = f"convnet_c{channels}", 8
    net = models.build("convnet3", 10, width, norm="instance", weight_init="torch", pad_to=32)
    logits = net.apply(_flax_from_torch(tag, width), jnp.asarray(FIXTURE[f"{tag}_images"]))
    np.testing.assert_allclose(logits, FIXTURE[f"{tag}_logits"], atol=2e-5, rtol=1e-4)


def test_torch_initialisation_matches_pytorchs_distribution():
    conv = models.Conv(32, weight_init="torch")
    v = conv.init(jax.random.PRNGKey(0), jnp.zeros((1, 5, 5, 16)))["params"]
    bound = 1 / np.sqrt(16 * 9)
    for ours, theirs in ((v["kernel"], FIXTURE["torch_init_conv_weight"]), (v["bias"], FIXTURE["torch_init_conv_bias"])):
        ours = np.asarray(ours)
        assert np.abs(ours).max() <= bound and np.abs(theirs).max() <= bound
        np.testing.assert_allclose(ours.std(), bound / np.sqrt(3), rtol=0.1 if ours.size < 100 else 0.03)
        np.testing.assert_allclose(theirs.std(), bound / np.sqrt(3), rtol=0.1 if theirs.size < 100 else 0.03)


class Linear(nn.Module):
    """f(x) = x W + b on flattened inputs: gradients by hand below."""

    num_classes: int = 3

    def check_input_shape(self, shape):
        pass

    @nn.compact
    def __call__(self, x, train=False):
        return nn.Dense(self.num_classes, kernel_init=nn.initializers.normal(1.0))(x.reshape(len(x), -1))


def test_centring_label_scale_and_decay_towards_init_by_hand():
    rng = np.random.RandomState(0)
    x, y = rng.randn(6, 2, 2, 1).astype(np.float32), rng.randn(6, 3).astype(np.float32)
    model, lr, wd, mse_weight = Linear(), 0.05, 0.3, 1.0
    for scale in (1.0, 8.0):
        config = train.TrainConfig(steps=2, batch_size=6, lr=lr, momentum=0.0, schedule="constant", weight_decay=wd,
                                   decay_to="init", mse_weight=mse_weight, label_scale=scale, centre=True)
        result = train.fit(model, x, y, config, jax.random.PRNGKey(1))
        # At the start f - f0 = 0: the loss is mse_weight * mean(y^2) whatever the label scale
        np.testing.assert_allclose(result.losses[0], mse_weight * np.mean(y**2), rtol=1e-5)
        w0 = np.asarray(result.init_variables["params"]["Dense_0"]["kernel"], np.float64)
        xf, w = x.reshape(6, -1).astype(np.float64), w0.copy()
        b0 = np.asarray(result.init_variables["params"]["Dense_0"]["bias"], np.float64)
        b = b0.copy()
        for _ in range(2):  # d/df of mse_weight * mean((f - f0 - s y)^2) / s^2, then wd (w - w0)
            r = mse_weight * 2 * ((xf @ (w - w0) + (b - b0)) - scale * y) / (y.size * scale**2)
            w, b = w - lr * (xf.T @ r + wd * (w - w0)), b - lr * (r.sum(0) + wd * (b - b0))
        np.testing.assert_allclose(result.variables["params"]["Dense_0"]["kernel"], w, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(result.variables["params"]["Dense_0"]["bias"], b, rtol=1e-4, atol=1e-6)
        # ... and predictions are the centred outputs f - f0
        centred = train.predict(model, result.variables, x, init_variables=result.init_variables)
        np.testing.assert_allclose(centred, xf @ (w - w0) + (b - b0), rtol=1e-4, atol=1e-6)


def test_penalty_weight_decay_is_twice_the_coupled_one():
    rfad = protocols.load("rfad")
    assert protocols.coupled_weight_decay(rfad, 1e-3) == 2e-3  # d/dw wd |w - w0|^2 = 2 wd (w - w0)
    assert protocols.resolve(rfad, 10, 10)[1].weight_decay == 2e-3
    assert protocols.resolve(protocols.load("dc"), 10, 10)[1].weight_decay == 5e-4


def test_dc_schedule_decays_after_epoch_half_plus_one_and_resets_momentum():
    p, _ = protocols.with_overrides(protocols.load("dc"), epochs=10)
    _, config = protocols.resolve(p, 10, 10)  # 10 images: one step per epoch, 10 + 1 epochs
    assert config.steps == 11
    lrs = [float(optim.learning_rate(config)(t)) for t in range(11)]
    np.testing.assert_allclose(lrs, [0.01] * 7 + [0.001] * 4, rtol=1e-6)  # epochs 0..6 (= 10 // 2 + 1) at 0.01
    opt = optim.make_optimizer(dataclasses.replace(config, weight_decay=0.0))
    w, state, g = jnp.array(1.0), None, jnp.array(0.5)
    state = opt.init(w)
    updates = []
    for _ in range(9):
        u, state = opt.update(g, state, w)
        updates.append(float(u))
    trace = [sum(0.9**k for k in range(t + 1)) for t in range(7)] + [1.0, 1.9]  # momentum restarts at step 7
    np.testing.assert_allclose(updates, [-lr * 0.5 * m for lr, m in zip(lrs, trace)], rtol=1e-5)


@pytest.mark.parametrize("model, config", [
    (models.build("fc1", 3, 16), train.TrainConfig(steps=12, batch_size=5, lr=0.1, loss="mse", centre=True,
                                                   decay_to="init", label_scale=4.0)),
    (models.build("convnet3", 3, 4, norm="instance", weight_init="torch"),
     train.TrainConfig(steps=6, batch_size=8, lr=0.05, loss="xent", augment=("dsa:color_crop_cutout_scale_rotate",),
                       schedule="step", milestones=(0.5,), reset_momentum=True, drop_last=False)),
])
def test_networks_trained_together_equal_networks_trained_one_by_one(model, config):
    rng = np.random.RandomState(0)
    x = rng.randn(2, 12, 8, 8, 1).astype(np.float32)
    labels = rng.randint(0, 3, (2, 12))
    y = np.asarray(data.one_hot(labels, 3, centred=config.loss == "mse"))
    keys = jnp.stack([jax.random.PRNGKey(7), jax.random.PRNGKey(8)])
    lrs, wds = np.array([config.lr, config.lr / 2]), np.array([1e-3, 0.0])
    val = (x[0], labels[0])
    common = dict(per_network_data=True, val_images=val[0], val_labels=val[1])
    together = train.fit_many(model, x, y, dataclasses.replace(config, eval_every=3), keys, lrs, wds, vectorize=True, **common)
    apart = train.fit_many(model, x, y, dataclasses.replace(config, eval_every=3), keys, lrs, wds, vectorize=False, **common)
    for a, b in zip(jax.tree_util.tree_leaves(together.variables), jax.tree_util.tree_leaves(apart.variables)):
        np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-6)
    np.testing.assert_allclose(together.losses, apart.losses, rtol=1e-4)
    np.testing.assert_allclose([v["accuracy"] for v in together.val], [v["accuracy"] for v in apart.val])
    alone = train.fit(model, x[1], y[1], dataclasses.replace(config, lr=lrs[1], weight_decay=wds[1]), keys[1])
    for a, b in zip(jax.tree_util.tree_leaves(alone.variables), jax.tree_util.tree_leaves(apart.network(1).variables)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_early_stopping_keeps_the_best_network_and_stops_after_patience():
    rng = np.random.RandomState(1)
    x = rng.randn(20, 4, 4, 1).astype(np.float32)
    labels = rng.randint(0, 3, 20)
    y = np.asarray(data.one_hot(labels, 3))
    val_x, val_labels = rng.randn(30, 4, 4, 1).astype(np.float32), rng.randint(0, 3, 30)  # unrelated: it plateaus
    config = train.TrainConfig(steps=400, batch_size=20, lr=0.1, eval_every=10, keep_best=True, patience=50)
    model = models.build("fc1", 3, 32)
    r = train.fit_many(model, x, y, config, jnp.stack([jax.random.PRNGKey(s) for s in range(3)]),
                       val_images=val_x, val_labels=val_labels)
    assert np.all(r.steps_run < 400) and np.all(r.steps_run == r.best_step + 50)
    assert np.all(r.best_step % 10 == 0) and r.val[0]["step"] == 0
    best_again = train.accuracy_many(model, r.best_variables, val_x, val_labels)
    np.testing.assert_allclose(best_again, r.best_accuracy)
    for i in range(3):  # the best is the first evaluation reaching the maximum
        history = np.array([v["accuracy"][i] for v in r.val])
        steps = np.array([v["step"] for v in r.val])
        assert r.best_step[i] == steps[np.nanargmax(history)]
        assert np.all(np.isnan(r.losses[i, r.steps_run[i]:])) and np.all(np.isfinite(r.losses[i, :r.steps_run[i]]))


def test_validation_never_holds_the_sets_sources_or_the_random_subsets():
    ds = data.digits()
    sources = data.balanced_subset(jax.random.PRNGKey(0), ds.y_train, 10, 3)
    subsets = transfer.random_subsets(jax.random.PRNGKey(1), ds.y_train, 10, 3, 4)
    assert subsets.shape == (4, 30) and len({tuple(s) for s in subsets}) == 4
    exclude = np.concatenate([sources, subsets.ravel()])
    for fields in ({"val_per_class": 50}, {"val_size": 200}):  # (val_size: at most a fifth of the rest)
        p = dataclasses.replace(protocols.load("dc"), **fields)
        val = transfer.validation_indices(jax.random.PRNGKey(2), ds.y_train, 10, p, exclude)
        size = 500 if "val_per_class" in fields else 200
        assert len(val) == size and len(set(val)) == size and not set(val) & set(exclude)
        if "val_per_class" in fields:
            assert np.all(np.bincount(ds.y_train[val], minlength=10) == 50)


def test_evaluate_set_keeps_sources_and_subsets_out_of_validation(monkeypatch):
    ds = data.digits()
    from kip import preprocess

    prep = preprocess.fit(ds.x_train)
    sources = data.balanced_subset(jax.random.PRNGKey(0), ds.y_train, 10, 2)
    seen = {}

    def fake(model, config, sets, jobs, x_test, y_test, val=None, **kwargs):
        seen["val"], seen["sets"] = val, sets
        return [dict(test_accuracy=0.5, best_test_accuracy=0.5, final_val_accuracy=0.5, best_val_accuracy=0.5,
                     best_step=1, steps_run=1, diverged=False, seconds=1.0) for _ in jobs]

    monkeypatch.setattr(transfer, "train_and_test", fake)
    p, _ = protocols.with_overrides(protocols.load("rfad"), width=4, val_per_class=20, baseline_subsets=3)
    result = transfer.evaluate_set(prep.apply(ds.x_train[sources]), np.asarray(data.one_hot(ds.y_train[sources], 10)),
                                   ds, prep, p, sources, log=lambda s: None)
    val_rows = {r.tobytes() for r in seen["val"][0].astype(np.float32)}
    for images, _ in seen["sets"]:  # the set itself and each random subset
        assert not val_rows & {r.tobytes() for r in images.astype(np.float32)}
    assert result["validation"] == {"size": 200, "excludes_sources": 20, "excludes_subsets": 60, "from_set_held_out": False}
    # from the rows the set's run held out: only those, still none of its sources or the subsets' images
    pool = np.setdiff1d(np.arange(0, len(ds.y_train), 2), sources)[:400]
    result = transfer.evaluate_set(prep.apply(ds.x_train[sources]), np.asarray(data.one_hot(ds.y_train[sources], 10)),
                                   ds, prep, dataclasses.replace(p, val_per_class=0, val_size=100), sources,
                                   log=lambda s: None, val_pool=pool)
    pool_rows = {r.tobytes() for r in prep.apply(ds.x_train[pool]).astype(np.float32)}
    val_rows = [r.tobytes() for r in seen["val"][0].astype(np.float32)]
    assert len(val_rows) == 100 and set(val_rows) <= pool_rows
    for images, _ in seen["sets"]:
        assert not set(val_rows) & {r.tobytes() for r in images.astype(np.float32)}
    assert result["validation"]["from_set_held_out"] is True


def test_validation_from_held_out_rows_stays_inside_them_and_refuses_more_than_they_hold():
    ds = data.digits()
    pool = np.arange(0, 600, 2)
    exclude = np.arange(0, 100)
    for fields, size in (({"val_per_class": 5}, 50), ({"val_size": 200}, 200)):
        p = dataclasses.replace(protocols.load("dc"), **fields)
        val = transfer.validation_indices(jax.random.PRNGKey(2), ds.y_train, 10, p, exclude, pool)
        assert len(val) == size and len(set(val)) == size and set(val) <= set(pool) - set(exclude)
    with pytest.raises(InputError, match="the set's held-out rows leave 250"):
        transfer.validation_indices(jax.random.PRNGKey(2), ds.y_train, 10,
                                    dataclasses.replace(protocols.load("dc"), val_size=251), exclude, pool)


def test_an_option_of_another_method_is_refused(tmp_path, capsys):
    np.savez(tmp_path / "set.npz", images=np.zeros((10, 8, 8, 1)), labels=np.arange(10))
    for args, message in ((["--model", "fc1", "--networks", "2"], "--model applies to --method train only"),
                          (["--method", "train", "--kernel", "fc2"], "--kernel applies to --method krr only"),
                          (["--method", "slapknn", "--protocol", "dc"], "--protocol applies to --method train only"),
                          (["--method", "train", "--k", "3"], "--k applies to --method slapknn only")):
        assert cli.main(["evaluate", "--distilled", str(tmp_path / "set.npz"), *args]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err


class _FRePoConv(nn.Module):
    """FRePo's evaluation Conv as its lib/models/networks.py describes it (flax's own layers):
    depth 3, channels width * 2^i, 3x3 convs with bias, the first padded by 3 on 1-channel
    images, ReLU, 2x2 average pooling, no normalisation, a Dense head on the flattened features."""

    width: int = 128

    @nn.compact
    def __call__(self, x):
        for i in range(3):
            pad = 3 if i == 0 and x.shape[-1] == 1 else 1
            x = nn.Conv(self.width * 2**i, (3, 3), padding=((pad, pad), (pad, pad)))(x)
            x = nn.avg_pool(nn.relu(x), (2, 2), strides=(2, 2))
        return nn.Dense(10)(x.reshape(len(x), -1))


def test_frepo_network_is_frepos_conv_on_the_same_weights():
    """The `frepo` card's network computes what FRePo's Conv (rebuilt above from flax's layers)
    computes with the same weights, and has its parameter count (MNIST: 128 / 256 / 512 channels)."""
    p = protocols.load("frepo")
    net, _ = protocols.resolve(protocols.for_set(p, "mnist", 1)[0], 10, 10)
    x = jax.random.normal(jax.random.PRNGKey(1), (3, 28, 28, 1))
    ours = net.init(jax.random.PRNGKey(0), x)
    count = (9 * 1 + 1) * 128 + (9 * 128 + 1) * 256 + (9 * 256 + 1) * 512 + (4 * 4 * 512 + 1) * 10
    assert sum(a.size for a in jax.tree_util.tree_leaves(ours)) == count
    reference = {"params": {f"Conv_{i}": ours["params"][f"Conv_{i}"] for i in range(3)} | {"Dense_0": ours["params"]["Dense_0"]}}
    np.testing.assert_allclose(net.apply(ours, x), _FRePoConv().apply(reference, x), rtol=1e-4, atol=1e-4)


def test_lecun_initialisation_is_flaxs_default():
    """weight_init 'lecun': the weights of flax's default nn.Conv (truncated normal, variance
    1/fan_in, at most 2 std / 0.88 in size), zero biases."""
    v = models.Conv(64, weight_init="lecun").init(jax.random.PRNGKey(0), jnp.zeros((1, 5, 5, 32)))["params"]
    theirs = nn.Conv(64, (3, 3)).init(jax.random.PRNGKey(1), jnp.zeros((1, 5, 5, 32)))["params"]
    std = 1 / np.sqrt(9 * 32)
    for w in (np.asarray(v["kernel"]), np.asarray(theirs["kernel"])):
        np.testing.assert_allclose(w.std(), std, rtol=0.03)
        assert np.abs(w).max() <= 2 * std / 0.8796 + 1e-6
    assert not np.any(np.asarray(v["bias"])) and not np.any(np.asarray(theirs["bias"]))


def test_warmup_cosine_is_frepos_schedule():
    """FRePo's evaluation schedule, as optax builds it in its script/eval.py: linear warm-up over
    500 steps, then a cosine over the remaining steps to 0.01 lr."""
    import optax

    p = protocols.load("frepo")
    _, config = protocols.resolve(protocols.for_set(p, "mnist", 1)[0], 10, 10)
    assert config.steps == 1000 and config.optimizer == "adam" and config.batch_size == 500
    theirs = optax.join_schedules([optax.linear_schedule(0.0, 3e-4, 500),
                                   optax.cosine_decay_schedule(3e-4, decay_steps=500, alpha=0.01)], [500])
    t = jnp.arange(0, 1001)
    np.testing.assert_allclose(optim.learning_rate(config)(t), jax.vmap(theirs)(t), rtol=1e-5, atol=1e-10)
    assert protocols.resolve(protocols.for_set(p, "mnist", 10)[0], 10, 100)[1].steps == 2000
