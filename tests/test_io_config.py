import numpy as np
import pytest

from unet.errors import UsageError
from unet.io import (
    DataError,
    Split,
    atomic_path,
    format_frames,
    normalize_intensity,
    parse_frames,
    read_split,
    write_split,
)
from unet.pipeline import ConfigError, held_out_frames, paper_deviations, stage_settings, typed_command_line_values
from unet.settings import PredictSettings, cli_flags


def test_frame_specs_round_trip_and_reject_nonsense():
    assert parse_frames("0-2,7,10-11") == [0, 1, 2, 7, 10, 11]
    assert format_frames([0, 1, 2, 7, 10, 11]) == "0-2,7,10-11"
    for bad in ("", "a-3", "5-2"):
        with pytest.raises(UsageError, match="frame selection"):
            parse_frames(bad)


def test_atomic_path_leaves_nothing_when_the_writer_fails(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("finished earlier")

    def write_half_and_fail():
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        write_half_and_fail()
    assert target.read_text() == "finished earlier"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]


def test_intensities_are_scaled_by_each_images_percentiles_so_outliers_do_not_squeeze_them():
    rng = np.random.default_rng(0)
    image = rng.normal(120, 10, (64, 64)).astype(np.float32)
    image[0, :5] = 255  # a few bright pixels, as in a DIC frame
    stack = np.stack([image, image * 0.5 + 7])
    scaled = normalize_intensity(stack)
    for plane in scaled:  # per image: a gain and an offset of the raw values change nothing
        np.testing.assert_allclose(np.percentile(plane, (1, 99)), (0, 1), atol=1e-5)
        assert 0.15 < plane.std() < 0.3  # min-max would leave about 0.07
    np.testing.assert_allclose(scaled[0], scaled[1], atol=1e-5)


def test_intensities_of_an_image_of_mostly_one_value_fall_back_to_its_range():
    sparse = np.zeros((50, 50), np.uint8)
    sparse[10, 10:15] = [50, 100, 150, 200, 250]  # 5 of 2,500 pixels: the percentiles coincide
    scaled = normalize_intensity(sparse)
    assert (scaled.min(), scaled.max()) == (0, 1) and scaled[10, 11] == pytest.approx(100 / 250)
    assert not normalize_intensity(np.full((8, 8), 7, np.uint8)).any()


def test_split_round_trip_and_validation(tmp_path):
    images = np.arange(3 * 4 * 5, dtype=np.uint8).reshape(3, 4, 5)
    labels = (images[[0, 2]] > 20).astype(np.uint8)
    split = Split("demo", "train", "binary", images, [0, 1, 2], labels, [0, 2])
    write_split(tmp_path, split)
    back = read_split(tmp_path)
    assert back.frames == [0, 1, 2] and back.labelled == [0, 2]
    np.testing.assert_array_equal(back.labelled_images(), images[[0, 2]])
    bad = Split("demo", "train", "binary", images, [0, 1, 2], labels * 255, [0, 2])
    with pytest.raises(DataError, match="only 0 and 1"):
        write_split(tmp_path / "bad", bad)
    assert not (tmp_path / "bad" / "frames.json").exists()


def test_dataset_overrides_merge_into_the_stage_section_and_bad_values_name_where_they_are_set():
    config = {"predict": {"input_size": 444, "min_area": 0}, "datasets": {"u373": {"predict": {"min_area": 500}}}}
    assert stage_settings(config, "predict", "u373") == PredictSettings(input_size=444, min_area=500)
    with pytest.raises(KeyError, match="not a key of `datasets`"):
        stage_settings(config, "predict", "hela")
    config["datasets"]["u373"]["predict"]["min_area"] = -1
    with pytest.raises(ConfigError, match=r"datasets.u373.predict.min_area = -1: must be >= 0"):
        stage_settings(config, "predict", "u373")
    config["datasets"]["u373"]["predict"] = {"tta": "d8"}
    with pytest.raises(ConfigError, match=r"^config: datasets.u373.predict.tta = 'd8': must be one of"):
        stage_settings(config, "predict", "u373")


def test_settings_become_cli_flags():
    assert (
        cli_flags({"input_size": 572, "compile": False, "tta": "d4", "w": None})
        == "--input-size 572 --no-compile --tta d4"
    )


def test_held_out_frames_are_contiguous_blocks():
    assert [held_out_frames(list(range(30)), 3, k) for k in range(3)] == [
        list(range(0, 10)),
        list(range(10, 20)),
        list(range(20, 30)),
    ]
    assert [len(held_out_frames(list(range(10)), 3, k)) for k in range(3)] == [4, 3, 3]
    with pytest.raises(UsageError, match="fold must be between 0 and 2"):
        held_out_frames(list(range(30)), 3, 3)
    with pytest.raises(UsageError, match="folds must be between 2"):
        held_out_frames([4], 2, 0)


def test_paper_deviations_name_each_changed_value_and_the_schedule():
    config = {
        "model": {"base_channels": 8, "depth": 4, "dropout": 0.5},
        "train": {"iterations": 300, "learning_rate": 0.01, "lr_schedule": "poly", "momentum": 0.99},
        "datasets": {"demo": {"model": {"depth": 3}}, "paper": {"model": {"base_channels": 64}}},
    }
    note = paper_deviations(config, "demo")
    assert note.startswith("base_channels 8 (paper 64), depth 3 (paper 4), 300 iterations")
    assert paper_deviations(config, "paper").startswith("the paper's settings, 300 iterations")


def test_command_line_values_are_typed_as_a_config_file_would_type_them():
    # What Snakemake's --config hands over for: model={depth: 3, dropout: 0.5} seeds=[0,1] mirror=null ...
    given = {
        "model": {"depth": "3", "dropout": "0.5"},
        "seeds": ["0", "1"],
        "mirror": "null",
        "train": {"compile": "true", "device": "cuda:0"},
        "experiments": ["isbi2012", "DIC-C2DH-HeLa"],
        "datasets": {"x": {"source": "http://host/a: b", "checksums": {"f.tif": "md5:0e10"}}},
    }
    assert typed_command_line_values(given) == {
        "model": {"depth": 3, "dropout": 0.5},
        "seeds": [0, 1],
        "mirror": None,
        "train": {"compile": True, "device": "cuda:0"},
        "experiments": ["isbi2012", "DIC-C2DH-HeLa"],
        "datasets": {"x": {"source": "http://host/a: b", "checksums": {"f.tif": "md5:0e10"}}},
    }
