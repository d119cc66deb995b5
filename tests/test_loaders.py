"""A user's DataLoaders as they are written: the images a loader's sampler draws, and one line for what cannot be
honoured."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import (
    DataLoader,
    Dataset,
    IterableDataset,
    RandomSampler,
    SubsetRandomSampler,
    TensorDataset,
    WeightedRandomSampler,
)

from autocompress.errors import DataError
from autocompress.tasks.datasets import splits_from_data

CAPS = {"train": None, "val": None, "test": None, "calib": None}


class _Tagged(Dataset):
    """Image i is filled with the value i, so a split's images say which items it holds; labels are i % 3."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return torch.full((1, 4, 4), float(i)), i % 3


def _items(split) -> list[int]:
    return sorted(int(split[i][0][0, 0, 0]) for i in range(len(split)))


def test_two_loaders_over_one_dataset_use_exactly_their_samplers_images():
    data = _Tagged(60)
    idx = np.random.default_rng(0).permutation(60)
    train_idx, val_idx, test_idx = idx[:30].tolist(), idx[30:45].tolist(), idx[45:].tolist()
    train = DataLoader(data, batch_size=8, sampler=SubsetRandomSampler(train_idx))
    val = DataLoader(data, batch_size=8, sampler=SubsetRandomSampler(val_idx))
    test = DataLoader(data, batch_size=8, sampler=SubsetRandomSampler(test_idx))
    s = splits_from_data(train, val, test=test, caps=CAPS, seed=0, log=lambda _: None)
    assert _items(s.train) == sorted(train_idx)
    assert _items(s.val) == sorted(val_idx)
    assert _items(s.test) == sorted(test_idx)
    assert [int(s.val.labels[i]) for i in range(len(s.val))] == [i % 3 for i in sorted(val_idx)]


def test_without_test_data_the_held_out_half_comes_from_the_validation_sampler_only():
    data = _Tagged(60)
    train = DataLoader(data, sampler=SubsetRandomSampler(list(range(40))))
    val = DataLoader(data, sampler=SubsetRandomSampler(list(range(40, 60))))
    s = splits_from_data(train, val, caps=CAPS, seed=0, log=lambda _: None)
    assert _items(s.train) == list(range(40))
    assert sorted(_items(s.val) + _items(s.test)) == list(range(40, 60))


def test_a_shuffling_loader_stands_for_its_whole_dataset():
    data = _Tagged(20)
    own = torch.Generator().manual_seed(3)
    before = own.get_state()
    s = splits_from_data(DataLoader(data, shuffle=True), DataLoader(data, sampler=RandomSampler(data, generator=own)),
                         test=data, caps=CAPS, seed=0, log=lambda _: None)
    assert _items(s.train) == list(range(20)) and _items(s.val) == list(range(20))
    assert torch.equal(own.get_state(), before)  # the sampler's generator was not drawn from


class _Stream(IterableDataset):
    def __iter__(self):
        for i in range(10):
            yield torch.zeros(1, 4, 4), i % 2


def _one_line(e: pytest.ExceptionInfo) -> str:
    text = str(e.value)
    assert "\n" not in text
    return text


@pytest.mark.parametrize("data", [_Stream(), DataLoader(_Stream(), batch_size=2)], ids=["dataset", "loader"])
def test_an_iterable_dataset_gets_one_line(data):
    with pytest.raises(DataError, match=r"train_data is .*IterableDataset .*give a map-style Dataset") as e:
        splits_from_data(data, _Tagged(10), caps=CAPS, log=lambda _: None)
    _one_line(e)


def test_a_sampler_with_replacement_gets_one_line():
    data = _Tagged(10)
    loader = DataLoader(data, sampler=WeightedRandomSampler([1.0] * 10, num_samples=30, replacement=True))
    with pytest.raises(DataError, match=r"val_data's sampler \(WeightedRandomSampler\) draws some items more than "
                                        r"once; .*SubsetRandomSampler") as e:
        splits_from_data(data, loader, test=data, caps=CAPS, log=lambda _: None)
    _one_line(e)


def test_a_collate_fn_or_batch_sampler_gets_one_line():
    data = TensorDataset(torch.zeros(10, 1, 4, 4), torch.zeros(10, dtype=torch.long))
    with pytest.raises(DataError, match=r"train_data is a DataLoader with its own collate_fn"):
        splits_from_data(DataLoader(data, collate_fn=lambda b: b), data, caps=CAPS, log=lambda _: None)
    batches = [[0, 1], [2, 3]]
    with pytest.raises(DataError, match=r"train_data is a DataLoader with its own batch_sampler"):
        splits_from_data(DataLoader(data, batch_sampler=batches), data, caps=CAPS, log=lambda _: None)


def test_the_training_loaders_batch_size_is_the_fine_tunes_unless_the_config_says_one(tmp_path):
    from autocompress import SearchConfig
    from autocompress.api import plan

    data = TensorDataset(torch.randn(40, 1, 8, 8), torch.arange(40) % 2)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                                torch.nn.Flatten(), torch.nn.Linear(8, 2))
    train, val = DataLoader(data, batch_size=16, shuffle=True), DataLoader(data, batch_size=5)
    lines: list[str] = []
    prep = plan(model, train, val, out=tmp_path / "a", log=lines.append, finetune={"epochs": 2})
    assert prep.config.finetune.batch_size == 16 and prep.config.finetune.epochs == 2
    assert any("the training DataLoader's batch_size" in s for s in lines)
    said = plan(model, train, val, out=tmp_path / "b", log=lambda _: None, finetune={"batch_size": 32})
    assert said.config.finetune.batch_size == 32
    cfg = SearchConfig(finetune={"batch_size": 8})
    assert plan(model, train, val, out=tmp_path / "c", log=lambda _: None, config=cfg).config.finetune.batch_size == 8
    default = SearchConfig().finetune.batch_size
    assert plan(model, data, val, out=tmp_path / "d", log=lambda _: None).config.finetune.batch_size == default
