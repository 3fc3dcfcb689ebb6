"""MoCa stage-1 parts: maskers, reconstruction heads and objectives on the tiny model."""

from __future__ import annotations

import torch

from vlmbed.data.digits import unlabeled_digits
from vlmbed.data.masking import mask_image_units, mask_text
from vlmbed.data.pretrain import PretrainCollator
from vlmbed.models.heads import PatchDecoder, mlm_logits
from vlmbed.objectives import mae, mlm


def test_text_mask_ratio_is_respected_and_specials_never_masked():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(10, 500, (64, 256), generator=g)
    ids[:, ::7] = 3  # a special token
    attn = torch.ones_like(ids)
    attn[:, 200:] = 0  # padding
    masked, labels = mask_text(ids, attn, {3}, mask_id=8, ratio=0.4, generator=g)
    chosen = labels != -100
    eligible = (ids != 3) & attn.bool()
    assert not (chosen & ~eligible).any()  # specials and padding never masked
    assert abs(chosen.sum().item() / eligible.sum().item() - 0.4) < 0.01
    assert (masked[chosen] == 8).all() and torch.equal(masked[~chosen], ids[~chosen])
    assert torch.equal(labels[chosen], ids[chosen])


def test_noise_replaces_exactly_the_masked_units():
    g = torch.Generator().manual_seed(1)
    pixels = torch.randn(4 * 5000, 12, generator=g)
    m = mask_image_units(pixels.reshape(-1, 4, 12), ratio=0.5, generator=g)  # units of merge**2 = 4 patches
    assert abs(m.unit_mask.float().mean().item() - 0.5) < 0.02  # unit mask ratio
    patch_mask = m.unit_mask.repeat_interleave(4)
    noised = m.units.reshape(-1, 12)
    assert torch.equal(noised[~patch_mask], pixels[~patch_mask])  # untouched outside
    assert (noised[patch_mask] != pixels[patch_mask]).all()  # every masked patch replaced
    assert torch.equal(m.targets, pixels[patch_mask])  # targets: the originals of masked units only
    shared = mask_image_units(pixels[:400].reshape(-1, 4, 12), ratio=0.5, noise="shared", generator=g)
    rows = shared.units[shared.unit_mask].reshape(-1, 12)
    assert torch.equal(rows, rows[:1].expand_as(rows))  # MoCa code: one shared noise vector


def test_mlm_shift_selects_previous_position():
    labels = torch.full((2, 6), -100)
    labels[0, 0], labels[0, 3], labels[1, 5] = 11, 12, 13
    rows, cols, tgt = mlm.prediction_positions(labels, shift=1)
    assert rows.tolist() == [0, 1] and cols.tolist() == [2, 4] and tgt.tolist() == [12, 13]
    rows, cols, tgt = mlm.prediction_positions(labels, shift=0)
    assert cols.tolist() == [0, 3, 5] and tgt.tolist() == [11, 12, 13]


def _stage1_batch(embedder):
    docs = unlabeled_digits("train")
    batch_docs = [docs[0], docs[1], docs[-1], docs[-2]]  # two image documents, two text documents
    coll = PretrainCollator(
        embedder.encoder, mask_token="<|mask|>",
        extra_special_tokens=["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|im_end|>"],
        image_token_id=embedder.adapter.image_token_id(embedder.model), adapter=embedder.adapter,
        mlm_ratio=0.4, mae_ratio=0.5, seed=3,
    )
    return coll(batch_docs)


def test_stage1_losses_use_only_masked_positions_and_bidirectional_masks(embedder):
    batch = _stage1_batch(embedder)
    patch_dim = batch["inputs"]["pixel_values"].shape[1]
    decoder = PatchDecoder(embedder, patch_dim=patch_dim)
    out = embedder(batch["inputs"], attention="bidirectional")
    out.hidden.retain_grad()
    mask = out.masks["full_attention"]
    assert mask.dtype == torch.bool and mask[0, 0, 0].sum() == batch["inputs"]["attention_mask"][0].sum()
    rows, cols, tgt = mlm.prediction_positions(batch["mlm_labels"], shift=1)
    parts = mlm.loss(mlm_logits(embedder, out.hidden, rows, cols), tgt)
    parts.update(mae.loss(decoder(out, batch["image_token_mask"], batch["unit_mask"]), batch["mae_targets"]))
    assert torch.isfinite(parts["mlm"]) and torch.isfinite(parts["mae"])
    parts["mlm"].backward(retain_graph=True)
    grad_positions = out.hidden.grad.abs().sum(-1).nonzero().tolist()
    assert sorted(map(tuple, grad_positions)) == sorted(zip(rows.tolist(), cols.tolist(), strict=True))
    # MAE: predictions for unmasked units are never computed, so changing their targets is impossible;
    # the loss equals the MSE over the masked units' patches only.
    preds = decoder(out, batch["image_token_mask"], batch["unit_mask"])
    assert preds.shape[0] == int(batch["unit_mask"].sum())
    # independent reference: each masked unit's prediction row holds its merge**2 patches in order
    per_unit = preds.shape[1] // batch["mae_targets"].shape[1]
    ref = torch.stack([((preds[u].view(per_unit, -1) - batch["mae_targets"][u * per_unit:(u + 1) * per_unit]) ** 2)
                       .mean() for u in range(preds.shape[0])]).mean()
    assert torch.allclose(parts["mae"], ref, rtol=1e-5)


def test_decoder_starts_as_a_copy_of_the_middle_layer(embedder):
    dec = PatchDecoder(embedder, patch_dim=96)
    layers = embedder.adapter.decoder_layers(embedder.model)
    mid = layers[len(layers) // 2]
    for (n1, p1), (_, p2) in zip(dec.layer.named_parameters(), mid.named_parameters(), strict=True):
        assert torch.equal(p1, p2) and p1.data_ptr() != p2.data_ptr(), n1
