"""BERTScore through the `bert-score` package with a local encoder: identical texts score 1, and the
F1 equals a direct greedy-matching computation on the encoder's embeddings at the chosen layer."""
from __future__ import annotations

import numpy as np
import pytest


def _tiny_bert(directory):
    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast

    words = "[PAD] [UNK] [CLS] [SEP] [MASK] no acute process fever treated with aspirin the patient improved .".split()
    (directory / "vocab.txt").write_text("\n".join(words) + "\n")
    BertTokenizerFast(vocab_file=str(directory / "vocab.txt"), model_max_length=512).save_pretrained(str(directory))
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=len(words), hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=32)).save_pretrained(str(directory))


@pytest.mark.parametrize("layer", [-1, 1])
def test_bertscore_local_model(tmp_path, layer):
    import torch
    from transformers import AutoModel, AutoTokenizer

    from mellama_jax.eval.bertscore import bertscore_f1

    _tiny_bert(tmp_path)
    assert bertscore_f1(["fever treated with aspirin ."], ["fever treated with aspirin ."], str(tmp_path),
                        layer=layer) == pytest.approx(1.0)
    pred, ref = "the patient improved", "no acute process ."
    tok, model = AutoTokenizer.from_pretrained(str(tmp_path)), AutoModel.from_pretrained(str(tmp_path)).eval()

    def emb(t):
        enc = tok(t, return_tensors="pt")
        with torch.no_grad():
            h = model(**enc, output_hidden_states=True).hidden_states[layer][0, 1:-1].numpy()  # drop CLS/SEP
        return h / np.linalg.norm(h, axis=-1, keepdims=True)

    sim = emb(pred) @ emb(ref).T
    p, r = sim.max(1).mean(), sim.max(0).mean()
    assert bertscore_f1([pred], [ref], str(tmp_path), layer=layer) == pytest.approx(2 * p * r / (p + r), abs=1e-6)
    # the mean over pairs, as results.json reports it
    both = bertscore_f1([pred, pred], [ref, pred], str(tmp_path), layer=layer)
    assert both == pytest.approx((2 * p * r / (p + r) + 1.0) / 2, abs=1e-6)
