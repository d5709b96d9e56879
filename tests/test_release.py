"""Distilled sets of other codebases (channel-first arrays, extra keys, labels as indices or score
rows, a stated preprocessing) read back to the same images, labels and space as our own files;
every preprocessing recipe round-trips, and `kip export` writes what numpy alone can apply."""

import json

import jax
import numpy as np
import pytest

from kip import cli, data, preprocess, release, run

DS = data.digits()
IDX = data.balanced_subset(jax.random.PRNGKey(0), DS.y_train, 10, 3)


def foreign_file(path, recipe, labels="indices", zca_strength=0.1):
    """A set as a PyTorch codebase would release it: NCHW images already preprocessed by `recipe`,
    labels as class indices (or score rows), extra keys, no preprocessing arrays."""
    prep = preprocess.fit(DS.x_train, recipe, zca_strength)
    images = prep.apply(DS.x_train[IDX])
    y = DS.y_train[IDX] if labels == "indices" else np.asarray(data.one_hot(DS.y_train[IDX], 10)) * 3.0
    np.savez(path, images=images.transpose(0, 3, 1, 2), labels=y, lr=np.array(0.01), args=np.array("ipc=3"))
    return prep, images


@pytest.mark.parametrize("recipe", preprocess.RECIPES)
def test_every_stated_recipe_maps_test_images_into_the_sets_space(tmp_path, recipe):
    prep, images = foreign_file(tmp_path / "set.npz", recipe, zca_strength=0.2)
    loaded = release.load_distilled_for(str(tmp_path / "set.npz"), "digits", None, recipe, zca_strength=0.2)
    np.testing.assert_allclose(loaded.images, images, rtol=1e-12)
    np.testing.assert_allclose(loaded.preprocessing.apply(DS.x_test), prep.apply(DS.x_test), rtol=1e-10, atol=1e-12)
    assert loaded.preprocessing.recipe == recipe and loaded.note.startswith(f"stated: {recipe}")
    np.testing.assert_allclose(loaded.labels, data.one_hot(DS.y_train[IDX], 10))  # indices -> centred one-hot
    assert np.all(loaded.sources == -1) and loaded.kernel is None


def test_layouts_and_label_formats(tmp_path):
    foreign_file(tmp_path / "rows.npz", "standardize", labels="rows")
    loaded = release.load_distilled_for(str(tmp_path / "rows.npz"), "digits", None, layout="nchw")
    np.testing.assert_allclose(loaded.labels, 3.0 * np.asarray(data.one_hot(DS.y_train[IDX], 10)))  # rows as they are
    with np.load(tmp_path / "rows.npz") as f:
        np.savez(tmp_path / "column.npz", images=f["images"], labels=DS.y_train[IDX][:, None])
        np.savez(tmp_path / "nhwc.npz", images=f["images"].transpose(0, 2, 3, 1), labels=DS.y_train[IDX])
    column = release.load_distilled_for(str(tmp_path / "column.npz"), "digits", None)
    np.testing.assert_allclose(column.labels, data.one_hot(DS.y_train[IDX], 10))
    np.testing.assert_array_equal(release.load_distilled_for(str(tmp_path / "nhwc.npz"), "digits", None).images,
                                  column.images)
    with pytest.raises(Exception, match="--layout nchw, but the images are"):
        release.load_distilled_for(str(tmp_path / "nhwc.npz"), "digits", None, layout="nchw")


def test_krr_of_a_foreign_file_with_its_stated_recipe_equals_our_own_file(tmp_path):
    assert cli.main(["distill", "--out", str(tmp_path / "ours"), "--steps", "0", "--ipc", "3", "--zca", "--no-progress"]) == 0
    with np.load(tmp_path / "ours" / "distilled.npz") as f:
        np.savez(tmp_path / "theirs.npz", images=f["images"].transpose(0, 3, 1, 2), labels=np.argmax(f["labels"], 1))
    results = []
    for path, extra in ((tmp_path / "ours" / "distilled.npz", []), (tmp_path / "theirs.npz", ["--preprocess", "kip-zca"])):
        out = tmp_path / f"{len(results)}.json"
        assert cli.main(["evaluate", "--distilled", str(path), *extra, "--out", str(out)]) == 0
        results.append(json.loads(out.read_text()))
    assert results[0]["test_accuracy"] == pytest.approx(results[1]["test_accuracy"], abs=1e-12)
    assert results[0]["preprocessing"] == "from file" and results[1]["preprocessing"].startswith("stated: kip-zca")


def test_stating_another_recipe_for_our_own_file_is_refused(tmp_path, capsys):
    assert cli.main(["distill", "--out", str(tmp_path / "ours"), "--steps", "0", "--ipc", "1", "--no-progress"]) == 0
    assert cli.main(["evaluate", "--distilled", str(tmp_path / "ours" / "distilled.npz"), "--preprocess", "zca"]) == 2
    assert "records its own preprocessing (standardize)" in capsys.readouterr().err


@pytest.mark.parametrize("zca", [False, True])
def test_export_writes_channel_first_with_a_preprocessing_numpy_can_apply(tmp_path, zca):
    assert cli.main(["distill", "--out", str(tmp_path / "ours"), "--steps", "0", "--ipc", "2", "--no-progress"]
                    + (["--zca"] if zca else [])) == 0
    assert cli.main(["export", "--distilled", str(tmp_path / "ours" / "distilled.npz"), "--out", str(tmp_path / "t.npz")]) == 0
    with np.load(tmp_path / "ours" / "distilled.npz") as f:
        images, labels = f["images"], f["labels"]
        prep = preprocess.Preprocessing.from_arrays(f)
    with np.load(tmp_path / "t.npz", allow_pickle=False) as t:
        assert t["images"].shape == (20, 1, 8, 8) and str(t["layout"]) == "nchw"
        np.testing.assert_allclose(t["images"], images.transpose(0, 3, 1, 2), rtol=1e-6)
        np.testing.assert_array_equal(t["label_indices"], np.argmax(labels, 1))
        # what a PyTorch user does with numpy alone: raw NCHW test images into the set's space
        raw = DS.x_test.transpose(0, 3, 1, 2)
        z = (raw - t["mean"][None, :, None, None]) / t["std"][None, :, None, None]
        if "zca" in t:
            flat = z.transpose(0, 2, 3, 1).reshape(len(z), -1)
            if t["zca_layer_norm"]:
                flat = flat - flat.mean(1, keepdims=True)
                flat = flat / np.linalg.norm(flat, axis=1, keepdims=True)
            z = (flat @ t["zca"]).reshape(len(z), 8, 8, 1).transpose(0, 3, 1, 2)
        assert str(t["recipe"]) == ("kip-zca" if zca else "standardize")
    np.testing.assert_allclose(z, prep.apply(DS.x_test).transpose(0, 3, 1, 2), rtol=1e-4, atol=1e-5)


def test_read_set_returns_the_sources_and_held_out_images_our_files_record(tmp_path):
    out = tmp_path / "ours"
    assert cli.main(["distill", "--out", str(out), "--steps", "0", "--ipc", "2", "--val-size", "50", "--no-progress"]) == 0
    stored = release.read_set(str(out / "distilled.npz"), DS.image_shape, 10)
    np.testing.assert_array_equal(stored.sources, run.start_indices(0, DS.y_train, 10, 2))  # seed 0's start
    assert stored.sources.dtype == np.int64 and stored.kernel == json.loads((out / "metrics.json").read_text())["config"]["kernel"]
    val = stored.val_indices
    assert len(np.unique(val)) == 50 and not np.isin(val, stored.sources).any()  # its sources are never held out
    foreign_file(tmp_path / "theirs.npz", "standardize")
    theirs = release.read_set(str(tmp_path / "theirs.npz"), DS.image_shape, 10)
    assert np.all(theirs.sources == -1) and theirs.sources.dtype == np.int64
    assert theirs.val_indices is None and theirs.kernel is None and theirs.preprocessing is None
