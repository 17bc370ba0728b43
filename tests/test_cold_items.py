"""Items with text and no interactions are ranked through their text vector."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from nightrec import fusion, train
from nightrec.config import TrainConfig, default_text_model
from nightrec.embed import TextEncoder
from nightrec.synth import CATEGORIES

PER_CATEGORY = 8  # items per category; the last one of each is never interacted with
CFG = TrainConfig(dim=16, max_history=5, epochs=25, patience=0, batch_size=64, lr=1e-2, seed=1)


@pytest.fixture(scope="module")
def one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module", params=[False, True], ids=["text-only", "borrow"])
def trained(request, one_torch_thread) -> dict:
    """Users who stay in one category; each category's last item is cold (text only).

    "borrow" (the default): cold items also borrow their closest known item's id part.
    """
    cats = list(CATEGORIES)[:4]
    titles, cat_of = [], []
    for c, name in enumerate(cats):
        nouns, adjs = CATEGORIES[name]
        for j in range(PER_CATEGORY):
            titles.append(f"{adjs[j]} {nouns[j]} ({name})")
            cat_of.append(c)
    cat_of_idx = np.array([-1, *cat_of])  # by model index (0 = padding)
    text = TextEncoder(default_text_model()).encode(titles)  # [M, T]
    cold = {c: 1 + c * PER_CATEGORY + PER_CATEGORY - 1 for c in range(len(cats))}  # index
    rng = np.random.default_rng(0)
    seqs, starts, ends = [], [], []
    for u in range(160):
        c = u % len(cats)
        warm = [i for i in range(1, len(titles) + 1) if cat_of_idx[i] == c and i != cold[c]]
        seq = rng.choice(warm, size=int(rng.integers(3, 6)), replace=False)
        starts.append(sum(len(s) for s in seqs))
        seqs.append(seq)
        ends.append(starts[-1] + len(seq))
    data = train.Sequences(
        [f"u{u:03d}" for u in range(len(seqs))],
        np.concatenate(seqs).astype(np.int64),
        np.array(starts, dtype=np.int64),
        np.array(ends, dtype=np.int64),
    )
    hist, target, _ = train.training_examples(data, CFG)
    assert not set(cold.values()) & (set(hist.ravel().tolist()) | set(target.tolist()))
    cfg = dataclasses.replace(CFG, cold_borrow=request.param)
    model, _ = train.fit(text, hist, target, cfg)
    return {"model": model, "cold": cold, "cat": cat_of_idx, "n": len(titles), "text": text}


def test_cold_items_have_no_id_part_of_their_own(trained) -> None:
    model = trained["model"]
    weights = model.item_id.weight.detach()
    assert model.fit_info["items_text_only"] == len(trained["cold"])
    if not model.cfg.cold_borrow:
        for idx in trained["cold"].values():
            assert torch.count_nonzero(weights[idx]) == 0
        return
    known = np.ones(trained["n"] + 1, dtype=bool)
    known[0] = False
    known[list(trained["cold"].values())] = False
    borrow = fusion.donors(trained["text"], known)
    assert sorted(borrow.cold.tolist()) == sorted(trained["cold"].values())
    for cold, donor, sim in zip(borrow.cold, borrow.donor, borrow.sim, strict=True):
        assert trained["cat"][donor] == trained["cat"][cold]  # the closest title: same category
        assert 0 < sim <= 1
        share = min(1.0, model.cfg.cold_borrow_scale * float(sim))
        assert torch.allclose(weights[cold], share * weights[donor])


def test_cold_item_ranks_above_random_for_a_user_whose_history_matches_its_text(
    trained,
) -> None:
    model, cold, cat, n = trained["model"], trained["cold"], trained["cat"], trained["n"]
    with torch.no_grad():
        items = model.item_vectors()
        for c, item in cold.items():
            history = [i for i in range(1, n + 1) if cat[i] == c and i != item][:4]
            hist = torch.tensor([[0] * (CFG.max_history - len(history)) + history])
            scores = (model.user_vectors(hist, items) @ items.T)[0].numpy()
            scores[0] = -np.inf
            scores[history] = -np.inf
            rank = int((scores > scores[item]).sum())  # 0 = first of the unseen items
            unseen = n - len(history)
            # a random score ranks it about unseen / 2 on average
            assert rank < unseen / 2, f"cold item {item} ranks {rank} of {unseen}"
            others = [cold[o] for o in cold if o != c]
            assert all(scores[item] > scores[o] for o in others)
